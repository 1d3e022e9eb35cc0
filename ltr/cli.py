"""The thin `ltr` CLI: parse options and a validated YAML config, call the stages, print summaries.

Nothing imports this module; every command is a few lines over a stage function that a notebook can
call directly. Heavy imports happen inside commands so `ltr --help` stays instant.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

app = typer.Typer(help="LLM-labelled learning-to-rank for product search.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
features_app = typer.Typer(help="Build feature tables and run the Feast store.", no_args_is_help=True)
label_app = typer.Typer(help="Grade (query, product) pairs with an LLM labeler; calibrate against humans.",
                        invoke_without_command=True)
app.add_typer(features_app, name="features")
app.add_typer(label_app, name="label")

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (see configs/default.yaml).")
SeedOpt = typer.Option(None, "--seed", help="Random seed (overrides the config's seed).")


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2)


def _known_errors() -> tuple[type[BaseException], ...]:
    from ltr.configio import ConfigError
    from ltr.data.dataset import DatasetError
    from ltr.data.schemas import SchemaError
    return (ConfigError, DatasetError, SchemaError, FileNotFoundError)


def _config(path: Optional[Path], seed: Optional[int] = None, **overrides):
    from ltr.config import RunConfig
    from ltr.configio import load_config
    ov = dict(overrides)
    if seed is not None:
        ov["seed"] = seed
    return load_config(path, RunConfig, ov)


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _guard(fn):
    """Turn known input errors into one clear line and exit code 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except _known_errors() as e:
            _fail(str(e))
    return wrapper


# --- data -----------------------------------------------------------------------------------------

@app.command()
@_guard
def world(out: Path = typer.Option(..., "--out", help="Directory to write the dataset to."),
          seed: Optional[int] = SeedOpt, config: Optional[Path] = ConfigOpt) -> None:
    """Generate the built-in shop world (catalog, queries, candidates, truth, judgments, engagement)."""
    from ltr.data.world import generate_world
    cfg = _config(config, seed)
    summary = generate_world(out, seed=cfg.seed, cfg=cfg.dataset.world)
    _echo_json(summary)


@app.command("load-esci")
@_guard
def load_esci_cmd(src: Path = typer.Option(..., "--src", help="esci-data folder or a shared/data/esci-like folder."),
                  out: Path = typer.Option(..., "--out", help="Dataset directory to write."),
                  locale: str = typer.Option("us", help="Product locale (original esci-data only)."),
                  max_queries: Optional[int] = typer.Option(None, help="Keep only the first N queries.")) -> None:
    """Convert ESCI (original parquet files or the shared sample layout) into a dataset directory."""
    from ltr.data.esci import load_esci
    _echo_json(load_esci(src, out, locale=locale, max_queries=max_queries))


@app.command("simulate-engagement")
@_guard
def simulate_engagement_cmd(dataset: Path = typer.Option(..., "--dataset", help="Dataset directory."),
                            seed: int = typer.Option(7, "--seed"),
                            days: int = typer.Option(28, help="Days of simulated traffic.")) -> None:
    """Add simulated impressions (position-biased click model) to a real catalog without logs."""
    from ltr.data.engagement import simulate_engagement
    _echo_json(simulate_engagement(dataset, seed=seed, days=days))


def main() -> None:  # console-script entry point
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
