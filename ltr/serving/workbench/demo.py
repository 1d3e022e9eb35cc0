"""A small, real run to open the workbench on, built the fastest way the project can (~1.5 min on 2 cores):
`ltr run` on a tiny built-in world with a tiny random BERT as cross-encoder, then `ltr run` again into the
same directory with fewer trees, which registers a second version; the aliases are then set to v1
@champion and v2 @challenger, so the page has judged queries, a champion, a challenger and a Pareto front.

    python -m ltr.serving.workbench.demo /tmp/wb-demo      # prints the run dir and the model URIs

The tests and bench/bench_workbench.py build theirs with `build_demo_run`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

BASE = {"seed": 3,
        "dataset": {"world": {"n_products": 150, "n_queries": 20, "n_candidates": 10, "sessions": 400, "days": 14,
                              "judged_fraction": 0.5}},
        "cross_encoder": {"epochs": 1, "max_length": 32},
        "train": {"model": {"n_jobs": 1, "n_estimators": 100}},
        "tune": {"n_trials": 4, "study_name": "ltr-workbench"},
        "evaluate": {"enabled": False}}


def _config(root: Path, name: str, model_name: str, world: dict | None, n_trials: int, n_estimators: int) -> Path:
    import yaml

    cfg = json.loads(json.dumps(BASE))
    cfg["dataset"]["world"].update(world or {})
    cfg["cross_encoder"]["base_model"] = str(root / "tiny_ce")
    cfg["tune"].update(n_trials=n_trials, storage=f"sqlite:///{root}/optuna.db")
    cfg["tracking"] = {"uri": f"sqlite:///{root}/mlflow.db", "experiment": "ltr-workbench", "model_name": model_name}
    cfg["train"]["model"]["n_estimators"] = n_estimators
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _ltr_run(config: Path, out: Path) -> dict[str, Any]:
    """What `ltr run --config CONFIG --out OUT --skip-experiments` does, without the CLI above this floor."""
    from ltr.data.config import load_config
    from ltr.pipeline import run_all
    from ltr.run_config import RunConfig

    run_all(load_config(config, RunConfig), out, skip_experiments=True)
    return json.loads((out / "reports" / "summary.json").read_text())


def build_demo_run(root: str | Path, model_name: str = "ltr-workbench-demo", world: dict | None = None,
                   n_trials: int = 4) -> dict[str, Any]:
    """{"run_dir", "tracking", "champion", "challenger", "name"} of a fresh run under `root`."""
    from mlflow import MlflowClient

    from ltr import tracking as T
    from ltr.serving.demo import save_encoder

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    save_encoder(root / "tiny_ce", tiny=True)
    run, tracking = root / "run", f"sqlite:///{root}/mlflow.db"
    with T.using_tracking(tracking, "ltr-workbench"):
        _ltr_run(_config(root, "v1", model_name, world, n_trials, 100), run)
        _ltr_run(_config(root, "v2", model_name, world, n_trials, 8), run)  # same data and labels: trains only
        client = MlflowClient()
        client.set_registered_model_alias(model_name, T.CHAMPION, "1")
        client.set_registered_model_alias(model_name, "challenger", "2")
    return {"run_dir": run, "tracking": tracking, "name": model_name,
            "champion": f"models:/{model_name}@{T.CHAMPION}", "challenger": f"models:/{model_name}@challenger"}


if __name__ == "__main__":
    print(json.dumps({k: str(v) for k, v in build_demo_run(sys.argv[1] if len(sys.argv) > 1 else "wb-demo").items()},
                     indent=2))
