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
The purchase-trained CE column is an experiment-only feature: every arm except e/CE-on-purchases drops it.
Arms whose columns are missing are skipped and listed with the reason.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .rankers import split_frame
from .train import evaluate_ranker, feature_columns, fit_ranker
from .train_config import ExperimentConfig, TrainConfig, TunedParams

FrameSource = pd.DataFrame | Mapping[int, pd.DataFrame] | Callable[[int], pd.DataFrame]


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

    def key(self) -> str:
        return json.dumps([self.target, sorted(self.drop_columns), sorted(self.drop_prefixes)], sort_keys=True)


def build_arms(cfg: ExperimentConfig, tuned: TunedParams, columns: set[str]) -> tuple[list[Arm], list[dict]]:
    """The arms of the selected groups that this frame can run, and the skipped ones with reasons."""
    cols = cfg.train.columns
    t = {"alpha": tuned.alpha, "beta": tuned.beta, "blend_weight": tuned.blend_weight}
    purch = [cfg.hopit_purchase_column] if cfg.hopit_purchase_column in columns else []
    arms: list[Arm] = []
    skipped: list[dict] = []
    eng_only = Arm("engagement only", "a", "labels from clicks/carts/purchases only", {"blend_weight": 0.0},
                   purch)
    if "a" in cfg.arms:
        arms += [eng_only,
                 Arm("LLM labels, no sigmoid", "a", "raw LLM score blended at the tuned weight",
                     {"alpha": None, "beta": tuned.beta, "blend_weight": tuned.blend_weight}, purch),
                 Arm("LLM labels, tuned sigmoid", "a", f"sigma(alpha={tuned.alpha:.3g}, beta={tuned.beta:.3g}), "
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
                         [cfg.hopit_llm_column])]
    return arms, skipped


def _arm_config(base: TrainConfig, arm: Arm, seed: int) -> TrainConfig:
    d = base.model_dump()
    d["seed"] = seed
    d["target"].update(arm.target)
    d["exclude_feature_prefixes"] = list(d["exclude_feature_prefixes"]) + arm.drop_prefixes
    if d["features"] is not None:
        d["features"] = [f for f in d["features"] if f not in arm.drop_columns]
    if arm.target.get("content_source") == "grade" or arm.target.get("blend_weight") == 0.0:
        d["label_source"] = "grade" if arm.target.get("content_source") == "grade" else "engagement"
    return TrainConfig.model_validate(d)


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


def run_experiments(frames: FrameSource, cfg: ExperimentConfig | None = None, track: bool = False,
                    notes: list[str] | None = None) -> tuple[str, dict[str, Any]]:
    """Train and score every arm on every seed; returns (markdown table, JSON-ready dict)."""
    from tqdm.auto import tqdm

    cfg = cfg or ExperimentConfig()
    base = cfg.train
    k, eng = f"ndcg@{base.k}", base.engagement_metric
    irr = f"irrelevant@{base.k}"
    first = _frame(frames, cfg.seeds[0])
    splits: dict[int, tuple[pd.DataFrame, pd.DataFrame]] = {}

    def split(seed: int, f: pd.DataFrame | None = None):
        if seed not in splits:
            f = _frame(frames, seed) if f is None else f
            tr, te = split_frame(f, base.columns.query_id, [1 - base.test_fraction, base.test_fraction], seed)
            splits[seed] = (tr, te)
        return splits[seed]

    split(cfg.seeds[0], first)
    tuned, tune_info = cfg.tuned, None
    if tuned is None and cfg.tune is not None:
        from .tuning import tune

        res = tune(split(cfg.seeds[0])[0], base.model_copy(update={"seed": cfg.seeds[0]}), cfg.tune, track=track)
        tuned = res.tuned
        tune_info = {"operating_point": {kk: v for kk, v in res.operating_point.items()}, "n_trials": len(res.trials)}
    if tuned is None:
        tuned = TunedParams(alpha=base.target.alpha or 10.0, beta=base.target.beta,
                            blend_weight=base.target.blend_weight)
    arms, skipped = build_arms(cfg, tuned, set(first.columns))
    if not arms:
        raise ExperimentError(f"no arm can run (skipped: {skipped}). Fix: select groups in `arms` the frame supports.")

    cache: dict[tuple[int, str], dict[str, float]] = {}
    per_arm: dict[str, dict[int, dict[str, float]]] = {a.name: {} for a in arms}
    with tqdm(total=len(arms) * len(cfg.seeds), desc="experiment arms") as bar:
        for seed in cfg.seeds:
            tr, te = split(seed)
            for arm in arms:
                key = (seed, arm.key())
                if key not in cache:
                    acfg = _arm_config(base, arm, seed)
                    feats = [f for f in feature_columns(tr, acfg) if f not in arm.drop_columns]
                    model = fit_ranker(tr, acfg, feats)
                    cache[key], _ = evaluate_ranker(model, te, acfg)
                per_arm[arm.name][seed] = cache[key]
                bar.update(1)
            splits.pop(seed, None)  # free memory: frames can be large

    def agg(vals: list[float]) -> tuple[float, float]:
        v = np.array([x for x in vals if np.isfinite(x)])
        if not len(v):
            return float("nan"), float("nan")
        return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0

    arm_rows = []
    for arm in arms:
        runs = per_arm[arm.name]
        keys = sorted({m for r in runs.values() for m in r})
        mean, sd = {}, {}
        for m in keys:
            mean[m], sd[m] = agg([runs[s].get(m, np.nan) for s in cfg.seeds])
        arm_rows.append({"name": arm.name, "group": arm.group, "description": arm.description,
                         "target": arm.target, "dropped": arm.drop_columns + [p + "*" for p in arm.drop_prefixes],
                         "mean": mean, "std": sd, "per_seed": {str(s): runs[s] for s in cfg.seeds}})

    by_name = {r["name"]: r for r in arm_rows}
    claim = None
    if "engagement only" in by_name and "LLM labels, tuned sigmoid" in by_name:
        b, t = by_name["engagement only"]["mean"], by_name["LLM labels, tuned sigmoid"]["mean"]
        c_rel = t[k] / b[k] - 1 if b.get(k) else float("nan")
        e_rel = t[eng] / b[eng] - 1 if b.get(eng) else float("nan")
        claim = {"content_rel_gain": c_rel, "engagement_rel_change": e_rel, "content_goal": 0.05,
                 "engagement_goal": -0.01, "met": bool(c_rel >= 0.05 and e_rel >= -0.01),
                 "statement": "tuned LLM-label arm vs engagement-only: content NDCG@10 >= +5% relative, "
                              "engagement no more than 1% below (means over seeds)"}
    base_row = by_name.get("engagement only")
    lines = [(f"| arm | group | NDCG@{base.k} (ESCI gains) | {eng} | Irrelevant@{base.k} | ΔNDCG vs eng-only | "
             f"Δ{eng} vs eng-only |"), "|---|---|---|---|---|---|---|"]
    for r in arm_rows:
        m, s = r["mean"], r["std"]
        if base_row is not None and base_row["mean"].get(k) and base_row["mean"].get(eng):
            dc = f"{100 * (m.get(k, np.nan) / base_row['mean'][k] - 1):+.1f}%"
            de = f"{100 * (m.get(eng, np.nan) / base_row['mean'][eng] - 1):+.1f}%"
        else:
            dc = de = "n/a"
        lines.append(f"| {r['name']} | {r['group']} | {_fmt(m.get(k, np.nan), s.get(k, np.nan))} | "
                     f"{_fmt(m.get(eng, np.nan), s.get(eng, np.nan))} | {_fmt(m.get(irr, np.nan), s.get(irr, np.nan))} "
                     f"| {dc} | {de} |")
    foot = [(f"Mean ± sample std over seeds {cfg.seeds} ({len(cfg.seeds)} runs per arm); tuned sigmoid "
            f"alpha={tuned.alpha:.3g}, beta={tuned.beta:.3g}, blend weight={tuned.blend_weight:.3g}.")]
    if claim is not None:
        foot.append("Paper's claim (NDCG +5% rel., engagement >= -1%): "
                    f"content {100 * claim['content_rel_gain']:+.1f}%, "
                    f"engagement {100 * claim['engagement_rel_change']:+.1f}% -> "
                    f"{'met' if claim['met'] else 'NOT met'}.")
    for sk in skipped:
        foot.append(f"Skipped {sk.get('arm', 'group ' + sk['group'])}: {sk['reason']}.")
    foot += list(notes or [])
    md = "\n".join(lines) + "\n\n" + "\n".join(f"- {x}" for x in foot) + "\n"
    result = {"seeds": list(cfg.seeds), "content_metric": k, "engagement_metric": eng, "irrelevant_metric": irr,
              "tuned": tuned.model_dump(), "tuning": tune_info, "arms": arm_rows, "skipped": skipped,
              "claim": claim, "notes": list(notes or []), "config": cfg.model_dump(mode="json")}
    result = _finite(json.loads(json.dumps(result, default=_json_default)))
    if track:
        import mlflow

        from .tracking import log_config, log_metrics
        with mlflow.start_run(run_name="experiments"):
            log_config(cfg, "experiment_config.json")
            mlflow.log_text(md, "experiments.md")
            mlflow.log_dict(result, "experiments.json")
            for i, r in enumerate(arm_rows):
                log_metrics({f"arm{i:02d}.{m}": v for m, v in r["mean"].items() if "/" not in m})
    return md, result


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.bool_):
        return bool(o)
    return str(o)


def _finite(o: Any) -> Any:
    """NaN/inf -> None so the JSON is strict (readable by any parser)."""
    if isinstance(o, float) and not np.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_finite(v) for v in o]
    return o
