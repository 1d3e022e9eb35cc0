"""The cold route: how a registered model ranks a query whose candidates carry no engagement at all.

Why a route: trees trained where most rows have logs spend their gain on engagement, and for a query
without any they fall back on default branches. Masking engagement in training (`train.cold_query_share`)
teaches them a content path, but on the ESCI sample that path still ranked below the zero-shot bi-encoder
(docs/cold.md). So the model carries a second scorer for fully cold queries, chosen at training
time **on the training queries only**: K-fold cross-validation grouped by query scores every training query
with models that never saw it, engagement masked; the held-out test queries take no part. Candidates:

- `champion`: the trees on the masked frame (the route then changes nothing);
- `content_only`: LambdaMART with content labels and no engagement features (`content_only_config`);
- `feature:F`: one zero-shot content feature alone (bi-encoder cosine, cross-encoder score, title BM25);
- `blend:F@W`: z(content-only model) + W * z(F), z-scored within the query.

A kind with settings (which F, which W) is scored by nested selection, each fold's queries by the setting
best on the other folds, so the blend's fifteen settings do not win by the luck of one.

**The status quo** keeps cold queries unless another kind, nested-scored, beats its cold NDCG@k by more
than one standard error of the paired per-query difference; among the kinds that do, the best mean wins
(`rule="one_se"`: the simplest within one standard error of the best). The status quo is the trees
(`status_quo="trees"`, `train.cold_route: auto`) or the zero-shot bi-encoder (`"zero_shot"`,
`train.cold_route: zero_shot`; the trees where the model has no `bienc_cos`). Neither wins everywhere
(`bench/bench_cold_route.py`, docs/cold.md): over query splits of the ESCI sample the bi-encoder
as status quo ranked held-out cold queries higher on average, and on the built-in world too, while on the
synthetic shop of `tests/test_cold_start.py` it fell below the content-only model; the trees stay the default
because that floor is the rule the model must keep.

**The gate** (`gate=True`; on with the zero-shot status quo) asks the same of the whole procedure: each
fold's queries are scored by what the procedure chooses on the other folds alone (kind, setting and whether
to leave the status quo at all), and the route is taken only if that beats the status quo by more than one
standard error. Why: a kind's nested figure is honest for that kind, but taking the best of four kinds and
comparing its figure with the status quo's is the selection bias of reporting a winner's own
cross-validated score (Varma & Simon 2006; Cawley & Talbot 2010). The gate favours the status quo: that pays
where the status quo fits nothing (no fold can overfit the zero-shot bi-encoder) and costs where it is the
trees, whose cold path is weak (docs/cold.md, gated against ungated over query splits), so it is on
with the zero-shot status quo only.

A query is cold when every engagement feature of every one of its candidates is missing; warm queries, and
queries with partial engagement (a new query over products with history), are the trees' as always.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ltr.data import metrics as M

from .rankers import grouped_split
from .train import content_only_config, engagement_columns, feature_columns, fit_ranker, mask_engagement
from .train_config import TrainConfig

#: zero-shot content features a cold query may be ranked by alone (those the model has)
ROUTE_FEATURES = ("bienc_cos", "ce_score", "lex_bm25_title")
BLEND_WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)
#: what cold queries get unless another kind beats it: the trees, or the zero-shot bi-encoder (else the trees)
STATUS_QUO = ("trees", "zero_shot")
#: how a kind is chosen among those that beat the status quo: the best mean, or (`one_se`) the simplest
#: within one standard error of the best (Breiman et al. 1984; Hastie et al., ESL section 7.10)
RULES = ("best_mean", "one_se")
#: kinds from the simplest: a zero-shot feature fits nothing; the trees need no second model; the content
#: model is one; a blend is that model plus a weight on a feature
SIMPLER_FIRST = ("feature", "champion", "content_only", "blend")


def zscore_by_query(values, qid) -> np.ndarray:
    """Each query's values on one scale (mean 0, sd 1; a constant query 0); missing values rank last."""
    s = pd.Series(np.asarray(values, dtype="float64"))
    g = s.groupby(np.asarray(qid), sort=False)
    sd = g.transform("std", ddof=0)
    z = ((s - g.transform("mean")) / sd.where(sd > 0)).fillna(0.0).where(s.notna())
    return z.fillna(z.groupby(np.asarray(qid), sort=False).transform("min").fillna(0.0) - 1.0).to_numpy()


def cold_queries(frame: pd.DataFrame, features: list[str], qid) -> np.ndarray:
    """Rows of queries none of whose candidates has any engagement feature (False where the model has none)."""
    eng = engagement_columns(features)
    if not eng:
        return np.zeros(len(frame), bool)
    absent = frame.reindex(columns=eng).isna().all(axis=1)
    return absent.groupby(np.asarray(qid), sort=False).transform("all").to_numpy()


@dataclass(frozen=True)
class Scorer:
    """One cold scorer: kind champion | content_only | feature | blend; `feature` and `weight` where used."""

    kind: str
    feature: str | None = None
    weight: float = 0.0

    @property
    def name(self) -> str:
        return {"feature": f"feature:{self.feature}", "blend": f"blend:{self.feature}@{self.weight:g}"}.get(
            self.kind, self.kind)

    @property
    def needs_content_model(self) -> bool:
        return self.kind in ("content_only", "blend")


class ColdRoute:
    """fit(frame, cfg, features) chooses the cold scorer; predict(X, qid) scores cold queries' rows."""

    def __init__(self, n_folds: int = 5, features: tuple[str, ...] = ROUTE_FEATURES,
                 weights: tuple[float, ...] = BLEND_WEIGHTS, candidates: tuple[str, ...] | None = None,
                 seed: int = 0, status_quo: str = "trees", rule: str = "best_mean", gate: bool = False) -> None:
        if status_quo not in STATUS_QUO:
            raise ValueError(f"cold route status_quo {status_quo!r} is not one of {STATUS_QUO}. Fix: pick one.")
        if rule not in RULES:
            raise ValueError(f"cold route rule {rule!r} is not one of {RULES}. Fix: pick one of them.")
        self.n_folds, self.features, self.weights, self.candidates, self.seed = (
            n_folds, features, weights, candidates, seed)
        self.status_quo, self.rule, self.gate = status_quo, rule, gate

    def get_params(self, deep: bool = False) -> dict[str, Any]:
        return {"n_folds": self.n_folds, "features": self.features, "weights": self.weights,
                "candidates": self.candidates, "seed": self.seed, "status_quo": self.status_quo, "rule": self.rule,
                "gate": self.gate}

    @property
    def active(self) -> bool:
        """False when the trees keep cold queries (nothing to route)."""
        return self.scorer_.kind != "champion"

    def uses(self, feature: str) -> bool:
        content = self.content_model_ is not None and feature in self.content_model_.feature_names_
        return self.active and (content or self.scorer_.feature == feature)

    def fit(self, frame: pd.DataFrame, cfg: TrainConfig, features: list[str],
            scored: tuple[pd.DataFrame, pd.Series] | None = None) -> ColdRoute:
        """Choose on `frame` (training queries only) by cross-validated cold NDCG@k; refit what it needs.

        A kind with parameters (which feature, which weight) is scored by nested selection: each fold's
        queries by the parameters that were best on the other folds, so a kind with many settings is not
        favoured by picking its luckiest one; its parameters are then the best on all training queries.
        `scored`: another route's `scored_` on the same frame and config (its cross-validated per-query
        figures), so comparing rules does not refit every fold."""
        self.features_, self.k_ = list(features), cfg.k
        if scored is None:
            oof = _out_of_fold(frame, cfg, features, self.n_folds, self.seed)
            per = _per_query_ndcg(oof, frame, cfg, self._single_features(frame), self.weights)
            scored = per, oof["fold"].groupby(frame[cfg.columns.query_id].to_numpy()).first().reindex(per.index)
        self.scored_ = scored
        self.scorer_, choice = self._choose(*scored)
        if self.gate:
            self.scorer_, choice["gate"] = self._gated(self.scorer_, *scored)
            choice["choice"] = self.scorer_.name
        self.validation_ = {"metric": f"ndcg@{cfg.k}", **choice}
        self.content_model_ = fit_ranker(frame, content_only_config(cfg)) if self.scorer_.needs_content_model else None
        return self

    def _choose(self, scored: pd.DataFrame, fold: pd.Series) -> tuple[Scorer, dict[str, Any]]:
        """(the cold scorer, the figures behind the choice) from every candidate's per-query figures."""
        per = scored[[s for s in scored.columns if self.candidates is None or s.name in self.candidates
                      or s.kind in self.candidates]]
        kinds = list(dict.fromkeys(s.kind for s in per.columns))
        nested = {kind: _nested(per[[s for s in per.columns if s.kind == kind]], fold) for kind in kinds}
        quo = self._status_quo(scored)
        margin = {k: _paired_gap(v, scored[quo]) for k, v in nested.items()}
        kind, best, gaps = _choose_kind(nested, [k for k in kinds if margin[k]["gap"] > margin[k]["se"]], self.rule)
        scorer = quo if kind is None else per[[s for s in per.columns if s.kind == kind]].mean().idxmax()
        return scorer, {"n_queries": int(per.index.size), "n_folds": int(fold.nunique()), "choice": scorer.name,
                        "status_quo": quo.name, "rule": self.rule, "best_mean_kind": best,
                        "status_quo_score": round(float(scored[quo].mean()), 6),
                        "scores": {k: round(float(v.mean()), 6) for k, v in nested.items()},
                        "vs_status_quo": {k: _rounded(g) for k, g in margin.items()},
                        "vs_best": {k: _rounded(g) for k, g in gaps.items()},
                        "candidates": {s.name: round(float(v), 6) for s, v in per.mean().items()}}

    def _gated(self, chosen: Scorer, scored: pd.DataFrame, fold: pd.Series) -> tuple[Scorer, dict[str, Any]]:
        """`chosen` if the choice procedure itself, scored out of fold, beats the status quo by more than one
        standard error; else the status quo. Each fold's queries are scored by `_choose` run on the other folds
        (its kinds nested within those), so the figure is what the procedure does on queries it did not see."""
        quo = self._status_quo(scored)
        if chosen == quo:
            return quo, {"passed": None, "procedure_vs_status_quo": None}  # nothing to gate
        if fold.nunique() < 3:  # the procedure nests folds within the other folds: it needs two of them
            return quo, {"passed": False, "chosen_before_gate": chosen.name, "procedure_vs_status_quo": None}
        parts = []
        for k in sorted(fold.unique()):
            inner = (fold != k).to_numpy()
            parts.append(scored.loc[~inner, self._choose(scored.loc[inner], fold[inner])[0]])
        margin = _paired_gap(pd.concat(parts).reindex(scored.index), scored[quo])
        passed = margin["gap"] > margin["se"]
        return (chosen if passed else quo), {"passed": passed, "chosen_before_gate": chosen.name,
                                             "procedure_vs_status_quo": _rounded(margin)}

    def _status_quo(self, per: pd.DataFrame) -> Scorer:
        """What cold queries get unless another kind beats it on evidence: the zero-shot bi-encoder where the
        model has it (`status_quo="zero_shot"`), else the trees."""
        zero_shot = Scorer("feature", "bienc_cos")
        return zero_shot if self.status_quo == "zero_shot" and zero_shot in per.columns else Scorer("champion")

    def _single_features(self, frame: pd.DataFrame) -> list[str]:
        return [f for f in self.features if f in self.features_ and frame[f].notna().any()]

    def predict(self, X: pd.DataFrame, qid=None) -> np.ndarray:
        """Cold scores of X's rows (columns by name), z-scored within each query of `qid` (default: one)."""
        qid = np.zeros(len(X)) if qid is None else np.asarray(qid)
        content = self.content_model_.predict(X, missing="nan") if self.content_model_ is not None else None
        feat = X[self.scorer_.feature].to_numpy(float) if self.scorer_.feature else None
        return self._combine(content, feat, qid)

    def predict_matrix(self, X: np.ndarray) -> np.ndarray:
        """The serving path: one request's matrix, columns in the model's feature order (`features_`)."""
        content = None
        if self.content_model_ is not None:
            cols = [self.features_.index(f) for f in self.content_model_.feature_names_]
            content = self.content_model_.predict_matrix(X[:, cols])
        feat = X[:, self.features_.index(self.scorer_.feature)] if self.scorer_.feature else None
        return self._combine(content, feat, np.zeros(len(X)))

    def _combine(self, content, feat, qid) -> np.ndarray:
        s = self.scorer_
        if s.kind == "content_only":
            return np.asarray(content, dtype="float64")
        if s.kind == "feature":
            return zscore_by_query(feat, qid)
        if s.kind == "blend":
            return zscore_by_query(content, qid) + s.weight * zscore_by_query(feat, qid)
        raise ValueError("the champion choice has no cold scorer of its own. Fix: check `active` first.")

    def record(self) -> dict[str, Any]:
        """What the registered model's manifest keeps (the content model is logged beside it)."""
        s = self.scorer_
        return {"choice": s.name, "kind": s.kind, "feature": s.feature, "weight": s.weight,
                "features": self.features_, "k": self.k_, "validation": self.validation_,
                "content_model_features": list(self.content_model_.feature_names_) if self.content_model_ else None}

    @classmethod
    def from_record(cls, record: dict[str, Any], content_model: Any = None) -> ColdRoute:
        self = cls()
        self.scorer_ = Scorer(record["kind"], record.get("feature"), float(record.get("weight") or 0.0))
        self.features_, self.k_, self.validation_ = list(record["features"]), record.get("k"), record.get("validation")
        self.content_model_ = content_model
        if self.scorer_.needs_content_model and content_model is None:
            raise ValueError(f"cold route {self.scorer_.name} needs its content model. Fix: load it with the record.")
        return self


def _out_of_fold(frame: pd.DataFrame, cfg: TrainConfig, features: list[str], n_folds: int, seed: int
                 ) -> pd.DataFrame:
    """Every training query scored cold (engagement masked) by the champion's and the content-only model's
    configs fitted on the other folds: the choice never scores a query with a model that saw it."""
    qid = frame[cfg.columns.query_id].to_numpy()
    n = max(2, min(n_folds, len(pd.unique(qid)) // 2))
    ccfg = content_only_config(cfg)
    cfeats = feature_columns(frame, ccfg)
    cold = mask_engagement(frame)
    out = pd.DataFrame({"champion": np.nan, "content_only": np.nan, "fold": -1}, index=frame.index)
    for k, rows in enumerate(grouped_split(qid, [1 / n] * n, seed)):
        out.loc[rows, "fold"] = k
        fit_part = frame.loc[~rows].reset_index(drop=True)
        out.loc[rows, "champion"] = fit_ranker(fit_part, cfg, features).predict(cold.loc[rows], missing="nan")
        out.loc[rows, "content_only"] = fit_ranker(fit_part, ccfg, cfeats).predict(cold.loc[rows], missing="nan")
    return out


def _per_query_ndcg(oof: pd.DataFrame, frame: pd.DataFrame, cfg: TrainConfig, singles: list[str],
                    weights) -> pd.DataFrame:
    """Cold NDCG@k of every candidate (columns, in preference order) on every training query (rows)."""
    c = cfg.columns
    qid, pid, grade = frame[c.query_id].to_numpy(), frame[c.product_id].to_numpy(), frame[c.grade].to_numpy(float)

    def ndcg(scores) -> pd.Series:
        return M.ndcg_per_query(qid, np.asarray(scores, dtype="float64"), grade, cfg.k, "esci", pid)

    per = {Scorer("champion"): ndcg(oof["champion"]), Scorer("content_only"): ndcg(oof["content_only"])}
    per.update({Scorer("feature", f): ndcg(zscore_by_query(frame[f], qid)) for f in singles})
    zc = zscore_by_query(oof["content_only"], qid)
    per.update({Scorer("blend", f, float(w)): ndcg(zc + w * zscore_by_query(frame[f], qid))
                for f in singles for w in weights})
    return pd.DataFrame(per)


def _nested(per: pd.DataFrame, fold: pd.Series) -> pd.Series:
    """Per query, what choosing among `per`'s columns scores on queries the choice did not see: each fold's
    queries are scored by the column that was best on the other folds' queries (one column: itself)."""
    parts = []
    for k in sorted(fold.unique()):
        inner = fold != k
        parts.append(per.loc[~inner, per.loc[inner].mean().idxmax()])
    return pd.concat(parts).reindex(per.index)


def _choose_kind(nested: dict[str, pd.Series], eligible: list[str], rule: str = "best_mean"
                 ) -> tuple[str | None, str | None, dict[str, dict]]:
    """(chosen kind, best-mean kind, each eligible kind's gap to the best with its standard error); None when
    no kind is eligible (the status quo stays)."""
    if not eligible:
        return None, None, {}
    best = max(eligible, key=lambda k: (nested[k].mean(), -SIMPLER_FIRST.index(k)))
    gaps = {k: _paired_gap(nested[best], nested[k]) for k in eligible}
    if rule == "best_mean":
        return best, best, gaps
    return next(k for k in SIMPLER_FIRST if k in eligible and gaps[k]["gap"] <= gaps[k]["se"]), best, gaps


def _paired_gap(a: pd.Series, b: pd.Series) -> dict[str, float]:
    """Mean of a - b over the queries both scored, and its standard error (0 for a series against itself)."""
    d = (a - b).dropna()
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
    return {"gap": float(d.mean()), "se": se}


def _rounded(gap: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in gap.items()}


def routed_scores(model: Any, route: ColdRoute | None, X: pd.DataFrame, qid, missing: str = "nan"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(scores, routed rows): the trees' scores, with every fully cold query's rows scored by the route."""
    scores = np.asarray(model.predict(X, missing=missing), dtype="float64")
    if route is None or not route.active:
        return scores, np.zeros(len(X), bool)
    cold = cold_queries(X, route.features_, qid)
    if cold.any():
        scores = scores.copy()
        scores[cold] = route.predict(X.loc[cold], np.asarray(qid)[cold])
    return scores, cold


def evaluate_cold_routed(model: Any, route: ColdRoute | None, frame: pd.DataFrame, cfg: TrainConfig
                         ) -> dict[str, float]:
    """The model as registered (trees + route) on `frame`'s cold slice: keys '<metric>/cold_routed', beside
    the trees' own '<metric>/cold' from `ltr.train.evaluate_ranker`."""
    cold = mask_engagement(frame)
    scores, _ = routed_scores(model, route, cold, cold[cfg.columns.query_id].to_numpy())
    pq = M.per_query_metrics(cold, scores, cfg.columns, cfg.k, M.default_metrics(cfg.engagement_metric),
                             cfg.head_quantile)
    return {f"{c}/cold_routed": float(pq[c].mean()) for c in pq.columns if c != "segment" and pq[c].notna().any()}


def fit_cold_route(frame: pd.DataFrame, cfg: TrainConfig, features: list[str]) -> ColdRoute | None:
    """The route the config asks for, or None (`cold_route: off`, or a model without engagement features or
    without anything else)."""
    eng = engagement_columns(features)
    if cfg.cold_route == "off" or not eng or len(eng) == len(features):
        return None
    zero_shot = cfg.cold_route == "zero_shot"
    return ColdRoute(seed=cfg.seed, status_quo="zero_shot" if zero_shot else "trees", gate=zero_shot).fit(
        frame, cfg, features)


__all__ = ["BLEND_WEIGHTS", "ROUTE_FEATURES", "RULES", "SIMPLER_FIRST", "STATUS_QUO", "ColdRoute", "Scorer",
           "cold_queries", "evaluate_cold_routed", "fit_cold_route", "routed_scores", "zscore_by_query"]
