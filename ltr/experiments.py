"""The paper's experiments as one call: every arm trained and evaluated on >= 3 seeds, one table out.

    md, js = run_experiments(frames, ExperimentConfig(...))

`frames` is a mapping {seed: training frame}, a builder `seed -> training frame` (e.g. the built-in world at
that seed through labels and Feast), or one DataFrame used for every seed (then seeds vary the query split
and the model seed only, not the world). Per seed the frame is split by query (train / test, seeded);
every arm trains on the same train queries and is scored on the same test queries, so arms differ only in
what the arm changes.

Arms (group letter = the brief's item):
  a  engagement-only labels | LLM labels without sigmoid | LLM labels with the tuned sigmoid
  b  alpha x beta grid of the sigmoid at the tuned blend weight (the content/engagement trade-off)
  c  tuned-sigmoid labels without cross-encoder features (columns starting with `ce_prefix`)
  d  label source: true grades | the (fine-tuned) grader | engagement, all through the same transform
  e  Hopit.ai: CE fine-tuned on LLM labels (`hopit_llm_column`) vs on purchases (`hopit_purchase_column`)
  f  engagement labels: smoothed rates (the baseline) vs LambdaMART on the raw impressions, label clicked,
     naive and position-debiased by XGBoost's `lambdarank_unbiased` (ltr.unbiased). Opt-in: a frame has one
     row per pair, so the log comes as `run_experiments(..., clicks=ClickLog(...))`; each seed's click arms
     see only its train queries' impressions, in `click_window`. The JSON's `propensities` puts the t+ that
     XGBoost learnt beside intervention harvesting on the same impressions and, on the built-in world, the
     true examination curve.
The purchase-trained CE column is an experiment-only feature: every arm except e/CE-on-purchases drops it.
Arms whose columns are missing are skipped and listed with the reason.

Significance. Mean ± std over seeds says how stable an arm is, not whether it beats the baseline on the
queries. So every arm is also compared with the baseline arm, "engagement only" (the arm the Δ columns and
the paper's claim compare against), by a two-sided paired t-test and a Wilcoxon signed-rank test
(`ltr.data.metrics.paired_test`) on per-query NDCG@k and on the engagement metric; the table and the JSON give
both p and n, the number of pairs.
- Pooled over seeds: the unit is a (seed, test query) pair; both arms trained with that seed on that seed's
  train split and were scored on that query, so pairing removes query difficulty and split luck alike.
  Not per seed then combined: a seed's test split holds tens of queries, too few for a test of its own, and
  combining two-sided p-values (Fisher) ignores direction, so a seed the arm wins and a seed it loses
  would add up as evidence. Caveat: with one frame for every seed a query can fall in several seeds' test
  splits, so pairs are not fully independent and p is somewhat optimistic. No correction for the number
  of arms: the claim's one comparison is the pre-stated one, the rest are descriptive.
- scipy.stats, not ranx: `ranx.compare` recomputes metrics from qrels and runs with its own gains and
  ties, has no engagement metrics, and would pull numba, llvmlite, ir-datasets, fastparquet and seaborn
  into the install; its "student" test is the same paired t-test as scipy's `ttest_rel` on our numbers.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ltr.data import metrics as M

from .rankers import split_frame
from .train import cold_training_frame, evaluate_ranker, feature_columns, fit_ranker
from .train_config import ExperimentConfig, TrainConfig, TunedParams

FrameSource = pd.DataFrame | Mapping[int, pd.DataFrame] | Callable[[int], pd.DataFrame]
#: the arm every other arm is compared with (the Δ columns, the paired tests, the paper's claim)
BASELINE = "engagement only"
CLAIM_ARM = "LLM labels, tuned sigmoid"


class ExperimentError(ValueError):
    """Bad experiment input; the message names the field and the fix."""


@dataclass
class Arm:
    name: str
    group: str
    description: str
    target: dict[str, Any] = field(default_factory=dict)
    drop_columns: list[str] = field(default_factory=list)
    drop_prefixes: list[str] = field(default_factory=list)
    #: experiment-only columns this arm trains on even when the config declares its feature list
    add_columns: list[str] = field(default_factory=list)
    #: set: trained on raw impressions (label clicked) by ltr.unbiased, with these UnbiasedLambdaMART params
    clicks: dict[str, Any] | None = None

    def key(self) -> str:
        return json.dumps([self.target, sorted(self.drop_columns), sorted(self.drop_prefixes),
                           sorted(self.add_columns), self.clicks], sort_keys=True)


def build_arms(cfg: ExperimentConfig, tuned: TunedParams, columns: set[str],
               has_clicks: bool = False) -> tuple[list[Arm], list[dict]]:
    """The arms of the selected groups that this frame (and the click log, when `has_clicks`) can run, and
    the skipped ones with reasons."""
    cols = cfg.train.columns
    t = {"alpha": tuned.alpha, "beta": tuned.beta, "blend_weight": tuned.blend_weight}
    purch = [cfg.hopit_purchase_column] if cfg.hopit_purchase_column in columns else []
    arms: list[Arm] = []
    skipped: list[dict] = []
    eng_only = Arm(BASELINE, "a", "labels from clicks/carts/purchases only", {"blend_weight": 0.0},
                   purch)
    if "a" in cfg.arms:
        arms += [eng_only,
                 Arm("LLM labels, no sigmoid", "a", "raw LLM score blended at the tuned weight",
                     {"alpha": None, "beta": tuned.beta, "blend_weight": tuned.blend_weight}, purch),
                 Arm(CLAIM_ARM, "a", f"sigma(alpha={tuned.alpha:.3g}, beta={tuned.beta:.3g}), "
                     f"blend weight {tuned.blend_weight:.3g}", dict(t), purch)]
    if "b" in cfg.arms:
        for a in cfg.alpha_grid:
            for b in cfg.beta_grid:
                arms.append(Arm(f"sigmoid alpha={a:g} beta={b:g}", "b", "grid point at the tuned blend weight",
                                {"alpha": a, "beta": b, "blend_weight": tuned.blend_weight}, purch))
    if "c" in cfg.arms:
        if any(c.startswith(cfg.ce_prefix) for c in columns):
            arms.append(Arm(f"tuned sigmoid, no {cfg.ce_prefix}* features", "c", "cross-encoder ablation", dict(t),
                            purch, [cfg.ce_prefix]))
        else:
            skipped.append({"group": "c", "reason": f"no feature column starts with {cfg.ce_prefix!r}"})
    if "d" in cfg.arms:
        if cols.grade in columns:
            arms.append(Arm("label source: true grades", "d", "grade/3 through the tuned sigmoid (upper bound)",
                            {**t, "content_source": "grade"}, purch))
        else:
            skipped.append({"group": "d", "arm": "true grades", "reason": f"no '{cols.grade}' column"})
        grader = cfg.grader_column or cols.content_score
        if grader in columns:
            arms.append(Arm("label source: grader", "d", f"'{grader}' through the tuned sigmoid",
                            {**t, "content_source": grader}, purch))
        else:
            skipped.append({"group": "d", "arm": "grader", "reason": f"no '{grader}' column"})
        arms.append(Arm("label source: engagement", "d", "engagement-only labels", {"blend_weight": 0.0}, purch))
    if "e" in cfg.arms:
        need = [c for c in (cfg.hopit_llm_column, cfg.hopit_purchase_column) if c not in columns]
        if need:
            skipped.append({"group": "e", "reason": f"missing column(s) {need}: the lead supplies both CE scores"})
        else:
            arms += [Arm("CE fine-tuned on LLM labels", "e", f"feature {cfg.hopit_llm_column}", dict(t),
                         [cfg.hopit_purchase_column]),
                     Arm("CE fine-tuned on purchases", "e", f"feature {cfg.hopit_purchase_column}", dict(t),
                         [cfg.hopit_llm_column], add_columns=[cfg.hopit_purchase_column])]
    if "f" in cfg.arms:
        if has_clicks:
            arms += _click_arms(cfg, eng_only, purch, "a" not in cfg.arms)
        else:
            skipped.append({"group": "f", "reason": "no impression log. Fix: run_experiments(..., clicks="
                            "ltr.unbiased.ClickLog.from_dataset(ds, cutoff)), as the pipeline does"})
    return arms, skipped


def _click_arms(cfg: ExperimentConfig, eng_only: Arm, purch: list[str], with_baseline: bool) -> list[Arm]:
    """(f): the baseline's smoothed-rate labels beside LambdaMART on the raw clicks, naive and debiased."""
    base = [Arm(BASELINE, "f", eng_only.description, eng_only.target, purch)] if with_baseline else []
    window = "from the engagement cutoff on" if cfg.click_window == "labels" else "before the engagement cutoff"
    return base + [
        Arm("raw clicks, naive LambdaMART", "f", f"impressions {window}, label clicked, no debiasing",
            {"blend_weight": 0.0}, purch, clicks={"lambdarank_unbiased": False}),
        Arm("raw clicks, unbiased LambdaMART", "f", f"impressions {window}, label clicked, XGBoost "
            f"lambdarank_unbiased (bias_norm {cfg.click_bias_norm:g})", {"blend_weight": 0.0}, purch,
            clicks={"lambdarank_unbiased": True, "lambdarank_bias_norm": cfg.click_bias_norm})]


def _arm_config(base: TrainConfig, arm: Arm, seed: int) -> TrainConfig:
    d = base.model_dump()
    d["seed"] = seed
    d["target"].update(arm.target)
    d["exclude_feature_prefixes"] = list(d["exclude_feature_prefixes"]) + arm.drop_prefixes
    if d["features"] is not None:
        kept = [f for f in d["features"] if f not in arm.drop_columns]
        d["features"] = kept + [c for c in arm.add_columns if c not in kept]
    if arm.target.get("content_source") == "grade" or arm.target.get("blend_weight") == 0.0:
        d["label_source"] = "grade" if arm.target.get("content_source") == "grade" else "engagement"
    if arm.clicks is not None:
        d["label_source"] = "clicks"
    return TrainConfig.model_validate(d)


def _fit_arm(tr: pd.DataFrame, acfg: TrainConfig, arm: Arm, feats: list[str], cfg: ExperimentConfig,
             clicks: Any) -> tuple[Any, dict[str, Any]]:
    """The arm's model, and what the click arms learnt beside it: their propensities and the harvested
    curve from the same impressions (only this seed's train queries: the test queries' clicks stay unseen)."""
    if arm.clicks is None:
        return fit_ranker(tr, acfg, feats), {}
    from .unbiased import UnbiasedLambdaMART, click_rows, fit_on_clicks, harvested_curve

    cols = acfg.columns
    k = acfg.k  # the page depth the arms are judged at is the depth the click arms learn from
    imp = clicks.rows(tr[cols.query_id].unique(), cfg.click_window)
    rows, info = click_rows(imp, cold_training_frame(tr, acfg), feats, cols.query_id, cols.product_id, k)
    params = acfg.model.model_dump(exclude={"kind"}) | {"random_state": acfg.seed, "max_position": k}
    model = fit_on_clicks(UnbiasedLambdaMART(**params, **arm.clicks), rows, feats)
    if model.propensities_ is not None:
        info["propensities"] = model.propensities_.tolist()
        info["harvested"] = harvested_curve(rows, k, cfg.click_n_boot, acfg.seed)
    return model, info


def arm_features(frame: pd.DataFrame, acfg: TrainConfig, arm: Arm) -> list[str]:
    """The arm's model features: the configured ones (families included) without the arm's drops."""
    return [f for f in feature_columns(frame, acfg) if f not in arm.drop_columns]


def _frame(frames: FrameSource, seed: int) -> pd.DataFrame:
    if isinstance(frames, pd.DataFrame):
        f = frames
    elif callable(frames):
        f = frames(seed)
    else:
        if seed not in frames:
            raise ExperimentError(f"no frame for seed {seed}; have {sorted(frames)}. Fix: give one frame per seed "
                                  "in cfg.seeds, or a builder seed -> frame.")
        f = frames[seed]
    if not isinstance(f, pd.DataFrame) or f.empty:
        raise ExperimentError(f"frame for seed {seed} is empty or not a DataFrame.")
    return f


def _fmt(mean: float, sd: float, digits: int = 4) -> str:
    return "n/a" if not np.isfinite(mean) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _split(frames: FrameSource, base: TrainConfig, seed: int, splits: dict, f: pd.DataFrame | None = None):
    """(train, test) of a seed, kept in `splits` so the tuning seed's frame is built and split only once."""
    if seed not in splits:
        f = _frame(frames, seed) if f is None else f
        tr, te = split_frame(f, base.columns.query_id, [1 - base.test_fraction, base.test_fraction], seed)
        splits[seed] = (tr, te)
    return splits[seed]


def _tuned(cfg: ExperimentConfig, train: pd.DataFrame, track: bool) -> tuple[TunedParams, dict | None]:
    """The tuned-sigmoid arm's parameters: given, tuned on the first seed's train split, or the config's."""
    base, tuned, tune_info = cfg.train, cfg.tuned, None
    if tuned is None and cfg.tune is not None:
        from .tuning import tune

        res = tune(train, base.model_copy(update={"seed": cfg.seeds[0]}), cfg.tune, track=track)
        tuned = res.tuned
        tune_info = {"operating_point": {kk: v for kk, v in res.operating_point.items()}, "n_trials": len(res.trials)}
    if tuned is None:
        tuned = TunedParams(alpha=base.target.alpha or 10.0, beta=base.target.beta,
                            blend_weight=base.target.blend_weight)
    return tuned, tune_info


def _run_arms(frames: FrameSource, cfg: ExperimentConfig, arms: list[Arm], splits: dict,
              keep: tuple[str, ...], clicks: Any = None) -> tuple[dict, dict, dict[str, dict[int, dict]]]:
    """Summary metrics, the per-query columns `keep` and what each fit learnt besides (`_fit_arm`) of every
    arm on every seed. Arms that change nothing between them (same target and drops) are trained once per
    seed and share the result."""
    from tqdm.auto import tqdm

    cache: dict[tuple[int, str], tuple[dict[str, float], pd.DataFrame]] = {}
    summaries: dict[str, dict[int, dict]] = {a.name: {} for a in arms}
    per_query: dict[str, dict[int, pd.DataFrame]] = {a.name: {} for a in arms}
    learnt: dict[str, dict[int, dict]] = {a.name: {} for a in arms}
    with tqdm(total=len(arms) * len(cfg.seeds), desc="experiment arms") as bar:
        for seed in cfg.seeds:
            tr, te = _split(frames, cfg.train, seed, splits)
            for arm in arms:
                key = (seed, arm.key())
                if key not in cache:
                    acfg = _arm_config(cfg.train, arm, seed)
                    feats = arm_features(tr, acfg, arm)
                    model, info = _fit_arm(tr, acfg, arm, feats, cfg, clicks)
                    summary, pq = evaluate_ranker(model, te, acfg)
                    cache[key] = summary, pq[[c for c in keep if c in pq.columns]], info
                summaries[arm.name][seed], per_query[arm.name][seed], learnt[arm.name][seed] = cache[key]
                bar.update(1)
            splits.pop(seed, None)  # free memory: frames can be large
    return summaries, per_query, learnt


def _agg(vals: list[float]) -> tuple[float, float]:
    v = np.array([x for x in vals if np.isfinite(x)])
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _arm_rows(arms: list[Arm], summaries: dict[str, dict[int, dict]], seeds: list[int]) -> list[dict[str, Any]]:
    rows = []
    for arm in arms:
        runs = summaries[arm.name]
        keys = sorted({m for r in runs.values() for m in r})
        mean, sd = {}, {}
        for m in keys:
            mean[m], sd[m] = _agg([runs[s].get(m, np.nan) for s in seeds])
        rows.append({"name": arm.name, "group": arm.group, "description": arm.description,
                     "target": arm.target, "dropped": arm.drop_columns + [p + "*" for p in arm.drop_prefixes],
                     "mean": mean, "std": sd, "per_seed": {str(s): runs[s] for s in seeds}})
    return rows


def paired_tests(per_query: Mapping[str, Mapping[int, pd.DataFrame]], metrics: tuple[str, ...],
                 baseline: str = BASELINE) -> dict[str, dict[str, dict[str, float]]]:
    """{arm: {metric: ltr.data.metrics.paired_test result}} of every arm but `baseline` against it, over
    (seed, query) pairs pooled across seeds (see the module docstring for why pooled); {} without the
    baseline arm. `per_query` is {arm: {seed: per-query metrics frame indexed by query id}}."""
    if baseline not in per_query:
        return {}

    def pooled(name: str) -> pd.DataFrame:
        return pd.concat(dict(per_query[name]), names=["seed"])

    ref = pooled(baseline)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in per_query:
        if name == baseline:
            continue
        arm = pooled(name)
        out[name] = {m: M.paired_test(arm[m], ref[m]) for m in metrics if m in arm.columns and m in ref.columns}
    return out


def _claim(by_name: dict[str, dict], tests: dict, k: str, eng: str) -> dict[str, Any] | None:
    if BASELINE not in by_name or CLAIM_ARM not in by_name:
        return None
    b, t = by_name[BASELINE]["mean"], by_name[CLAIM_ARM]["mean"]
    c_rel = t[k] / b[k] - 1 if b.get(k) else float("nan")
    e_rel = t[eng] / b[eng] - 1 if b.get(eng) else float("nan")
    nan = {"p_ttest": float("nan"), "p_wilcoxon": float("nan")}
    pc, pe = tests.get(CLAIM_ARM, {}).get(k, nan), tests.get(CLAIM_ARM, {}).get(eng, nan)
    kc = f"{k}/cold"
    c_cold = t[kc] / b[kc] - 1 if b.get(kc) and t.get(kc) is not None else float("nan")
    return {"content_rel_gain": c_rel, "content_rel_gain_cold": c_cold,
            "content_cold_tuned": t.get(kc, float("nan")), "content_cold_engagement_only": b.get(kc, float("nan")),
            "engagement_rel_change": e_rel, "content_goal": 0.05,
            "engagement_goal": -0.01, "met": bool(c_rel >= 0.05 and e_rel >= -0.01),
            "statement": "tuned LLM-label arm vs engagement-only: content NDCG@10 >= +5% relative, "
                         "engagement no more than 1% below (means over seeds)",
            "content_p_ttest": pc["p_ttest"], "content_p_wilcoxon": pc["p_wilcoxon"],
            "engagement_p_ttest": pe["p_ttest"], "engagement_p_wilcoxon": pe["p_wilcoxon"]}


def _p(p: float) -> str:
    return "n/a" if not np.isfinite(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def _fmt_test(row: dict[str, Any], metric: str) -> str:
    if row["name"] == BASELINE:
        return "baseline"
    t = (row.get("paired_test") or {}).get(metric)
    return "n/a" if t is None else f"{_p(t['p_ttest'])} / {_p(t['p_wilcoxon'])} (n={t['n_queries']})"


def _table(arm_rows: list[dict[str, Any]], kk: int, eng: str) -> list[str]:
    k, irr = f"ndcg@{kk}", f"irrelevant@{kk}"
    base_row = next((r for r in arm_rows if r["name"] == BASELINE), None)
    lines = [(f"| arm | group | NDCG@{kk} (ESCI gains) | NDCG@{kk} cold | {eng} | Irrelevant@{kk} | "
              f"ΔNDCG vs eng-only | Δ{eng} vs eng-only | p ΔNDCG t / W (n) | p Δ{eng} t / W (n) |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in arm_rows:
        m, s = r["mean"], r["std"]
        if base_row is not None and base_row["mean"].get(k) and base_row["mean"].get(eng):
            dc = f"{100 * (m.get(k, np.nan) / base_row['mean'][k] - 1):+.1f}%"
            de = f"{100 * (m.get(eng, np.nan) / base_row['mean'][eng] - 1):+.1f}%"
        else:
            dc = de = "n/a"
        kc = f"{k}/cold"
        lines.append(f"| {r['name']} | {r['group']} | {_fmt(m.get(k, np.nan), s.get(k, np.nan))} | "
                     f"{_fmt(m.get(kc, np.nan), s.get(kc, np.nan))} | {_fmt(m.get(eng, np.nan), s.get(eng, np.nan))} | "
                     f"{_fmt(m.get(irr, np.nan), s.get(irr, np.nan))} "
                     f"| {dc} | {de} | {_fmt_test(r, k)} | {_fmt_test(r, eng)} |")
    return lines


def _footer(cfg: ExperimentConfig, tuned: TunedParams, claim: dict | None, skipped: list[dict],
            notes: list[str] | None) -> list[str]:
    foot = [(f"Mean ± sample std over seeds {cfg.seeds} ({len(cfg.seeds)} runs per arm); tuned sigmoid "
            f"alpha={tuned.alpha:.3g}, beta={tuned.beta:.3g}, blend weight={tuned.blend_weight:.3g}."),
            (f"p: two-sided paired t-test / Wilcoxon signed-rank vs '{BASELINE}' over (seed, test query) pairs "
             "pooled across seeds; n = pairs where both arms define the metric; not corrected for the number "
             "of arms.")]
    if claim is not None:
        foot.append("Paper's claim (NDCG +5% rel., engagement >= -1%): "
                    f"content {100 * claim['content_rel_gain']:+.1f}%, "
                    f"engagement {100 * claim['engagement_rel_change']:+.1f}% -> "
                    f"{'met' if claim['met'] else 'NOT met'}. On cold queries (engagement features absent): "
                    f"content {100 * claim['content_rel_gain_cold']:+.1f}% "
                    f"({claim['content_cold_tuned']:.4f} vs {claim['content_cold_engagement_only']:.4f}).")
        foot.append(f"Claim's paired tests (t / W): content {_p(claim['content_p_ttest'])} / "
                    f"{_p(claim['content_p_wilcoxon'])}, engagement {_p(claim['engagement_p_ttest'])} / "
                    f"{_p(claim['engagement_p_wilcoxon'])}.")
    for sk in skipped:
        foot.append(f"Skipped {sk.get('arm', 'group ' + sk['group'])}: {sk['reason']}.")
    return foot + list(notes or [])


def _propensities(arms: list[Arm], learnt: dict[str, dict[int, dict]], clicks: Any) -> dict[str, Any]:
    """{arm: ltr.unbiased.propensity_report} of the click arms that learnt a position bias, with the harvested
    curve's bootstrap interval per seed and how far XGBoost's curve is from the harvested one."""
    from .unbiased import max_relative_error, propensity_report

    out: dict[str, Any] = {}
    for arm in arms:
        runs = learnt[arm.name]
        if arm.clicks is None or not runs or not all("propensities" in r for r in runs.values()):
            continue
        rep = propensity_report({s: r["propensities"] for s, r in runs.items()},
                                {s: r["harvested"]["examination"] for s, r in runs.items()}, clicks.true_examination)
        rep["intervention_harvesting"]["ci95_per_seed"] = {
            str(s): [r["harvested"]["ci95_low"], r["harvested"]["ci95_high"]] for s, r in runs.items()}
        rep["max_rel_diff_xgboost_vs_harvesting"] = max_relative_error(
            rep["xgboost_lambdarank_unbiased"]["mean"], rep["intervention_harvesting"]["mean"])
        out[arm.name] = rep
    return out


def _propensity_notes(props: dict[str, Any]) -> list[str]:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    lines = []
    for name, rep in props.items():
        xg, ih = rep["xgboost_lambdarank_unbiased"], rep["intervention_harvesting"]
        truth = ("" if rep["truth"] is None else "; vs the true examination: XGBoost "
                 f"{pct(xg['max_rel_error_vs_truth'])}, harvesting {pct(ih['max_rel_error_vs_truth'])}")
        lines.append(f"{name}: propensities (mean over seeds, position 1 = 1), max relative difference at positions "
                     f"{rep['error_positions']}: XGBoost's t+ vs intervention harvesting on the same impressions "
                     f"{pct(rep['max_rel_diff_xgboost_vs_harvesting'])}{truth} (JSON: propensities).")
    return lines


def run_experiments(frames: FrameSource, cfg: ExperimentConfig | None = None, track: bool = False,
                    notes: list[str] | None = None, clicks: Any = None) -> tuple[str, dict[str, Any]]:
    """Train and score every arm on every seed; returns (markdown table, JSON-ready dict). `clicks`: an
    ltr.unbiased.ClickLog, the raw impressions that group (f) trains on (skipped, with the reason, without)."""
    cfg = cfg or ExperimentConfig()
    base = cfg.train
    k, eng = f"ndcg@{base.k}", base.engagement_metric
    irr = f"irrelevant@{base.k}"
    first = _frame(frames, cfg.seeds[0])
    splits: dict[int, tuple[pd.DataFrame, pd.DataFrame]] = {}
    tr0, _ = _split(frames, base, cfg.seeds[0], splits, first)
    tuned, tune_info = _tuned(cfg, tr0, track)
    arms, skipped = build_arms(cfg, tuned, set(first.columns), has_clicks=clicks is not None)
    if not arms:
        raise ExperimentError(f"no arm can run (skipped: {skipped}). Fix: select groups in `arms` the frame supports.")
    summaries, per_query, learnt = _run_arms(frames, cfg, arms, splits, (k, eng, f"{k}/cold"), clicks)
    arm_rows = _arm_rows(arms, summaries, cfg.seeds)
    for arm, r in zip(arms, arm_rows):
        if arm.clicks is not None:
            r["clicks"] = arm.clicks
            r["click_log"] = {str(s): {m: v for m, v in i.items() if m not in ("propensities", "harvested")}
                              for s, i in learnt[arm.name].items()}
    props = _propensities(arms, learnt, clicks)
    notes = list(notes or []) + _propensity_notes(props)
    tests = paired_tests(per_query, (k, eng, f"{k}/cold"))
    for r in arm_rows:
        r["paired_test"] = tests.get(r["name"])
    claim = _claim({r["name"]: r for r in arm_rows}, tests, k, eng)
    md = "\n".join(_table(arm_rows, base.k, eng)) + "\n\n" + "\n".join(
        f"- {x}" for x in _footer(cfg, tuned, claim, skipped, notes)) + "\n"
    significance = {"baseline": BASELINE if BASELINE in per_query else None, "unit": "(seed, test query) pair",
                    "pooled_over_seeds": True, "tests": ["scipy.stats.ttest_rel", "scipy.stats.wilcoxon"],
                    "alternative": "two-sided", "multiple_comparison_correction": None}
    result = {"seeds": list(cfg.seeds), "content_metric": k, "engagement_metric": eng, "irrelevant_metric": irr,
              "tuned": tuned.model_dump(), "tuning": tune_info, "arms": arm_rows, "skipped": skipped,
              "claim": claim, "notes": list(notes or []), "config": cfg.model_dump(mode="json"),
              "significance": significance, "propensities": props}
    result = M.nan_to_none(json.loads(json.dumps(result, default=_json_default)))
    if track:
        _track(cfg, md, result, arm_rows)
    return md, result


def _track(cfg: ExperimentConfig, md: str, result: dict[str, Any], arm_rows: list[dict[str, Any]]) -> None:
    import mlflow

    from .tracking import log_config, log_metrics
    with mlflow.start_run(run_name="experiments"):
        log_config(cfg, "experiment_config.json")
        mlflow.log_text(md, "experiments.md")
        mlflow.log_dict(result, "experiments.json")
        for i, r in enumerate(arm_rows):
            log_metrics({f"arm{i:02d}.{m}": v for m, v in r["mean"].items()
                         if "/" not in m or m.endswith("/cold")})


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.bool_):
        return bool(o)
    return str(o)
