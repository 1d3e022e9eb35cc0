"""Optuna multi-objective search (content NDCG@k, engagement metric) over the label transform (alpha, beta,
blend weight) and a few XGBoost parameters.

- Storage is an Optuna RDB (sqlite by default), so a killed study resumes: `n_trials` is the target number
  of finished trials, and a re-run only adds the missing ones.
- Trials are scored on a tuning split of the *training* queries (grouped by query), never on test queries.
- Each trial is a nested MLflow run under one parent run that also holds the Pareto plot.
- Operating point rule (stated, default tolerance 1%): among finished trials whose engagement is at least
  (1 - tolerance) x the engagement of the engagement-only model (blend weight 0, default model parameters,
  same splits) and whose content NDCG on cold queries (engagement features absent) is at least the
  content-only model's (content labels, no engagement features, same splits), take the one with the best
  content NDCG. If none meets both, the cold rule is kept and the engagement floor dropped (a champion that
  ranks new queries worse than a model without engagement is not an operating point); failing that, the
  trial with the best engagement. Either way `constraint_met=False`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .rankers import split_frame
from .train import content_only_config, evaluate_ranker, feature_columns, fit_ranker
from .train_config import TrainConfig, TuneConfig, TunedParams


class TuningError(ValueError):
    """Bad tuning input; the message names the field and the fix."""


@dataclass
class TuneResult:
    study: Any
    trials: pd.DataFrame
    baseline: dict[str, float]
    operating_point: dict[str, Any]
    tuned: TunedParams
    best_config: TrainConfig
    plot_path: Path | None
    parent_run_id: str | None


def trial_config(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """A copy of `base` with a trial's parameters applied."""
    d = base.model_dump()
    for k in ("alpha", "beta", "blend_weight"):
        if k in params:
            d["target"][k] = params[k]
    for k in ("learning_rate", "max_depth", "min_child_weight"):
        if k in params:
            d["model"][k] = params[k]
    return TrainConfig.model_validate(d)


def _score(cfg: TrainConfig, fit_part: pd.DataFrame, tune_part: pd.DataFrame, feats: list[str]) -> dict[str, float]:
    model = fit_ranker(fit_part, cfg, feats)
    summary, _ = evaluate_ranker(model, tune_part, cfg)
    content, eng = summary.get(f"ndcg@{cfg.k}", np.nan), summary.get(cfg.engagement_metric, np.nan)
    if not (np.isfinite(content) and np.isfinite(eng)):
        raise TuningError("tuning split gives no "
                          f"{'content NDCG' if not np.isfinite(content) else cfg.engagement_metric}."
                          f" Fix: the frame needs '{cfg.columns.grade}' and the held-out engagement columns "
                          "for the tuning queries.")
    return summary


def _storage(url: str):
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return url


def pareto_mask(content: np.ndarray, engagement: np.ndarray) -> np.ndarray:
    """True for points no other point beats on both objectives (maximize both)."""
    c, e = np.asarray(content), np.asarray(engagement)
    keep = np.ones(len(c), bool)
    for i in range(len(c)):
        dom = (c >= c[i]) & (e >= e[i]) & ((c > c[i]) | (e > e[i]))
        keep[i] = not dom.any()
    return keep


def choose_operating_point(trials: pd.DataFrame, baseline_engagement: float, tolerance: float = 0.01,
                           cold_floor: float | None = None) -> dict[str, Any]:
    """Best content with engagement >= (1 - tolerance) * baseline and cold content >= `cold_floor` (when
    given; trials need a `cold` column); see the module docstring for the fallbacks."""
    if trials.empty:
        raise TuningError("no finished trials. Fix: run at least one trial (n_trials >= 1).")
    floor = (1 - tolerance) * baseline_engagement
    eng_ok = trials["engagement"] >= floor
    cold_ok = trials["cold"] >= cold_floor if cold_floor is not None else pd.Series(True, index=trials.index)
    by_content = ["content", "engagement", "number"]
    met = bool((eng_ok & cold_ok).any())
    if met:
        row = trials[eng_ok & cold_ok].sort_values(by_content, ascending=[False, False, True]).iloc[0]
    elif cold_floor is not None and cold_ok.any():
        row = trials[cold_ok].sort_values(by_content, ascending=[False, False, True]).iloc[0]
    else:
        row = trials.sort_values(["engagement", "content", "number"], ascending=[False, False, True]).iloc[0]
    rule = f"max content NDCG s.t. engagement >= (1 - {tolerance}) x engagement-only model"
    out = {"number": int(row["number"]), "content": float(row["content"]), "engagement": float(row["engagement"]),
           "params": {k[len("params_"):]: (row[k].item() if hasattr(row[k], "item") else row[k])
                      for k in trials.columns if k.startswith("params_")},
           "constraint_met": met, "engagement_floor": float(floor),
           "rule": rule + (" and cold content NDCG >= content-only model" if cold_floor is not None else "")}
    if cold_floor is not None:
        out.update(cold=float(row["cold"]), cold_floor=float(cold_floor))
    return out


def pareto_figure(trials: pd.DataFrame, baseline: dict[str, float], op: dict[str, Any], content_name: str,
                  engagement_name: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    p = trials[trials["pareto"]].sort_values("content")
    ax.scatter(trials["content"], trials["engagement"], c="lightgray", label="trials")
    ax.plot(p["content"], p["engagement"], "o-", c="tab:blue", label="Pareto front")
    ax.scatter([baseline["content"]], [baseline["engagement"]], marker="s", c="tab:red", label="engagement-only")
    ax.axhline(op["engagement_floor"], ls="--", c="tab:red", lw=0.8, label="engagement floor")
    ax.scatter([op["content"]], [op["engagement"]], marker="*", s=250, c="gold", edgecolors="k",
               label=f"operating point (#{op['number']})")
    ax.set_xlabel(content_name)
    ax.set_ylabel(engagement_name)
    ax.legend(fontsize=8)
    ax.set_title("content vs engagement")
    fig.tight_layout()
    return fig


def _sampler(cfg: TuneConfig, seed: int):
    import optuna

    if cfg.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


@dataclass
class _Objectives:
    """What every trial is scored on, fixed for the whole study so that trials (and a resumed study's old and
    new trials) are comparable: one fit/tune split of the training queries, one feature list, two metrics."""

    train_cfg: TrainConfig
    fit_part: pd.DataFrame
    tune_part: pd.DataFrame
    feats: list[str]
    content: str
    engagement: str

    def score(self, cfg: TrainConfig) -> dict[str, float]:
        return _score(cfg, self.fit_part, self.tune_part, self.feats)

    def values(self, summary: dict[str, float]) -> tuple[float, float]:
        return float(summary[self.content]), float(summary[self.engagement])


def _objectives(frame: pd.DataFrame, train_cfg: TrainConfig, tune_cfg: TuneConfig) -> _Objectives:
    fit_part, tune_part = split_frame(frame, train_cfg.columns.query_id,
                                      [1 - tune_cfg.tuning_fraction, tune_cfg.tuning_fraction], train_cfg.seed)
    return _Objectives(train_cfg, fit_part, tune_part, feature_columns(fit_part, train_cfg),
                       f"ndcg@{train_cfg.k}", train_cfg.engagement_metric)


def _open_study(tune_cfg: TuneConfig, seed: int, fingerprint: str, objectives: list[str]):
    """Create or resume the study; refuse to resume on another frame, whose trials would not be comparable."""
    import optuna

    study = optuna.create_study(study_name=tune_cfg.study_name, storage=_storage(tune_cfg.storage),
                                directions=["maximize", "maximize"], load_if_exists=True,
                                sampler=_sampler(tune_cfg, seed))
    prev_fp = study.user_attrs.get("frame_fingerprint")
    if prev_fp is not None and prev_fp != fingerprint:
        raise TuningError(f"study {tune_cfg.study_name!r} was run on a different training frame "
                          f"({prev_fp} != {fingerprint}); continuing would mix results. Fix: use a new study_name.")
    study.set_user_attr("frame_fingerprint", fingerprint)
    study.set_user_attr("objectives", objectives)
    return study


def _baseline(study, obj: _Objectives) -> dict[str, float]:
    """The engagement-only model's scores and the content-only model's cold content NDCG, kept in the study
    so a resumed run keeps the same floors."""
    if "baseline" in study.user_attrs:
        return study.user_attrs["baseline"]
    s = obj.score(trial_config(obj.train_cfg, {"blend_weight": 0.0}))
    baseline = {"content": s[obj.content], "engagement": s[obj.engagement]}
    content_only = content_only_config(obj.train_cfg)
    c = _score(content_only, obj.fit_part, obj.tune_part, feature_columns(obj.fit_part, content_only))
    baseline["content_only_cold"] = c.get(f"{obj.content}/cold", c[obj.content])
    study.set_user_attr("baseline", baseline)
    return baseline


def _start_parent_run(tune_cfg: TuneConfig, train_cfg: TrainConfig, fingerprint: str, engagement: str,
                      baseline: dict[str, float]):
    """One parent run per `tune` call, so its trials nest under it and the Pareto plot sits with them."""
    import mlflow

    from .tracking import log_config, log_metrics, setup_tracking

    if not mlflow.tracking.is_tracking_uri_set():
        setup_tracking()  # the default sqlite store, never MLflow's implicit ./mlruns file store
    parent = mlflow.start_run(run_name=f"tune:{tune_cfg.study_name}")
    log_config(tune_cfg, "tune_config.json")
    log_config(train_cfg, "train_config.json")
    mlflow.set_tags({"train_fingerprint": fingerprint, "optuna_study": tune_cfg.study_name,
                     "engagement_metric": engagement})
    log_metrics({"baseline_content": baseline["content"], "baseline_engagement": baseline["engagement"],
                 "baseline_content_only_cold": baseline.get("content_only_cold", float("nan"))})
    return parent


def _suggest(trial, t: TuneConfig) -> dict[str, Any]:
    # the order of the suggest calls is part of what the seeded sampler reproduces: keep it
    params = {"alpha": trial.suggest_float("alpha", *t.alpha_range, log=True),
              "beta": trial.suggest_float("beta", *t.beta_range),
              "blend_weight": trial.suggest_float("blend_weight", *t.blend_weight_range)}
    if t.tune_model_params:
        params["learning_rate"] = trial.suggest_float("learning_rate", *t.learning_rate_range, log=True)
        params["max_depth"] = trial.suggest_int("max_depth", *t.max_depth_range)
        params["min_child_weight"] = trial.suggest_float("min_child_weight", *t.min_child_weight_range, log=True)
    return params


def _log_trial(number: int, params: dict[str, Any], summary: dict[str, float]) -> None:
    import mlflow

    from .tracking import log_metrics

    with mlflow.start_run(run_name=f"trial-{number}", nested=True):
        mlflow.log_params({**params, "trial": number})
        log_metrics(summary)


def _objective(obj: _Objectives, t: TuneConfig, tracked: bool):
    def objective(trial) -> tuple[float, float]:
        params = _suggest(trial, t)
        s = obj.score(trial_config(obj.train_cfg, params))
        for name, v in s.items():
            if np.isfinite(v):
                trial.set_user_attr(name, float(v))
        if tracked and t.log_trials:
            _log_trial(trial.number, params, s)
        return obj.values(s)

    return objective


def _current_settings(train_cfg: TrainConfig, t: TuneConfig) -> dict[str, Any]:
    """The configured values (clipped into the search ranges): tried first, so the search starts from what
    the team runs today and can only report an operating point at least as well informed."""
    d = train_cfg.target
    first = {"alpha": float(np.clip(d.alpha or 10.0, *t.alpha_range)),
             "beta": float(np.clip(d.beta, *t.beta_range)),
             "blend_weight": float(np.clip(d.blend_weight, *t.blend_weight_range))}
    if t.tune_model_params:
        m = train_cfg.model
        first.update(learning_rate=float(np.clip(m.learning_rate, *t.learning_rate_range)),
                     max_depth=int(np.clip(m.max_depth, *t.max_depth_range)),
                     min_child_weight=float(np.clip(m.min_child_weight, *t.min_child_weight_range)))
    return first


def _complete(study) -> list:
    import optuna

    return [tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE]


def _run_trials(study, objective, train_cfg: TrainConfig, t: TuneConfig) -> None:
    """Top the study up to `n_trials` finished trials (a killed run resumes, a finished one adds nothing)."""
    from tqdm.auto import tqdm

    todo = max(0, t.n_trials - len(_complete(study)))
    if not study.trials:
        study.enqueue_trial(_current_settings(train_cfg, t))
    if todo:
        with tqdm(total=todo, desc="optuna trials", disable=todo < 3) as bar:
            study.optimize(objective, n_trials=todo, callbacks=[lambda st, tr: bar.update(1)])


def _trials_frame(study) -> pd.DataFrame:
    content = study.user_attrs["objectives"][0]
    rows = [{"number": tr.number, "content": tr.values[0], "engagement": tr.values[1],
             "cold": tr.user_attrs.get(f"{content}/cold", np.nan),
             **{f"params_{p}": v for p, v in tr.params.items()}} for tr in _complete(study)]
    trials = pd.DataFrame(rows)
    trials["pareto"] = pareto_mask(trials["content"].to_numpy(), trials["engagement"].to_numpy())
    return trials


def _publish(fig, trials: pd.DataFrame, op: dict[str, Any], out_dir: str | Path | None,
             tracked: bool) -> Path | None:
    """Write the plot and the trial table to `out_dir` and/or the parent run; returns the plot's path."""
    plot_path = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        plot_path = out / "pareto.png"
        fig.savefig(plot_path, dpi=120)
        trials.to_csv(out / "trials.csv", index=False)
    if tracked:
        import mlflow

        from .tracking import log_metrics

        mlflow.log_figure(fig, "pareto.png")
        mlflow.log_dict(trials.to_dict(orient="records"), "trials.json")
        mlflow.log_dict(dict(op), "operating_point.json")
        mlflow.log_params({f"op.{p}": v for p, v in op["params"].items()})
        log_metrics({"op_content": op["content"], "op_engagement": op["engagement"],
                     "op_constraint_met": float(op["constraint_met"]), "n_trials": float(len(trials)),
                     "op_content_cold": op.get("cold", float("nan"))})
    return plot_path


def tune(frame: pd.DataFrame, train_cfg: TrainConfig | None = None, tune_cfg: TuneConfig | None = None,
         track: bool = True, out_dir: str | Path | None = None) -> TuneResult:
    """Run (or resume) the study on the training frame; see the module docstring for the rules."""
    import optuna

    from .tracking import frame_fingerprint

    train_cfg, tune_cfg = train_cfg or TrainConfig(), tune_cfg or TuneConfig()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    obj = _objectives(frame, train_cfg, tune_cfg)
    fp = frame_fingerprint(frame)
    study = _open_study(tune_cfg, train_cfg.seed, fp, [obj.content, obj.engagement])
    baseline = _baseline(study, obj)
    parent = _start_parent_run(tune_cfg, train_cfg, fp, obj.engagement, baseline) if track else None
    try:
        _run_trials(study, _objective(obj, tune_cfg, tracked=parent is not None), train_cfg, tune_cfg)
        trials = _trials_frame(study)
        op = choose_operating_point(trials, baseline["engagement"], tune_cfg.engagement_tolerance,
                                    baseline.get("content_only_cold"))
        op["baseline"] = baseline
        best_cfg = trial_config(train_cfg, op["params"])
        tuned = TunedParams(alpha=best_cfg.target.alpha or 10.0, beta=best_cfg.target.beta,
                            blend_weight=best_cfg.target.blend_weight)
        fig = pareto_figure(trials, baseline, op, obj.content, obj.engagement)
        plot_path = _publish(fig, trials, op, out_dir, tracked=parent is not None)
        import matplotlib.pyplot as plt  # after pareto_figure, which picks the headless backend first

        plt.close(fig)
        return TuneResult(study, trials, baseline, op, tuned, best_cfg, plot_path,
                          parent.info.run_id if parent is not None else None)
    finally:
        if parent is not None:
            import mlflow

            mlflow.end_run()


logging.getLogger("optuna").setLevel(logging.WARNING)
