"""The promotion gate: a newly trained version becomes `@champion` only when shoppers would not lose by it;
otherwise it is registered as `@challenger` (to be interleaved with the champion, `ltr serve --challenger`)
and the run says why in one line.

Two checks, both against the current champion on the run's held-out test queries, which neither model
trained on:

- content: NDCG@k of the new version is not below the champion's (minus `content_tolerance`, default 0),
  with the same test frame and grades for both;
- engagement: the counterfactual estimate (`ltr.counterfactual`, doubly robust on add-to-carts by default)
  of the new version's engagement relative to the champion's, from the log's searches of the test queries
  *after* the cutoff the features were read at (the same held-out window the engagement labels come from,
  so no logged outcome the models saw as a feature is counted). Both rankings are estimated on the same
  bootstrap resamples, so the interval is of the difference itself. Passes when the lower end of its 95%
  interval is at or above -`max_engagement_drop` (1%): "not below -1% at 95% confidence". An estimate too
  uncertain to say so refuses: the gate errs towards the champion shoppers already have.

A first version (no champion yet) is promoted. A dataset without an engagement log is judged on content
alone, and the reason says so. A version held back as @challenger can be served beside the champion with
interleaving (`ltr serve --challenger`) and promoted on that evidence (`ltr promote --interleaving`,
`promote_on_interleaving`). Every decision is kept on the version as tags (`ltr.promotion.*`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from ltr.data.config import StrictConfig

CHALLENGER = "challenger"


class PromotionError(ValueError):
    """A promotion that cannot be decided (unknown version, bad report); the message names the fix."""


class PromotionConfig(StrictConfig):
    """When a run's new version may replace the champion (see ltr/promotion.py)."""

    enabled: bool = Field(True, description="off: every new version becomes @champion (no checks)")
    content_tolerance: float = Field(0.0, ge=0, description="new NDCG@k may be this much below the champion's")
    max_engagement_drop: float = Field(0.01, ge=0, lt=1, description="the lower end of the 95% interval of "
                                       "the relative engagement change may go down to -this")
    outcome: Literal["added_to_cart", "clicked"] = "added_to_cart"
    estimator: Literal["ips", "snips", "dm", "dr"] = "dr"
    n_boot: int = Field(200, ge=20, description="bootstrap resamples (over queries) of the engagement estimate")


@dataclass
class Decision:
    promote: bool
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def alias(self) -> str:
        from ltr.tracking import CHAMPION
        return CHAMPION if self.promote else CHALLENGER

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "alias": self.alias}


def decide(content: tuple[float, float], engagement: dict[str, Any] | None, cfg: PromotionConfig,
           metric: str = "ndcg@10") -> Decision:
    """The rule itself, on measured figures: content (new, champion) and the engagement comparison (or None)."""
    new, old = content
    content_ok = bool(np.isfinite(new) and (not np.isfinite(old) or new >= old - cfg.content_tolerance))
    evidence: dict[str, Any] = {"content": {"metric": metric, "new": new, "champion": old, "ok": content_ok}}
    why_content = f"content {metric} {new:.4f} {'>=' if content_ok else '<'} champion {old:.4f}"
    if engagement is None:
        return Decision(content_ok, f"{why_content}; no engagement log, judged on content alone", evidence)
    evidence["engagement"] = engagement
    if "unavailable" in engagement:
        return Decision(False, f"{why_content}; engagement cannot be estimated from the log "
                               f"({engagement['unavailable']}), so the champion stays", evidence)
    lo, hi = engagement["rel_diff_ci95"]
    engagement_ok = bool(np.isfinite(lo) and lo >= -cfg.max_engagement_drop)
    why_eng = (f"{engagement['outcome']} ({engagement['estimator']}) {engagement['rel_diff']:+.2%} "
               f"[{lo:+.2%}, {hi:+.2%}] {'>=' if engagement_ok else 'below'} -{cfg.max_engagement_drop:.0%} "
               "at 95%")
    return Decision(content_ok and engagement_ok, f"{why_content}; {why_eng}", evidence)


# --- the figures ---------------------------------------------------------------------------------------

def content_figures(new_model: Any, old_model: Any, test: pd.DataFrame, train_cfg: Any) -> tuple[float, float]:
    """NDCG@k of both models on the same test frame (the champion's features matched by name, NaN if absent)."""
    from ltr.train import evaluate_ranker

    key = f"ndcg@{train_cfg.k}"
    new = evaluate_ranker(new_model, test, train_cfg, missing="nan")[0].get(key, float("nan"))
    old = evaluate_ranker(old_model, test, train_cfg, missing="nan")[0].get(key, float("nan"))
    return float(new), float(old)


def engagement_figures(ds: Any, test: pd.DataFrame, new_model: Any, old_model: Any, cutoff: pd.Timestamp | None,
                       cfg: PromotionConfig, k: int = 10) -> dict[str, Any] | None:
    """The new version's engagement relative to the champion's, estimated from the test queries' searches
    after `cutoff` (all of them when None); None without a dataset, a log, or a click in those searches."""
    from ltr.counterfactual.estimators import OfflineEvaluator
    from ltr.counterfactual.logs import CounterfactualError, ImpressionLog
    from ltr.counterfactual.offline import candidate_pairs, pair_features

    if ds is None or ds.impressions_path is None:
        return None
    imps = ds.impressions
    imps = imps[imps["query_id"].isin(set(test["query_id"]))]
    if cutoff is not None:
        imps = imps[imps["ts"] >= cutoff]
    if imps.empty or not imps["clicked"].any():
        return None
    keys = test[["query_id", "product_id"]].reset_index(drop=True)
    rank = {n: keys.assign(score=np.asarray(m.predict(test, missing="nan"), dtype="float64"))
            for n, m in (("new", new_model), ("champion", old_model))}
    try:
        log = ImpressionLog.from_frame(imps, where="the test queries' held-out searches")
        evaluator = OfflineEvaluator(k=k, n_boot=cfg.n_boot).fit(log, pair_features(ds, candidate_pairs(ds, log)))
        res = evaluator.compare(rank["new"], rank["champion"])
    except CounterfactualError as e:  # a log too small or too shallow says so; it never fails the run
        return {"outcome": cfg.outcome, "estimator": cfg.estimator, "searches": int(imps["request_id"].nunique()),
                "unavailable": " ".join(str(e).split(". Fix:")[0].split())}
    est = res["outcomes"][cfg.outcome][cfg.estimator]
    return {"outcome": cfg.outcome, "estimator": cfg.estimator, "searches": res["searches"],
            "queries": res["queries"], **est}


def current_champion(name: str) -> tuple[Any, str] | None:
    """(model, version) of `name`@champion in the current tracking store, None when there is none."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from ltr.tracking import CHAMPION, load_model

    try:
        mv = MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    return load_model(f"models:/{name}/{mv.version}"), str(mv.version)


def gate(name: str, version: str, new_model: Any, test: pd.DataFrame, ds: Any, cutoff: pd.Timestamp,
         cfg: PromotionConfig, train_cfg: Any) -> Decision:
    """Decide, move the alias the decision names to `version`, and return the decision."""
    champ = current_champion(name) if cfg.enabled else None
    if not cfg.enabled:
        decision = Decision(True, "promotion gate off (promotion.enabled: false)")
    elif champ is None:
        decision = Decision(True, f"first version of {name}: nothing to compare with")
    else:
        old_model, old_version = champ
        decision = decide(content_figures(new_model, old_model, test, train_cfg),
                          engagement_figures(ds, test, new_model, old_model, cutoff, cfg, train_cfg.k),
                          cfg, f"ndcg@{train_cfg.k}")
        decision.evidence["champion_version"] = old_version
    _record(name, version, decision)
    return decision


def _record(name: str, version: str, decision: Decision) -> None:
    """Move the alias and keep the decision on the version (tags): the registry says why it is where it is."""
    from mlflow import MlflowClient

    client = MlflowClient()
    client.set_registered_model_alias(name, decision.alias, version)
    content_ok = decision.evidence.get("content", {}).get("ok", decision.promote)
    for key, value in (("alias", decision.alias), ("reason", decision.reason), ("content_ok", content_ok)):
        client.set_model_version_tag(name, version, f"ltr.promotion.{key}", str(value))


def promote_on_interleaving(name: str, version: str, report: dict[str, Any], cfg: PromotionConfig,
                            force: bool = False) -> Decision:
    """A challenger's second chance: promoted when interleaving with the champion (`ltr interleaving`) shows
    its results' clicks not below -max_engagement_drop at 95% (lower end of `rel_clicks_ci95`), and its
    run's content check passed (the version's `ltr.promotion.content_ok` tag). `force`: a person's call,
    recorded as such."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        tags = MlflowClient().get_model_version(name, version).tags
    except MlflowException:
        raise PromotionError(f"no version {version} of model '{name}' in the registry. Fix: pass --name and "
                             "--version of a registered version (and --tracking-uri of its store).") from None
    if force:
        decision = Decision(True, "promoted by hand (--force)", {"interleaving": report})
    else:
        lo, hi = report["rel_clicks_ci95"]
        eng_ok = bool(np.isfinite(lo) and lo >= -cfg.max_engagement_drop)
        content_ok = tags.get("ltr.promotion.content_ok", "False") == "True"
        why = (f"interleaving over {report['searches']} searches: challenger clicks {report['rel_clicks']:+.2%} "
               f"[{lo:+.2%}, {hi:+.2%}] {'>=' if eng_ok else 'below'} -{cfg.max_engagement_drop:.0%} at 95%")
        if not content_ok:
            why += "; its run's content check did not pass (tag ltr.promotion.content_ok)"
        decision = Decision(eng_ok and content_ok, why, {"interleaving": report,
                                                         "content": {"ok": content_ok}})
    _record(name, version, decision)
    return decision


__all__ = ["CHALLENGER", "Decision", "PromotionConfig", "PromotionError", "content_figures", "current_champion",
           "decide", "engagement_figures", "gate", "promote_on_interleaving"]
