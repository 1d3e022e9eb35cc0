"""Every feature name, declared once: the Feast repo, the feature builders, the request-time features
and the model's feature list all read them from here.

A feature family is a Feast feature view. Names are per view; the engagement views' names depend on the
configured windows (`features.windows_days`). `resolve` turns a config's `train.features` (names and/or
family names) into feature names and rejects anything the repo does not declare, so an experiment that
drops a family is a one-line config diff that cannot silently train on nothing.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

#: title matches that forgive typos, cut and glued words, in the order features/title_match.py computes them
TITLE_MATCH = ("char_cos", "word_cos", "idf_cov", "fuzzy_sim", "fuzzy_cov", "fuzzy_min", "head_sim", "bigram",
               "glued")
LEXICAL = ("lex_bm25_title", "lex_bm25_bullets", "lex_bm25_desc", "lex_cov_title", "lex_cov_all", "lex_query_len",
           "lex_brand_exact", "lex_brand_partial", "lex_color_exact", "lex_color_partial", "lex_type_exact",
           "lex_type_partial", "lex_num_match", "lex_num_conflict", *(f"lex_{n}" for n in TITLE_MATCH))
CONTENT = ("ce_score", "bienc_cos")
PRODUCT = ("prod_price", "prod_log_price", "prod_rating", "prod_log_rating_count", "prod_title_len",
           "prod_bullets_len", "prod_desc_len", "prod_category_depth", "prod_has_brand")
#: the direction a feature moves relevance, where it is not in doubt: more similarity, coverage or match never
#: makes a product less relevant; a conflicting number (a 16 oz bottle for "32 oz") never makes it more. A
#: ranker with `monotone: true` (ltr.rankers) holds its score to these directions; undeclared features are free.
MONOTONE: dict[str, int] = {
    **{f: 1 for f in ("ce_score", "bienc_cos")},
    **{f: 1 for f in LEXICAL if f not in ("lex_query_len", "lex_num_conflict")},
    "lex_num_conflict": -1,
}
#: per window w: counts, smoothed rates and position-debiased CTR (coec), named <prefix>_<metric>_<w>d
ENGAGEMENT_METRICS = ("impr", "clicks", "atc", "purch", "ctr", "atc_rate", "purch_rate", "coec")
ENGAGEMENT_PREFIX = {"engagement_qp": "eng_qp", "engagement_product": "eng_p"}

#: feature view -> its entity join keys (the label view included)
VIEW_KEYS: dict[str, list[str]] = {
    "lexical": ["query_id", "product_id"], "content": ["query_id", "product_id"], "product_features": ["product_id"],
    "engagement_qp": ["query_id", "product_id"], "engagement_product": ["product_id"],
    "relevance_labels": ["query_id", "product_id"],
}
LABEL_VIEW = "relevance_labels"
LABEL_FIELDS = ["label_score", "label_grade", "labeler", "labeler_kind"]
#: short family names a config may use beside the view names
FAMILY_ALIASES = {"product": ["product_features"], "engagement": ["engagement_qp", "engagement_product"]}


def engagement_feature_names(prefix: str, windows: Iterable[int]) -> list[str]:
    return [f"{prefix}_{m}_{w}d" for w in windows for m in ENGAGEMENT_METRICS]


def view_features(windows: Iterable[int] = (7, 28)) -> dict[str, list[str]]:
    """Feature names of every feature view (labels excluded) for the given engagement windows."""
    windows = list(windows)
    out = {"lexical": list(LEXICAL), "content": list(CONTENT), "product_features": list(PRODUCT)}
    out.update({view: engagement_feature_names(p, windows) for view, p in ENGAGEMENT_PREFIX.items()})
    return out


def resolve(spec: Sequence[str], windows: Iterable[int] = (7, 28), key: str = "train.features") -> list[str]:
    """Feature names for a list of names and family names, in the order given, without repeats."""
    views = view_features(windows)
    known = {f for names in views.values() for f in names}
    out: list[str] = []
    for item in spec:
        families = FAMILY_ALIASES.get(item, [item] if item in views else [])
        names = [f for v in families for f in views[v]] or ([item] if item in known else [])
        if not names:
            raise ValueError(f"{key}: {item!r} is neither a feature nor a family of the Feast repo. Fix: use a "
                             f"family ({', '.join(list(views) + list(FAMILY_ALIASES))}) or a feature name "
                             f"such as {sorted(known)[:3]} (engagement windows: {list(windows)}).")
        out.extend(n for n in names if n not in out)
    return out


def family_of(name: str) -> str | None:
    """The feature view a column belongs to (any engagement window), or None for a column the repo does
    not declare."""
    for view, names in (("lexical", LEXICAL), ("content", CONTENT), ("product_features", PRODUCT)):
        if name in names:
            return view
    for view, prefix in ENGAGEMENT_PREFIX.items():
        rest = name.removeprefix(prefix + "_")
        metric, _, window = rest.rpartition("_")
        if rest != name and metric in ENGAGEMENT_METRICS and window.endswith("d") and window[:-1].isdigit():
            return view
    return None


def select(spec: Sequence[str], columns: Iterable[str]) -> list[str]:
    """The columns (in their order) that `spec` (feature and family names) selects."""
    families = {v for item in spec for v in FAMILY_ALIASES.get(item, [item])}
    return [c for c in columns if c in spec or family_of(c) in families]
