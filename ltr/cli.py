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

from ltr.tracking import DEFAULT_TRACKING_URI

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
labels_app = typer.Typer(help="Human corrections of grades (the relevance workbench, labels/human.py): export, "
                         "history.", no_args_is_help=True)
app.add_typer(labels_app, name="labels")

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (see configs/default.yaml).")
SeedOpt = typer.Option(None, "--seed", help="Random seed (overrides the config's seed).")
TrackingOpt = typer.Option(None, "--tracking-uri", help="MLflow store holding the model (default: "
                           f"$MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI}).")


@app.callback()
def _main(verbose: int = typer.Option(0, "--verbose", "-v", count=True, envvar="LTR_VERBOSE",
                                      help="Also show other libraries' logs and warnings: -v INFO (and DEBUG "
                                      "from ours), -vv DEBUG from all. Default: our lines and progress bars, "
                                      "other libraries' WARNINGs.")) -> None:
    from ltr.logs import configure
    configure(verbose)


def _fail(msg: str) -> None:
    msg = " ".join(str(msg).split())  # one line, whatever the library message looked like
    typer.secho(f"error: {msg}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2)


def _known_errors() -> tuple[type[BaseException], ...]:
    from ltr.data.config import ConfigError
    from ltr.data.dataset import DatasetError
    from ltr.data.schemas import SchemaError
    from ltr.tracking import TrackingError
    return (ConfigError, DatasetError, SchemaError, TrackingError, FileNotFoundError)


def _config(path: Optional[Path], seed: Optional[int] = None, **overrides):
    """The run config, checked before any command writes anything.

    Tracking URI: a `tracking.uri` written in the config file wins, else $MLFLOW_TRACKING_URI, else
    the default: a default never overrides the environment (`ltr.tracking.resolve_tracking_uri`)."""
    from ltr.data.config import ConfigError, load_config
    from ltr.run_config import RunConfig
    from ltr.tracking import resolve_tracking_uri
    ov = dict(overrides)
    if seed is not None:
        ov["seed"] = seed
    cfg = load_config(path, RunConfig, ov)
    if cfg.seed < 0:
        where = f"{path}: " if path is not None and seed is None else ""
        raise ConfigError(f"{where}seed {cfg.seed} is negative. Fix: pass --seed 0 or more "
                          "(or set seed: N >= 0 in the config).")
    if "uri" not in cfg.tracking.model_fields_set:
        cfg.tracking.uri = resolve_tracking_uri(None)
    return cfg


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
        except ValueError as e:  # our own input errors: one line, exit 2; anything else keeps its traceback
            if type(e).__module__.split(".")[0] in ("ltr", "labels", "features") and type(e) is not ValueError:
                _fail(f"{type(e).__name__}: {e}")
            raise
    return wrapper


# --- data -----------------------------------------------------------------------------------------

@app.command()
@_guard
def world(out: Path = typer.Option(..., "--out", help="Directory to write the dataset to."),
          seed: Optional[int] = SeedOpt, config: Optional[Path] = ConfigOpt) -> None:
    """Generate the built-in shop world (catalog, queries, candidates, truth, judgments, engagement)."""
    from ltr.sim.world import generate_world
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
                            days: int = typer.Option(28, help="Days of simulated traffic."),
                            relevance: str = typer.Option("lexical", help="what simulated shoppers find relevant: "
                                                          "'lexical' (word overlap, independent of the judgments) "
                                                          "or 'judgments' (leaks them into engagement features)")
                            ) -> None:
    """Add simulated impressions (position-biased click model) to a real catalog without logs."""
    from ltr.sim.sessions import simulate_engagement
    _echo_json(simulate_engagement(dataset, seed=seed, days=days, relevance=relevance))


@app.command("ingest-ubi")
@_guard
def ingest_ubi_cmd(dataset: Path = typer.Option(..., "--dataset", help="Dataset directory (its catalog decides "
                                                "which logged products are known)."),
                   src: list[Path] = typer.Option(..., "--src", help="UBI export: a file or folder of OpenSearch "
                                                  "bulk NDJSON, plain NDJSON or parquet (repeatable)."),
                   action: list[str] = typer.Option([], "--action", help="NAME=click|add_to_cart|purchase "
                                                    "(repeatable; replaces the default mapping)."),
                   impression_action: list[str] = typer.Option([], "--impression-action",
                                                               help="action_name(s) that are impressions "
                                                                    "(default: impression)."),
                   overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing impressions."),
                   append: bool = typer.Option(False, "--append", help="Add these logs to the existing "
                                               "impressions (a new day of a shop's logs)."),
                   simulated: bool = typer.Option(False, "--simulated", help="The logs were generated, not "
                                                  "real shoppers: reports will say simulated.")) -> None:
    """Turn UBI logs (ubi_queries + ubi_events) into the dataset's impressions; report what could not be used."""
    from pydantic import ValidationError

    from ltr.data.config import ConfigError, format_validation_error
    from ltr.data.ubi import UbiConfig, ingest_ubi
    ov: dict = {}
    bad = [a for a in action if a.count("=") != 1 or not all(x.strip() for x in a.split("="))]
    if bad:
        raise ConfigError(f"--action {bad[0]!r} is not NAME=OUTCOME. Fix: e.g. --action checkout=purchase.")
    if action:
        ov["actions"] = dict(tuple(x.strip() for x in a.split("=")) for a in action)
    if impression_action:
        ov["impression_actions"] = list(impression_action)
    try:
        cfg = UbiConfig.model_validate(ov)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, UbiConfig, "ingest-ubi --action/--impression-action")) from None
    _echo_json(ingest_ubi(src, dataset, cfg, overwrite=overwrite, simulated=simulated, append=append))


# --- labels ----------------------------------------------------------------------------------------

@label_app.callback()
@_guard
def label(ctx: typer.Context,
          dataset: Optional[Path] = typer.Option(None, "--dataset", help="Dataset directory to grade."),
          out: Optional[Path] = typer.Option(None, "--out", help="labels parquet to write."),
          config: Optional[Path] = ConfigOpt, seed: Optional[int] = SeedOpt,
          backend: Optional[str] = typer.Option(None, help="grader | openai | causal_lm | cascade | imported"),
          max_dollars: Optional[float] = typer.Option(None, "--max-dollars",
                                                      help="Stop before spending more."),
          batch: bool = typer.Option(False, "--batch", help="Grade through the OpenAI Batch API (half price, "
                                     "within 24 h); a re-run resumes the batch recorded in the cache.")) -> None:
    """Grade every candidate pair of a dataset (cached, resumable, cost-accounted); write the labels table."""
    if ctx.invoked_subcommand is not None:
        return
    if dataset is None or out is None:
        _fail("`ltr label` needs --dataset DIR and --out FILE.parquet (or a subcommand: `ltr label calibrate`).")
    from labels.run import label_pairs
    cfg = _config(config, seed, **{"labels.backend": backend, "labels.max_dollars": max_dollars,
                                   "labels.batch.enabled": True if batch else None})
    from labels.backends.base import LabelerError
    try:
        _echo_json(label_pairs(dataset, out, cfg.labels))
    except LabelerError as e:  # the message names the pair, the cause and the fix; graded pairs stay cached
        _fail(str(e))


@label_app.command("calibrate")
@_guard
def label_calibrate(labels_path: Path = typer.Option(..., "--labels", help="labels parquet (ltr label --out)."),
                    dataset: Path = typer.Option(..., "--dataset", help="Dataset with human judgments."),
                    out: Optional[Path] = typer.Option(None, "--out",
                                                       help="Directory for the JSON + markdown report.")) -> None:
    """Agreement of LLM labels with human judgments: accuracy, quadratic kappa, Spearman, confusion matrix."""
    import pandas as pd

    from labels.calibration import calibrate
    from ltr.data import Dataset
    ds = Dataset.load(dataset)
    rep = calibrate(pd.read_parquet(labels_path), ds.judgments, out_dir=out or labels_path.parent,
                    name=labels_path.stem + ".calibration")
    typer.echo(rep.get("markdown", ""))
    _echo_json({k: rep[k] for k in ("n_pairs", "accuracy", "kappa_quadratic", "spearman") if k in rep})


# --- retrieval and mining (ltr/retrieval/) ---------------------------------------------------------

@app.command("retrieve")
@_guard
def retrieve_cmd(dataset: Path = typer.Option(..., "--dataset", help="Dataset directory: products.parquet and "
                                              "queries.parquet (or judgments.parquet); no candidates needed."),
                 out: Path = typer.Option(..., "--out", help="retrieved.parquet to write (rank metadata)."),
                 k: Optional[int] = typer.Option(None, "--k", help="Top-k of each retriever (default 50)."),
                 champion: Optional[str] = typer.Option(None, "--champion", help="Registered model that re-ranks "
                                                        "the union, e.g. models:/ltr-ranker@champion."),
                 bienc: Optional[Path] = typer.Option(None, "--bienc", help="Bi-encoder model dir (default: the "
                                                      "zero-shot all-MiniLM-L6-v2)."),
                 config: Optional[Path] = ConfigOpt, tracking_uri: Optional[str] = TrackingOpt) -> None:
    """BM25 and the bi-encoder over the whole catalog (the champion re-ranks their union): every pair's ranks."""
    from ltr.retrieval.commands import retrieve_file
    from ltr.tracking import resolve_tracking_uri
    cfg = _config(config, **{"retrieval.k": k, "retrieval.champion": champion,
                             "retrieval.bienc_path": str(bienc) if bienc else None})
    uri = resolve_tracking_uri(tracking_uri) if tracking_uri else cfg.tracking.uri
    _echo_json(retrieve_file(dataset, out, cfg.retrieval, tracking_uri=uri))


def _weights(pairs: list[str]) -> Optional[dict]:
    """--weight LEVEL=W options as a dict (None: the config's weights)."""
    from ltr.data.config import ConfigError
    out = {}
    for w in pairs:
        name, _, val = w.partition("=")
        try:
            out[name.strip()] = float(val)
        except ValueError:
            raise ConfigError(f"--weight {w!r} is not LEVEL=NUMBER. Fix: e.g. --weight hard_negative=0.3.") from None
    return out or None


@app.command("mine")
@_guard
def mine_cmd(retrieved: Path = typer.Option(..., "--retrieved", help="retrieved.parquet from `ltr retrieve`."),
             out: Path = typer.Option(..., "--out", help="mined.parquet to write: every pair's level and whether "
                                      "the budget chose it (`selected`)."),
             budget: Optional[int] = typer.Option(None, "--budget", help="Pairs to label (default: 30 per query)."),
             weight: list[str] = typer.Option([], "--weight", help="LEVEL=W, repeatable; replaces the default "
                                              "weights (levels: easy_positive, easy_negative, medium, "
                                              "hard_positive, hard_negative)."),
             top: Optional[int] = typer.Option(None, "--top", help="A rank <= top counts as 'at the top' "
                                               "(default 10)."),
             dataset: Optional[Path] = typer.Option(None, "--dataset", help="The dataset the pairs were retrieved "
                                                    "from (needed with --dataset-out)."),
             dataset_out: Optional[Path] = typer.Option(None, "--dataset-out", help="Also write a dataset dir "
                                                        "whose candidates are the chosen pairs with their level "
                                                        "(then `ltr label --dataset` it)."),
             seed: Optional[int] = SeedOpt, config: Optional[Path] = ConfigOpt) -> None:
    """Sort retrieved pairs into difficulty levels by retriever agreement; choose a label budget across levels."""
    from ltr.retrieval.commands import mine_file
    cfg = _config(config, seed, **{"mining.budget": budget, "mining.weights": _weights(weight), "mining.top": top})
    _echo_json(mine_file(retrieved, out, cfg.mining, seed=cfg.seed, dataset=dataset, dataset_out=dataset_out))


# --- features --------------------------------------------------------------------------------------

@features_app.command("build")
@_guard
def features_build(dataset: Path = typer.Option(..., "--dataset"),
                   out: Path = typer.Option(..., "--out", help="Features directory (parquet sources + Feast repo)."),
                   labels_path: Optional[Path] = typer.Option(None, "--labels", help="LLM labels parquet to publish."),
                   ce_model: Optional[Path] = typer.Option(None, "--ce-model", help="Cross-encoder dir for ce_score."),
                   content_scores: Optional[list[Path]] = typer.Option(
                       None, "--content-scores", help="Precomputed bienc_cos / ce_score parquet (repeatable), e.g. "
                       "RUN/cross_encoder/bienc_scores.parquet: reused instead of embedding the catalog again."),
                   config: Optional[Path] = ConfigOpt) -> None:
    """Compute lexical, product, engagement, content (bi-/cross-encoder) and label tables."""
    from features.biencoder import default_biencoder
    from features.biencoder import score_pairs as bienc
    from features.build import build_features, read_content_scores
    from features.query_encoder import export_query_encoder
    from ltr.data import Dataset
    from ltr.data.embedding_cache import default_cache_dir
    cfg = _config(config)
    ds = Dataset.load(dataset)
    content = (read_content_scores(content_scores) if content_scores else
               bienc(ds.candidates, ds.products, ds.queries, progress=True, cache_dir=default_cache_dir()))
    export_query_encoder(default_biencoder(), default_cache_dir())  # how `ltr serve` embeds a new query
    if ce_model is not None:
        from features.crossencoder import CrossEncoderScorer, score_pairs
        ce = score_pairs(ds.candidates, ds.products, ds.queries, CrossEncoderScorer(ce_model), progress=True)
        content = content.drop(columns=["ce_score"], errors="ignore").merge(ce, on=["query_id", "product_id"])
    _echo_json(build_features(dataset, out, cfg.features, ce_scores=content, labels=labels_path))


@features_app.command("apply")
@_guard
def features_apply(features_dir: Path = typer.Option(..., "--features"), config: Optional[Path] = ConfigOpt) -> None:
    """Register entities, feature views, the label view and feature services with Feast."""
    from features.store import LtrStore
    LtrStore(features_dir, _config(config).features).apply()
    typer.echo(f"applied feast repo for {features_dir}")


@features_app.command("materialize")
@_guard
def features_materialize(features_dir: Path = typer.Option(..., "--features"), config: Optional[Path] = ConfigOpt,
                         feast_default: bool = typer.Option(False, "--feast-default",
                                                            help="Use Feast's own (slower) materialize.")) -> None:
    """Load the latest feature values into the online store (SQLite by default, Redis optional)."""
    from features.store import LtrStore
    store = LtrStore(features_dir, _config(config).features)
    if feast_default:
        store.materialize()
        typer.echo("materialized with feast")
    else:
        _echo_json(store.bulk_materialize())


# --- training, evaluation, serving ------------------------------------------------------------------

@app.command()
@_guard
def run(config: Optional[Path] = ConfigOpt, out: Path = typer.Option(Path("runs/default"), "--out"),
        seed: Optional[int] = SeedOpt,
        skip_experiments: bool = typer.Option(False, help="Stop after train/tune/register/evaluate."),
        skip_evaluate: bool = typer.Option(False, help="Leave out the champion's check on a never-seen judged "
                                           "dataset (evaluate.enabled: false).")) -> None:
    """The main job: world -> labels -> features -> train -> tune -> experiments -> register -> evaluate."""
    from ltr.pipeline import run_all
    from ltr.report import summary_table
    cfg = _config(config, seed)
    if skip_evaluate:
        cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"enabled": False})})
    s = run_all(cfg, out, skip_experiments=skip_experiments)
    typer.echo("\n" + summary_table(s, json_path=str(out / "reports" / "summary.json")))


@app.command()
@_guard
def experiments(config: Optional[Path] = ConfigOpt, out: Path = typer.Option(Path("runs/experiments"), "--out"),
                seed: Optional[int] = SeedOpt) -> None:
    """The paper's experiments (arms a-e, >= 3 seeds): writes OUT/reports/experiments.{md,json}."""
    from ltr.pipeline import run_all
    cfg = _config(config, seed)
    run_all(cfg, out)
    typer.echo((out / "reports" / "experiments.md").read_text())


@app.command()
@_guard
def evaluate(dataset: Optional[Path] = typer.Option(None, "--dataset", help="Judged dataset dir (products + "
                                                    "judgments). Required unless --counterfactual."),
             model: str = typer.Option(..., "--model", help="e.g. models:/ltr-ranker@champion"),
             out: Optional[Path] = typer.Option(None, "--out", help="JSON report to write (required unless "
                                                "--counterfactual)."),
             ce_model: Optional[Path] = typer.Option(None, "--ce-model", help="Cross-encoder dir for ce_score "
                                                     "(default: the one the registered model carries)."),
             tracking_uri: Optional[str] = TrackingOpt,
             counterfactual: bool = typer.Option(False, "--counterfactual", help="Instead: the model's clicks and "
                                                 "add-to-carts per search in the top 10, estimated from an "
                                                 "impression log (clipped IPS, SNIPS, direct model, doubly "
                                                 "robust; 95% bootstrap CIs) beside the logging ranker's."),
             logs: Optional[Path] = typer.Option(None, "--logs", help="Dataset dir with impressions.parquet for "
                                                 "--counterfactual (default: --dataset)."),
             features: Optional[Path] = typer.Option(None, "--features", help="With --counterfactual: a features "
                                                     "dir (`ltr features build`; a run's RUN/features) whose "
                                                     "online store gives the model its engagement features "
                                                     "(default: absent, NaN).")) -> None:
    """Score a judged dataset the model never saw: NDCG@10 (ESCI and exponential gains), Irrelevant@10."""
    from ltr.evaluate import evaluate_dataset
    from ltr.tracking import resolve_tracking_uri
    if counterfactual:
        from ltr.counterfactual.offline import counterfactual_report, summary_lines
        if logs is None and dataset is None:
            _fail("--counterfactual needs an impression log. Fix: pass --logs DATASET (a dataset dir with "
                  "impressions.parquet).")
        rep = counterfactual_report(logs or dataset, model, out, cross_encoder=ce_model, features_dir=features,
                                    tracking_uri=resolve_tracking_uri(tracking_uri))
        typer.echo("\n".join(summary_lines(rep)))
        return
    for value, name in ((dataset, "--dataset"), (out, "--out")):
        if value is None:
            _fail(f"Missing option '{name}'. Fix: pass {name} (it is optional only with --counterfactual).")
    rep = evaluate_dataset(dataset, model, out, ce_path=ce_model, tracking_uri=resolve_tracking_uri(tracking_uri))
    _echo_json({k: v for k, v in rep.items() if not isinstance(v, (dict, list))})


@app.command()
@_guard
def serve(model: str = typer.Option("models:/ltr-ranker@champion", "--model"),
          run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="`ltr run` output with dataset + "
                                                 "features (default: runs/default unless --products is given)."),
          products: Optional[Path] = typer.Option(None, "--products", help="Catalog to serve (dataset dir or "
                                                  "products.parquet) without a run; request-time features only."),
          host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8080),
          tracking_uri: Optional[str] = TrackingOpt,
          rerank_k: Optional[int] = typer.Option(None, "--rerank-k", help="Second phase: cross-encoder on the "
                                                 "top k (default: ServingConfig's)."),
          ce_deadline_ms: Optional[float] = typer.Option(None, "--ce-deadline-ms", help="Cross-encoder time per "
                                                         "request; pairs not scored by then stay missing."),
          ce_backend: Optional[str] = typer.Option(None, "--ce-backend", help="auto (int8 when the model carries "
                                                   "it), torch, torch-bf16, onnx or onnx-int8."),
          query_backend: Optional[str] = typer.Option(None, "--query-backend", help="How a new query is embedded: "
                                                      "auto (ONNX Runtime when `ltr features build` exported the "
                                                      "bi-encoder), torch or onnx."),
          reload_poll_s: Optional[float] = typer.Option(None, "--reload-poll-s", help="Seconds between checks of "
                                                        "the model alias in the registry (0: never reload)."),
          max_inflight: Optional[int] = typer.Option(None, "--max-inflight", help="Requests in progress at once; "
                                                     "503 beyond."),
          precompute_embeddings: bool = typer.Option(True, "--precompute-embeddings/--lazy-embeddings",
                                                     help="Have every product's bi-encoder embedding in memory "
                                                     "before the port opens (read from the embedding cache the "
                                                     "offline build filled; computed where absent)."),
          challenger: Optional[str] = typer.Option(None, "--challenger", help="A second model, e.g. "
                                                   "models:/ltr-ranker@challenger, team-draft interleaved with "
                                                   "--model on a share of requests (`ltr interleaving` reads "
                                                   "the outcome)."),
          interleave_share: Optional[float] = typer.Option(None, "--interleave-share", help="With --challenger: "
                                                           "the share of requests interleaved (default 0.5)."),
          token: Optional[str] = typer.Option(None, "--token", envvar="LTR_WORKBENCH_TOKEN", help="Allow grade "
                                              "corrections on /workbench with this token (sent by the page in the "
                                              "X-Workbench-Token header); without it the page is read-only.")) -> None:
    """Serve POST /v1/rank over HTTP with the registered model (and its cross-encoder) and Feast online features.
    Settings not given keep ltr.serving.config.ServingConfig's defaults (one place for them)."""
    from ltr.serving.app import _serving_config
    from ltr.serving.server import check_port
    from ltr.serving.server import serve as _serve
    from ltr.tracking import resolve_tracking_uri
    check_port(port)
    given = {"rerank_k": rerank_k, "ce_deadline_ms": ce_deadline_ms, "ce_backend": ce_backend,
             "query_backend": query_backend, "reload_poll_s": reload_poll_s, "max_inflight": max_inflight,
             "interleave_share": interleave_share}
    if interleave_share is not None and challenger is None:
        _fail("--interleave-share needs --challenger. Fix: pass --challenger models:/NAME@challenger.")
    cfg = _serving_config({k: v for k, v in given.items() if v is not None}, None)
    if run_dir is None and products is None:
        run_dir = Path("runs/default")
    _serve(model, run_dir=run_dir, products=products, host=host, port=port,
           tracking_uri=resolve_tracking_uri(tracking_uri), serving=cfg,
           precompute_embeddings=precompute_embeddings, challenger=challenger, workbench_token=token)


@app.command()
@_guard
def workbench(run_dir: Path = typer.Option(Path("runs/default"), "--run-dir", help="`ltr run` output to open."),
              model: Optional[str] = typer.Option(None, "--model", help="Default: the run's registered model."),
              challenger: str = typer.Option("auto", "--challenger", help="Right-hand model; 'auto': NAME@challenger "
                                             "when registered; 'none': the zero-shot baselines only."),
              host: str = typer.Option("127.0.0.1", "--host"), port: int = typer.Option(8090, "--port"),
              token: Optional[str] = typer.Option(None, "--token", envvar="LTR_WORKBENCH_TOKEN", help="Allow grade "
                                                  "corrections with this token ('generate': make one and print it)."),
              tracking_uri: Optional[str] = TrackingOpt) -> None:
    """The relevance workbench on a run, with the ranking service built in this process (docs/workbench.md)."""
    from ltr.serving.workbench.serve import open_workbench
    from ltr.tracking import resolve_tracking_uri
    open_workbench(run_dir, model=model, challenger=None if challenger == "none" else challenger, host=host,
                   port=port, token=token, tracking_uri=resolve_tracking_uri(tracking_uri))


@app.command()
@_guard
def explain(run_dir: Path = typer.Option(..., "--run-dir", help="`ltr run` output (catalog, Feast store)."),
            query: str = typer.Option(..., "--query", help="The search text; its candidates come from the run's "
                                      "dataset unless --product-ids is given."),
            product_ids: Optional[str] = typer.Option(None, "--product-ids", help="Comma-separated candidates."),
            model: str = typer.Option("models:/ltr-ranker@champion", "--model"),
            top: int = typer.Option(10, "--top", help="Results shown."),
            tracking_uri: Optional[str] = TrackingOpt) -> None:
    """Why each product ranks where it does: the served score taken apart into its features' exact
    contributions (TreeSHAP), as `/v1/rank` with "explain": true returns them."""
    from ltr.data.dataset import Dataset
    from ltr.data.schemas import query_id
    from ltr.serving.app import RankRequest, create_app, rank_request
    from ltr.serving.explain import table_lines
    from ltr.serving.server import run_dir_settings
    from ltr.tracking import resolve_tracking_uri
    settings = run_dir_settings(run_dir)
    settings.pop("log_dir")
    ds = Dataset.load(settings.get("products", run_dir / "dataset"))
    if product_ids is not None:
        ids = [p.strip() for p in product_ids.split(",") if p.strip()]
    else:
        ids = list(ds.candidates.loc[ds.candidates["query_id"] == query_id(query.strip()), "product_id"])
        if not ids:
            _fail(f"--query {query!r} is not one of the run's queries. Fix: pass --product-ids P1,P2,... to rank "
                  "those products for it.")
    app = create_app(model, tracking_uri=resolve_tracking_uri(tracking_uri), warm=False,
                     precompute_embeddings=False, serving={"reload_poll_s": 0}, **settings)
    body = rank_request(app.state.service, RankRequest(query=query, product_ids=ids, top_k=top, explain=True))
    if not isinstance(body, dict):
        _fail(json.loads(body.body)["detail"][0]["msg"])
    titles = ds.products.set_index("product_id")["title"].to_dict()
    typer.echo("\n".join(table_lines(body, titles)))
    app.state.service.close()


@app.command()
@_guard
def interleaving(logs: list[Path] = typer.Option(..., "--logs", help="UBI export(s) of the interleaved searches "
                                                 "(NDJSON / JSON / parquet, or a folder of them)."),
                 served_log: Optional[Path] = typer.Option(None, "--served-log", help="The service's served-feature "
                                                           "log dir: read each result's arm from it (default: "
                                                           "from the UBI impressions' event_attributes."
                                                           "interleaving.arm)."),
                 depth: int = typer.Option(10, "--depth", help="With --served-log: results shown per search."),
                 out: Optional[Path] = typer.Option(None, "--out", help="JSON report to write.")) -> None:
    """Which of champion and challenger shoppers preferred, from the clicks on interleaved searches: wins,
    losses, ties, the preference with a 95% bootstrap CI and a sign test."""
    from ltr.interleaving import interleaving_report, served_log_credits, summary_line, ubi_credits, write_report
    credits = served_log_credits(served_log, logs, depth) if served_log is not None else ubi_credits(logs)
    rep = interleaving_report(credits)
    if out is not None:
        write_report(rep, out)
    typer.echo(summary_line(rep))


@app.command()
@_guard
def promote(name: str = typer.Option("ltr-ranker", "--name", help="Registered model name."),
            version: str = typer.Option(..., "--version", help="The version to promote (e.g. the @challenger)."),
            interleaving_report: Optional[Path] = typer.Option(None, "--interleaving", help="JSON from `ltr "
                                                               "interleaving --out` of this version against "
                                                               "the champion."),
            max_engagement_drop: float = typer.Option(0.01, "--max-engagement-drop", help="Lowest challenger "
                                                      "clicks relative to the champion's, at 95%, that passes."),
            force: bool = typer.Option(False, "--force", help="Promote without evidence (recorded as a "
                                       "person's call)."),
            tracking_uri: Optional[str] = TrackingOpt) -> None:
    """Move @champion to a version held back as @challenger, when interleaving shows shoppers do not click
    less (ltr/promotion.py); the decision and its reason are kept on the version as tags."""
    from ltr import tracking as T
    from ltr.promotion import PromotionConfig, promote_on_interleaving
    if interleaving_report is None and not force:
        _fail("promote needs evidence. Fix: pass --interleaving REPORT.json (`ltr interleaving --out`), or "
              "--force to promote by hand.")
    report = json.loads(interleaving_report.read_text()) if interleaving_report is not None else {}
    if report and "rel_clicks_ci95" not in report:
        _fail(f"{interleaving_report}: not an `ltr interleaving` report (no rel_clicks_ci95). Fix: pass the "
              "file `ltr interleaving --out` wrote.")
    cfg = PromotionConfig(max_engagement_drop=max_engagement_drop)
    with T.using_tracking(T.resolve_tracking_uri(tracking_uri)):
        d = promote_on_interleaving(name, version, report, cfg, force=force)
    typer.echo(f"{name} v{version} -> @{d.alias}: {d.reason}")
    if not d.promote:
        raise typer.Exit(code=1)


# --- human corrections ------------------------------------------------------------------------------

RunDirOpt = typer.Option(..., "--run-dir", help="`ltr run` output dir; its corrections are in "
                         "RUN/labels/human.sqlite.")


def _store_path(run_dir: Path) -> Path:
    from labels.human import human_store_path
    if not run_dir.is_dir():
        _fail(f"run dir {run_dir} does not exist. Fix: pass the --out of an `ltr run`.")
    p = human_store_path(run_dir)
    if not p.exists():
        _fail(f"{run_dir} has no human corrections ({p} does not exist). Fix: correct a grade in the workbench "
              "first; the labeler's grades are in RUN/labels/labels.parquet.")
    return p


@labels_app.command("export")
@_guard
def export_cmd(run_dir: Path = RunDirOpt,
               human: bool = typer.Option(False, "--human", help="Export the human corrections (the only labels "
                                          "this command exports)."),
               out: Path = typer.Option(..., "--out", help="judgments parquet to write (query, query_id, "
                                        "product_id, grade + who, at, replaces, replaces_source, note).")) -> None:
    """The latest correction of every corrected pair, as a judgments parquet."""
    if not human:
        _fail(f"`ltr labels export` writes human corrections only. Fix: pass --human; the labeler's grades of "
              f"this run are {run_dir / 'labels' / 'labels.parquet'} already.")
    from labels.human import HumanLabels
    with HumanLabels(_store_path(run_dir)) as store:
        path = store.export(out)
        n, rows = len(store.latest()), store.state()["rows"]
    typer.echo(f"wrote {path}: {n} corrected pairs (latest of {rows} corrections)")


@labels_app.command("history")
@_guard
def history_cmd(run_dir: Path = RunDirOpt,
                query: Optional[str] = typer.Option(None, "--query", help="Only this query (its text or its "
                                                    "query_id).")) -> None:
    """Every correction, oldest first: who changed which grade, when, and what it replaced."""
    from labels.human import HumanLabels
    from ltr.data.schemas import query_id
    with HumanLabels(_store_path(run_dir)) as store:
        df = store.history()
    if query is not None:
        df = df[df["query_id"].isin({query, query_id(query)})]
    if df.empty:
        typer.echo("no corrections" + (f" of query {query!r}" if query is not None else ""))
        return
    typer.echo(df.to_string(index=False))


def main() -> None:  # console-script entry point
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
