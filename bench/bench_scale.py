"""Benchmark: how every data stage of the main job grows (issue 11): wall seconds, CPU seconds and peak RSS at
1x, 4x and 16x the default world (products, queries and sessions scaled together), and of the log-driven
stages (engagement features, training frame, materialize) at 64x and 256x the sessions (16M and 64M
impressions); the fitted growth exponent of each stage (log-log slope); JSON + a log-log PNG.

    .venv/bin/python -m bench.bench_scale --out bench/results [--work DIR] [--scales 1 4 16]
        [--encoder-scales 1 4] [--ce-scales 1] [--log-scales 64 256] [--pandas-max-impressions 17000000]

Every stage runs in its own process (`bench.scale_stages`), so its peak RSS is its own. Encoder stages
(labels, bi-encoder, cross-encoder) are bound by the encoder's FLOPs: they run at --encoder-scales / --ce-scales
and are projected from their measured throughput elsewhere (marked "projected"). The big logs are simulated
once into WORK (default OUT/scale_work) and reused by later runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.scale_stages import make_log, proxy_inputs
from ltr.data.provenance import stamp

ENCODER = {"labels": "pairs", "bi_encoder": "texts", "ce_score": "pairs", "ce_finetune": "pairs",
           "cross_encoder_stage": "pairs"}
FEATURE_STAGES = ["lexical", "product", "engagement", "engagement_pandas", "content_view", "labels_view",
                  "feast_apply", "materialize", "training_frame"]
LOG_STAGES = ["engagement", "engagement_pandas", "feast_apply", "materialize", "training_frame"]
GOALS = {"engagement_16M": {"wall_s": 20.0, "peak_rss_mb": 1536.0}, "engagement_64M": {"peak_rss_mb": 3072.0}}


def child(stage: str, work: Path, tag: str, dataset: Path, scale: int = 1, extra: list[str] = ()) -> dict[str, Any]:
    """One stage in a fresh process; its RESULT line, plus the load it ran under (or the error it died of)."""
    cmd = [sys.executable, "-m", "bench.scale_stages", stage, "--work", str(work), "--tag", tag,
           "--dataset", str(dataset), "--scale", str(scale), *extra]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    res = json.loads(lines[-1][7:]) if proc.returncode == 0 and lines else {
        "stage": stage, "tag": tag, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-600:]}"}
    res.update(process_s=round(time.perf_counter() - t0, 1), load_1min=round(load, 1))
    print(json.dumps(res), flush=True)
    return res


def sizes(ds: Path) -> dict[str, int]:
    import pyarrow.parquet as pq
    cand = pd.read_parquet(ds / "candidates.parquet", columns=["query_id", "product_id"])
    return {"products": pq.ParquetFile(ds / "products.parquet").metadata.num_rows,
            "queries": int(cand["query_id"].nunique()), "pairs": len(cand),
            "texts": int(cand["product_id"].nunique() + cand["query_id"].nunique()),
            "impressions": pq.ParquetFile(ds / "impressions.parquet").metadata.num_rows}


def world_runs(args, work: Path) -> list[dict[str, Any]]:
    """Every stage at every world scale; encoder stages only where asked (elsewhere the feature stage gets
    inputs of the same shape: `proxy_inputs`)."""
    out = []
    for s in args.scales:
        ds, tag = work / f"world{s}x", f"{s}x"
        run = work / f"run{tag}"
        shutil.rmtree(run, ignore_errors=True)
        stages = ["dataset"]
        out.append({"series": "world", "scale": s, **child("dataset", work, tag, ds, s)})
        if s in args.encoder_scales:
            stages += ["labels", "bi_encoder", "bi_encoder_warm"]
            stages += (["ce_finetune"] if s == min(args.ce_scales or [0]) else []) + (
                ["ce_score"] if s in args.ce_scales else [])
        else:
            proxy_inputs(ds, run)
        for stage in stages[1:] + FEATURE_STAGES:
            if stage == "engagement_pandas" and sizes(ds)["impressions"] > args.pandas_max_impressions:
                continue
            if stage == "content_view" and s in args.encoder_scales and s not in args.ce_scales:
                _proxy_ce(run)
            extra = ["--ce-queries", str(args.ce_queries)] if stage == "ce_finetune" else []
            out.append({"series": "world", "scale": s, **child(stage, work, tag, ds, s, extra)})
        n = sizes(ds)
        for r in out:
            if r["scale"] == s and r["series"] == "world":
                r.update({k: v for k, v in n.items() if r.get(k) is None})  # a stage's own count wins
    return out


def _proxy_ce(run: Path) -> None:
    """Where the cross-encoder is not run, its column is the label score (shape, not quality, matters here)."""
    content = pd.read_parquet(run / "content.parquet")
    if "ce_score" not in content.columns:
        lab = pd.read_parquet(run / "labels" / "labels.parquet", columns=["query_id", "product_id", "score"])
        content = content.merge(lab.rename(columns={"score": "ce_score"}), how="left")
        content.to_parquet(run / "content.parquet", index=False)


def reused_encoder_runs(path: Path) -> list[dict[str, Any]]:
    """The measured encoder stages of an earlier run (same machine, same worlds), marked with where they came
    from; the feature stages then get `proxy_inputs` of the same shape."""
    old = json.loads(Path(path).read_text())["runs"]
    keep = set(ENCODER) | {"bi_encoder_warm"}
    return [{**r, "reused_from": str(path)} for r in old
            if r.get("stage") in keep and not r.get("projected") and "error" not in r]


def ensure_logs(args, work: Path) -> dict[str, Any]:
    """The big logs, simulated once (see `make_log`) and reused while the 1x world is the same."""
    stamp = work / "logs.stamp"
    key = json.dumps({"world": (work / "world1x" / "impressions.parquet").stat().st_size, "m": args.log_scales})
    dirs = {m: work / f"log{m}x" for m in args.log_scales}
    if stamp.exists() and stamp.read_text() == key and all((d / "impressions.parquet").exists() for d in dirs.values()):
        return json.loads((work / "logs.json").read_text())
    for d in dirs.values():
        shutil.rmtree(d, ignore_errors=True)
    info = make_log(work / "world1x", dirs)
    (work / "logs.json").write_text(json.dumps(info, indent=2) + "\n")
    stamp.write_text(key)
    return info


def log_runs(args, work: Path) -> list[dict[str, Any]]:
    """The log-driven stages on M times the 1x world's sessions; the other views are the 1x run's."""
    out = []
    for m in args.log_scales:
        ds, tag = work / f"log{m}x", f"{m}xlog"
        feats = work / f"run{tag}" / "features"
        shutil.rmtree(feats.parent, ignore_errors=True)
        feats.mkdir(parents=True)
        for f in (work / "run1x" / "features").glob("*.parquet"):
            if not f.name.startswith("engagement_"):
                shutil.copy(f, feats / f.name)
        n = sizes(ds)
        for stage in LOG_STAGES:
            if stage == "engagement_pandas" and n["impressions"] > args.pandas_max_impressions:
                continue
            r = child(stage, work, tag, ds, 1)
            out.append({"series": "sessions", "scale": m, **r, **{k: v for k, v in n.items() if r.get(k) is None}})
    return out


def slope(x, y, tail: bool = False) -> float | None:
    """Least-squares log-log slope; tail=True: between the two largest sizes only (the growth where fixed
    costs no longer hide it)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = x[ok], y[ok]
    if len(set(x)) < 2:
        return None
    if tail:
        order = np.argsort(x)[-2:]
        x, y = x[order], y[order]
    return round(float(np.polyfit(np.log(x), np.log(y), 1)[0]), 3)


def _slopes(x, frame: pd.DataFrame) -> dict[str, float | None]:
    out = {k: slope(x, frame[k]) for k in ("wall_s", "cpu_s", "peak_rss_mb")}
    out.update({f"{k}_tail": slope(x, frame[k], tail=True) for k in ("wall_s", "cpu_s")})
    return out


def fits(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per stage: the log-log slope of wall, CPU and peak RSS against the scale factor (world series) and
    against impressions (sessions series, with the 1x world as its first point)."""
    df = pd.DataFrame([r for r in runs if "error" not in r and not r.get("projected")])
    res: dict[str, Any] = {}
    for stage, g in df.groupby("stage"):
        w = g[g.series == "world"].sort_values("scale")
        sess = pd.concat([w[w.scale == 1], g[g.series == "sessions"]]).sort_values("impressions")
        res[stage] = {"bound": bound(stage), "world": _slopes(w.scale, w), "world_scales": w.scale.tolist()}
        if (g.series == "sessions").any():
            res[stage]["sessions"] = _slopes(sess.impressions, sess)
            res[stage]["sessions_impressions"] = sess.impressions.tolist()
    return res


def bound(stage: str) -> str:
    if stage in ENCODER or stage == "bi_encoder_warm":
        return "hardware: encoder FLOPs" if stage != "bi_encoder_warm" else "our code (embedding cache reads)"
    return "our code"


def projections(runs: list[dict[str, Any]], scales: list[int], work: Path) -> list[dict[str, Any]]:
    """Encoder stages at the scales they were not run at: units (texts or pairs) over the measured rate."""
    out = []
    for stage, unit in ENCODER.items():
        done = [r for r in runs if r.get("stage") == stage and "error" not in r and r["series"] == "world"]
        if not done or stage in ("ce_finetune", "cross_encoder_stage"):
            continue
        best = max(done, key=lambda r: r["scale"])
        rate = best[unit] / best["wall_s"]
        for s in scales:
            if s not in {r["scale"] for r in done}:
                n = sizes(work / f"world{s}x")
                out.append({"series": "world", "scale": s, "stage": stage, "projected": True, **n,
                            "wall_s": round(n[unit] / rate, 1), "rate_per_s": round(rate, 2), "unit": unit,
                            "from_scale": best["scale"]})
    return out


def cross_encoder_stage(runs: list[dict[str, Any]], scales: list[int], work: Path) -> list[dict[str, Any]]:
    """The main job's cross-encoder stage (2 cross-fitted fine-tunes, 1 epoch, then every candidate scored),
    projected from the measured fine-tune and scoring rates: each labelled pair is trained on once (in the
    model of the other fold) and scored once."""
    fit = [r for r in runs if r.get("stage") == "ce_finetune" and "error" not in r]
    score = [r for r in runs if r.get("stage") == "ce_score" and "error" not in r and not r.get("projected")]
    if not fit or not score:
        return []
    train_rate = fit[0]["pairs"] / fit[0]["wall_s"]
    score_rate = score[-1]["pairs"] / score[-1]["wall_s"]
    out = []
    for s in scales:
        n = sizes(work / f"world{s}x")
        out.append({"series": "world", "scale": s, "stage": "cross_encoder_stage", "projected": True, **n,
                    "wall_s": round(n["pairs"] / train_rate + n["pairs"] / score_rate, 1),
                    "train_pairs_per_s": round(train_rate, 2), "score_pairs_per_s": round(score_rate, 2)})
    return out


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    df = pd.DataFrame([{**r, "projected": r.get("projected") is True} for r in runs if "error" not in r])
    fig, ax = plt.subplots(1, 3, figsize=(17, 5.5))
    for a in ax:
        a.set_prop_cycle(color=plt.cm.tab20.colors)  # 16 stages: 10 colours would repeat
    for stage, g in df[df.series == "world"].groupby("stage"):
        g = g.sort_values("scale")
        meas, proj = g[~g.projected], g[g.projected]
        line = ax[0].plot(meas.scale, meas.wall_s, "o-", label=stage)[0]
        if len(proj):
            last = meas.tail(1)
            ax[0].plot(list(last.scale) + list(proj.scale), list(last.wall_s) + list(proj.wall_s), "--",
                       color=line.get_color())
    w1 = df[(df.series == "world") & (df.scale == 1)]
    sess = pd.concat([w1[w1.stage.isin(LOG_STAGES)], df[df.series == "sessions"]])
    for stage, g in sess.groupby("stage"):
        g = g.sort_values("impressions")
        line = ax[1].plot(g.impressions, g.wall_s, "o-", label=f"{stage} wall")[0]
        ax[1].plot(g.impressions, g.cpu_s, "x:", color=line.get_color(), label=f"{stage} CPU")
        ax[2].plot(g.impressions, g.peak_rss_mb, "o-", label=stage)
    ax[1].axhline(20, color="grey", ls=":", lw=1)
    ax[2].axhline(1536, color="grey", ls=":", lw=1)
    ax[2].axhline(3072, color="grey", ls=":", lw=1)
    titles = ["wall s vs world scale (dashed: projected from encoder throughput)",
              "log-driven stages: wall s (o) and CPU s (x) vs impressions; goal 20 s at 16M",
              "log-driven stages: peak RSS MB vs impressions; goals 1.5 GB at 16M, 3 GB at 64M"]
    for a, t in zip(ax, titles):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_title(t, fontsize=9)
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def goals(runs: list[dict[str, Any]]) -> dict[str, Any]:
    eng = {r["impressions"]: r for r in runs if r.get("stage") == "engagement" and r["series"] == "sessions"
           and "error" not in r}
    out = {}
    for name, lim in GOALS.items():
        target = 16e6 if "16M" in name else 64e6
        r = min(eng.values(), key=lambda r: abs(r["impressions"] - target), default=None)
        if r is None or abs(r["impressions"] - target) > 0.1 * target:
            out[name] = {"measured": None}
            continue
        m = {k: r[k] for k in lim}
        out[name] = {"impressions": r["impressions"], "measured": m, "goal": lim,
                     "met": all(m[k] <= v for k, v in lim.items())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=None, help="data and intermediate outputs (default OUT/scale_work)")
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--encoder-scales", type=int, nargs="*", default=[1, 4])
    ap.add_argument("--ce-scales", type=int, nargs="*", default=[1])
    ap.add_argument("--ce-queries", type=int, default=40, help="queries whose labels the fine-tune probe uses")
    ap.add_argument("--log-scales", type=int, nargs="*", default=[64, 256])
    ap.add_argument("--reuse-encoders", type=Path, default=None,
                    help="bench_scale.json of an earlier run: report its encoder stages (labels, bi-encoder, "
                         "cross-encoder; about an hour on 2 cores) instead of running them again")
    ap.add_argument("--pandas-max-impressions", type=int, default=17_000_000,
                    help="run the old in-memory engagement path up to this many impressions (16M needs ~5 GB)")
    args = ap.parse_args()
    if 1 not in args.scales:
        ap.error("--scales must include 1 (the log-driven series and projections start from the 1x world)")
    work = (args.work or args.out / "scale_work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    reused = reused_encoder_runs(args.reuse_encoders) if args.reuse_encoders else []
    if reused:
        args.encoder_scales, args.ce_scales = [], []
    runs = reused + world_runs(args, work)
    logs = ensure_logs(args, work) if args.log_scales else None
    runs += log_runs(args, work)
    runs += projections(runs, args.scales, work) + cross_encoder_stage(runs, args.scales, work)
    res = {"benchmark": "scale", **stamp(), "cpu_count": os.cpu_count(), "config": "configs/default.yaml",
           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "logs": logs, "goals": goals(runs), "exponents": fits(runs), "runs": runs,
           "total_s": round(time.time() - t0, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_scale.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    plot(runs, args.out / "bench_scale.png")
    print(json.dumps({k: res[k] for k in ("goals", "exponents", "total_s")}, indent=2))


if __name__ == "__main__":
    main()
