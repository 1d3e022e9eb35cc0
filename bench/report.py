"""docs/results.md from the JSON that the benchmarks (`make bench`) and the main job (`ltr run`) write.

    python -m bench.report [--results bench/results] [--runs runs] [--out docs/results.md]      # make report

Why a generated page: figures copied into prose by hand drift away from the JSON they came from, and lose
the conditions they were measured under. Every table here says the commit, date and machine its figures
come from (the `ltr.data.provenance` keys; an older JSON without them says "not recorded"). A missing JSON gives
"not measured yet: run `<command>`" in place of its table, and a missed goal or a gap whose interval holds
zero is shown as it is. A JSON that lacks a field a table needs stops the report: the message names the
file, the field and the command that writes it again, and the page is left as it was.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# --- JSON that names its own missing fields -----------------------------------------------------------------


class Malformed(ValueError):
    """A JSON a table reads is unreadable or lacks a field; the message names both and the fix."""


class Node(dict):
    """A JSON object that knows where it was read from: a missing key is reported as `file: a.b[2].c`."""

    def __init__(self, data: dict, where: str, fix: str):
        super().__init__(data)
        self.where, self.fix = where, fix

    def __getitem__(self, key):
        if not dict.__contains__(self, key):
            raise Malformed(f"{self.where}: field '{key}' is missing. Fix: {self.fix}")
        return _wrap(dict.__getitem__(self, key), f"{self.where}.{key}", self.fix)

    def get(self, key, default=None):
        return self[key] if dict.__contains__(self, key) else default

    def items(self):
        return [(k, self[k]) for k in self]

    def values(self):
        return [self[k] for k in self]


class Seq(list):
    """A JSON array that knows where it was read from (see Node)."""

    def __init__(self, data: list, where: str, fix: str):
        super().__init__(data)
        self.where, self.fix = where, fix

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise Malformed(f"{self.where}: item [{i}] is missing (the list has {len(self)}). Fix: {self.fix}")
        return _wrap(list.__getitem__(self, i), f"{self.where}[{i}]", self.fix)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _wrap(v, where: str, fix: str):
    if isinstance(v, dict):
        return Node(v, where, fix)
    if isinstance(v, list):
        return Seq(v, where, fix)
    return v


def load(path: Path, command: str) -> Node:
    """The JSON at `path`, wrapped so that a missing field names itself and the command that rewrites it."""
    fix = f"run `{command}` again to rewrite {path.name} (it is from an older or interrupted run), or delete it."
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise Malformed(f"{path}: not valid JSON ({e}). Fix: {fix}") from None
    if not isinstance(data, dict):
        raise Malformed(f"{path}: expected a JSON object, found {type(data).__name__}. Fix: {fix}")
    return Node(data, str(path), fix)


# --- formatting -----------------------------------------------------------------------------------------------

def num(v, digits: int = 4, signed: bool = False) -> str:
    """A figure for a table cell; None and NaN (undefined, see ltr.data.metrics.nan_to_none) read 'n/a'."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:+,}" if signed else f"{v:,}"
    if not isinstance(v, float):
        raise TypeError(f"expected a number, found {v!r}")
    return f"{v:+.{digits}f}" if signed else f"{v:,.{digits}f}"


def ci(c, digits: int = 4) -> str:
    """A 95% interval `[lo, hi]` as signed figures."""
    lo, hi = c["ci95"]
    return f"[{num(lo, digits, True)}, {num(hi, digits, True)}]"


def met(v) -> str:
    return "n/a" if v is None else "**met**" if v else "**not met**"


def table(head: list[str], rows: list[list]) -> list[str]:
    """A Markdown table; a '|' inside a cell is escaped."""
    def cell(x) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows])


# --- where and when a figure was measured ---------------------------------------------------------------------

def machine_of(d: Node) -> dict:
    """The `ltr.data.provenance` machine, or what an older JSON recorded of it (core counts under several names)."""
    m = d.get("machine")
    if isinstance(m, dict):
        return m
    host = d.get("host") if isinstance(d.get("host"), dict) else {}
    cpu = d.get("cpu") if isinstance(d.get("cpu"), dict) else {}
    cores = next((c for c in (d.get("cpu_count"), d.get("cpus"), d.get("cpu_count_visible"), host.get("cpus"),
                              cpu.get("cores")) if isinstance(c, int)), None)
    return {"cores": cores, "cpu": cpu.get("model"), "arch": m if isinstance(m, str) else None}


def machine_text(m: dict) -> str:
    if not any(m.get(k) for k in ("cores", "ram_gb", "cpu")):
        return "not recorded"
    cores = f"{m['cores']} cores" if m.get("cores") else "cores not recorded"
    ram = f"{m['ram_gb']} GiB RAM" if m.get("ram_gb") else "RAM not recorded"
    cpu = m.get("cpu") or "CPU model not recorded"
    return f"{cores}, {ram}, {cpu}" + (f" ({m['arch']})" if m.get("arch") else "")


def date_of(d: Node, path: Path) -> str:
    """The recorded date; else a timestamp's day; else the file's own time, said to be that."""
    if d.get("date"):
        return str(d["date"])
    if isinstance(d.get("timestamp"), str):
        return d["timestamp"][:10]
    written = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).date().isoformat()
    return f"date not recorded (file written {written})"


def provenance(d: Node, path: Path) -> str:
    """The line under a table's title: commit, date, machine and the JSON it was read from."""
    commit = f"commit `{d['commit']}`" if d.get("commit") else "commit not recorded"
    return f"*{commit} · {date_of(d, path)} · machine: {machine_text(machine_of(d))} · source: `{path}`*"


# --- benchmark tables (one function per bench JSON; shapes as bench/bench_*.py write them) --------------------

def _label_budget_row(r) -> list:
    v = r["vs_bienc"]
    return [num(r["ndcg@10"]), num(r["irrelevant@10"]), num(v["diff"], signed=True), ci(v),
            "yes" if v.get("excludes_0") else "no"]


def t_label_budget(d: Node) -> list[str]:
    """Arms, then the two curves, each against (a) the zero-shot bi-encoder (paired bootstrap over queries)."""
    cols = ["NDCG@10", "Irrelevant@10", "NDCG@10 − (a)", "95% CI", "CI excludes 0"]
    out = [f"{d['dataset']}: {num(d['n_test_queries'])} test queries, {num(d['n_train_queries'])} training queries, "
           f"{num(d['pilot_queries'])} pilot queries; {d['metric']}; engagement {d.get('engagement', 'n/a')}.", ""]
    out += table(["arm", *cols], [[r["arm"], *_label_budget_row(r)] for r in d["arms"]])
    cur = d["curves"]
    out += ["", "NDCG@10 against the number of human-labelled training queries the grader learnt from "
                "(trees without ce_score):", ""]
    out += table(["training queries", *cols], [[num(p["seed_queries"]), *_label_budget_row(p)]
                                               for p in cur["by_seed_queries"]])
    out += ["", "NDCG@10 against the quality of the grades the grader learnt from (its pilot's queries):", ""]
    out += table(["target kappa", "measured kappa", "pilot queries", *cols],
                 [[num(p["target_kappa"], 2), num(p["measured_kappa"], 3), num(p["seed_queries"]),
                   *_label_budget_row(p)] for p in cur["by_label_quality"]])
    return out


def t_recipe_cv(d: Node) -> list[str]:
    """Recipe variants out of fold over the training queries, each against the zero-shot bi-encoder."""
    cols = ["NDCG@10", "NDCG@10 − bi-encoder", "95% CI", "CI excludes 0"]
    out = [f"{num(d['n_train_queries'])} training queries, {d['folds']} folds by query (seed {d['fold_seed']}); "
           f"{d['metric']}.", ""]
    rows = [[r["arm"], num(r["ndcg@10"]), num(r["vs_bienc"]["diff"], signed=True), ci(r["vs_bienc"]),
             "yes" if r["vs_bienc"].get("excludes_0") else "no"] for r in d["arms"]]
    return out + table(["arm", *cols], rows)


def t_world(d: Node) -> list[str]:
    rows = [[w["seed"], num(w["seconds"], 2), num(w["spearman_grade_ctr"], 3),
             num(w.get("queries_top_clicked_irrelevant"), 3), num(w.get("irrelevant_share_top10_by_ctr"), 3)]
            for w in d["world"]]
    out = table(["seed", "seconds", "Spearman grade vs CTR", "queries whose top-clicked is irrelevant",
                 "irrelevant share of top 10 by CTR"], rows)
    e = d.get("esci_simulated_engagement")
    if e:
        out += ["", f"ESCI sample with simulated engagement: load {num(e['load_seconds'], 2)} s, simulate "
                    f"{num(e['simulate_seconds'], 2)} s, {num(e['impressions'])} impressions, Spearman grade vs "
                    f"CTR {num(e['spearman_grade_ctr'], 3)}."]
    return out


def t_train(d: Node) -> list[str]:
    return table(["rows", "features", "trees", "threads", "fit s (wall)", "fit CPU s", "predict 100k s",
                  "goal", "goal met"],
                 [[num(d["rows"]), d["features"], d["trees"], d["threads"], num(d["fit_s"], 2),
                   num(d.get("fit_cpu_s"), 2), num(d.get("predict_100k_s"), 3), f"fit < {d['goal_fit_s']} s",
                   met(d.get("meets_goal"))]])


def t_feast(d: Node) -> list[str]:
    rows = []
    for kind, b in d["backends"].items():
        if "skipped" in b:
            rows.append([kind, f"skipped: {b['skipped']}", "", "", "", "", ""])
            continue
        r = b["online_read"]
        rows.append([kind, num(b["feast_materialize"]["rows_per_s"]), num(b["bulk_materialize"]["rows_per_s"]),
                     f"{num(b['speedup'], 1)}x", num(b["identical_online_reads"]), num(r["p50_ms"], 2),
                     num(r["p99_ms"], 2)])
    return [f"{num(d['rows'])} rows x {d['features_per_row']} features; online reads of 100 candidates.", ""] + table(
        ["online store", "Feast materialize rows/s", "bulk materialize rows/s", "speedup", "identical reads",
         "read p50 ms", "read p99 ms"], rows)


def t_crossencoder(d: Node) -> list[str]:
    rows = [[name, num(m["pairs_per_s"], 1), f"{num(m['speedup_vs_st'], 2)}x", f"{m['max_abs_diff_vs_st']:.1e}",
             num(m["spearman_vs_st_fp32"], 5)] for name, m in d["methods"].items()]
    return [f"Model: {d['model']}; {num(d['n_pairs'])} ESCI pairs, max length {d['max_length']}, {d['threads']} "
            f"threads, best of {d['rounds']} rounds; compared on {d['compared']}.", ""] + table(
        ["method", "pairs/s", "vs sentence-transformers", "max abs diff vs ST", "Spearman vs ST fp32"], rows)


def t_labeler(d: Node) -> list[str]:
    rows = [[c["concurrency"], c["pairs"], num(c["seconds"], 3), num(c["pairs_per_s"], 2)]
            for c in (d["concurrency_1"], d["concurrency_16"])]
    return [f"Simulated latency {d['latency_s']} s per request.", ""] + table(
        ["concurrency", "pairs", "seconds", "pairs/s"], rows) + [
        "", f"Speedup {num(d['speedup'], 2)}x (goal >= {num(d['goal_speedup'], 1)}x): {met(d.get('meets_goal'))}."]


def t_grader(d: Node) -> list[str]:
    rows = [[name, num(m["kappa"], 3), num(m["spearman"], 3), num(m["accuracy"], 3)]
            for name, m in d["mean"].items()]
    return [f"Means over {len(d['seeds'])} query splits ({d['test_frac']} of the queries held out each).", ""] + table(
        ["grader", "quadratic kappa", "Spearman", "accuracy"], rows) + [
        "", f"Fine-tuned beats zero-shot on the mean: {met(d['fine_tuned_beats_zero_shot_on_mean'])}; splits won "
            f"{d['splits_won']} of {len(d['splits'])}."]


def t_grader_pipeline(d: Node) -> list[str]:
    cal = d.get("calibration_heldout") or {}
    return table(["seconds", "pairs", "pairs/s", "grader fit s", "training pairs", "held-out accuracy",
                  "held-out quadratic kappa"],
                 [[num(d["seconds"], 1), num(d["n_pairs"]), num(d["pairs_per_second"], 1),
                   num(d.get("grader_fit_seconds"), 1), num(d.get("n_train_pairs")), num(cal.get("accuracy"), 3),
                   num(cal.get("kappa_quadratic"), 3)]])


def t_ce_quality(d: Node) -> list[str]:
    rows = [[name, num(m["ndcg10_esci"]), num(m["ndcg10_exp"]), num(m["irrelevant_at10"])]
            for name, m in d["rankers"].items()]
    c = d["ce_minus_bienc_ce_text"]
    extra = d.get("extra_labels")
    src = (f"ESCI grades plus {extra['n_pairs']:,} LLM labels of {extra['run_dir']}" if extra and not
           extra.get("extra_only") else f"only the LLM labels of {extra['run_dir']}" if extra else "ESCI grades")
    return [f"{d['n_queries']} ESCI queries, {d['folds']} query-grouped folds, scored out of fold "
            f"({d.get('scored_queries', 'n/a')} scored); cross-encoder trained on {src}.", ""] + table(
        ["ranker", "NDCG@10 ESCI gains", "NDCG@10 exp gains", "Irrelevant@10"], rows) + [
        "", f"Fine-tuned cross-encoder − bi-encoder (same text), NDCG@10: {num(c['mean_diff'], signed=True)}, 95% "
            f"CI {ci(c)} over {c['n_queries']} queries; wins / losses / ties {c['wins']} / {c['losses']} / "
            f"{c['ties']}."]


def t_ce_transfer(d: Node) -> list[str]:
    if "skipped" in d:
        return [f"Skipped: {d['skipped']}."]
    def row(name, m):
        return [name, num(m["ndcg10_esci"]), num(m["ndcg10_exp"]), num(m["irrelevant_at10"])]
    rows = [row("bi-encoder, title + brand", d["bienc_cos_title_brand"])]
    for path, m in d["models"].items():
        rows += [row(f"`{path}` cross-encoder", m["cross_encoder"]),
                 row(f"`{path}` bi-encoder, same text", m["bienc_cos_same_text"])]
    return [f"All {d['n_queries']} ESCI queries ({num(d['n_pairs'])} pairs), none seen in training.", ""] + table(
        ["ranker", "NDCG@10 ESCI gains", "NDCG@10 exp gains", "Irrelevant@10"], rows)


def t_dask(d: Node) -> list[str]:
    rows = []
    for mode in ("local", "dask"):
        m = d.get(mode)
        if m is None:
            continue
        if "failed" in m:
            rows.append([mode, f"failed: {m['failed']}", "", "", "", "", ""])
            continue
        workers = m.get("worker_peak_rss_mb")
        rows.append([mode, num(m["fit_s"], 1), num(m.get("fit_cpu_s"), 1), num(m.get("ndcg@10_heldout")),
                     num(m.get("peak_rss_mb")), " + ".join(num(v) for v in workers.values()) if workers else "",
                     num(m.get("load_avg_1m_mean"), 2)])
    out = [f"{num(d['rows'])} rows x {d['features']} features, {d['trees']} trees, {d['workers']} workers."
           + ("" if d.get("complete", True) else " **Incomplete run.**"), ""]
    out += table(["mode", "fit s", "fit CPU s", "held-out NDCG@10", "peak RSS MB", "worker peak RSS MB",
                  "load (1 min, mean)"], rows)
    if "wall_ratio_dask_over_local" in d:
        out += ["", f"Wall ratio Dask / one process {num(d['wall_ratio_dask_over_local'], 3)}; NDCG@10 Dask − "
                    f"one process {num(d['ndcg_diff_dask_minus_local'], signed=True)}."]
    return out


def t_encoders(d: Node) -> list[str]:
    b, c = d["bienc"], d["cross_encoder"]
    return table(["encoder", "max length", "per second (wall)", "per CPU-second"],
                 [["bi-encoder (product texts)", b["max_length"], num(b["texts_per_s"], 1),
                   num(b["texts_per_cpu_s"], 2)],
                  [f"cross-encoder, {c['backend']} (pairs)", c["max_length"], num(c["pairs_per_s"], 1),
                   num(c["pairs_per_cpu_s"], 2)]]) + [
        "", f"{d['pairs']} ESCI pairs, {d['torch_threads']} torch threads; peak RSS {num(d.get('peak_rss_mb'))} MB; "
            f"load {num(d.get('load_avg_1m_start'), 1)} -> {num(d.get('load_avg_1m_end'), 1)}."]


def t_retrieval(d: Node) -> list[str]:
    e, s = d["recall_exact"], d["recall_exact_or_substitute"]
    out = [f"{num(d['products'])} products, {num(d['queries'])} queries, top {d['k']} per retriever; retrieve "
           f"{num(d['retrieve_seconds'], 1)} s.", ""]
    out += table(["retriever", f"recall@{d['k']} Exact ({e['n_pairs']} pairs)",
                  f"recall@{d['k']} Exact + Substitute ({s['n_pairs']} pairs)"],
                 [[k, num(e[k], 3), num(s[k], 3)] for k in ("bm25", "bienc", "union")])
    out += ["", "Mined difficulty levels against the human grades of the pairs that have one:", ""]
    out += table(["level", "pairs", "judged", "mean grade", "Exact share", "Irrelevant share"],
                 [[lvl, num(v["pairs"]), num(v["judged"]), num(v["mean_grade"], 2), num(v["exact_share"], 3),
                   num(v["irrelevant_share"], 3)] for lvl, v in d["levels"].items()])
    cost = d.get("exact_topk_ms_per_query_1_thread") or {}
    if cost:
        out += ["", *table(["catalog size", "exact top-k ms per query (1 thread)"],
                           [[num(int(n)), num(ms, 2)] for n, ms in cost.items()])]
    return out


TWOTOWER_METRICS = ("ndcg@10", "ndcg_exp@10", "irrelevant@10", "recall@50", "exact@50")


def _diff(c) -> str:
    if not c or not c.get("n_queries"):
        return ""
    return f"{num(c['mean_diff'], 3, True)} {ci(c, 3)}"


def t_twotower(d: Node) -> list[str]:
    means, comps = [], []
    for name, ds in d["datasets"].items():
        for arm, m in ds["means"].items():
            means.append([name, arm, num(int(m["n_queries"]))] + [num(m.get(k), 3) for k in TWOTOWER_METRICS])
        comps += [[name, comp] + [_diff(c.get(k)) for k in TWOTOWER_METRICS[:4]]
                  for comp, c in ds["comparisons"].items()]
    out = [f"{d['budget_per_fold']:,} labelled training pairs per fold, {d['folds']} folds.", ""]
    out += table(["dataset", "arm", "queries", *TWOTOWER_METRICS], means)
    out += ["", "Differences, with 95% paired-bootstrap intervals over queries:", ""]
    out += table(["dataset", "difference", *(f"Δ{k}" for k in TWOTOWER_METRICS[:4])], comps)
    runs = [(n, ds["run"]) for n, ds in d["datasets"].items() if isinstance(ds.get("run"), dict)]
    own = [f"{n}: measured at commit `{r['commit']}`, {r.get('date', 'date not recorded')}."
           for n, r in runs if r.get("commit")]  # a resumed run keeps an earlier run's datasets
    return out + (["", "Each dataset's own run: " + " ".join(own)] if own else [])


def t_cold_route(d: Node) -> list[str]:
    rows = []
    for scorer, v in d["mean_ndcg@10"].items():
        p = d["paired"].get(f"{scorer} - bienc_zero_shot") if scorer != "bienc_zero_shot" else None
        rows.append([scorer, num(v), num(p["mean"], signed=True) if p else "",
                     num(p["share_of_splits_ge_0"], 3) if p else ""])
    return [f"Run `{d['run_dir']}` ({d['queries']} queries{', its training queries only' if d['dev'] else ''}), "
            f"{len(d['splits'])} splits; {d['metric']}.", ""] + table(
        ["scorer", "mean NDCG@10 over splits", "− zero-shot bi-encoder", "share of splits >= 0"], rows)


def _scale_cell(r) -> str:
    if "error" in r:
        return "error"
    if r.get("projected"):
        return f"*{num(r['wall_s'], 0)} s*"
    return f"{num(r['wall_s'], 1)} / {num(r['cpu_s'], 1)} s, {num(r['peak_rss_mb'] / 1024, 2)} GB"


def _scale_col(r) -> str:
    return f"{r['scale']}x" if r["series"] == "world" else f"{r['impressions'] / 1e6:.1f}M impressions"


def t_scale(d: Node) -> list[str]:
    """Stage x scale (wall / CPU s, peak RSS; italic: projected), exponents, then the goals."""
    runs = list(d["runs"])
    world = sorted({r["scale"] for r in runs if r["series"] == "world"})
    sess = sorted({r["impressions"] for r in runs if r["series"] == "sessions"})
    cols = [f"{s}x" for s in world] + [f"{i / 1e6:.1f}M impressions" for i in sess]
    cells: dict[str, dict[str, str]] = {}
    for r in runs:
        cells.setdefault(r["stage"], {})[_scale_col(r)] = _scale_cell(r)
    exps = d.get("exponents") or {}
    def exponent(stage: str) -> str:
        e = exps.get(stage) or {}
        parts = [num((e.get(k) or {}).get("cpu_s"), 2) for k in ("world", "sessions") if e.get(k)]
        return "; ".join(parts)
    out = table(["stage", *cols, "CPU exponent (world; sessions)"],
                [[s, *(c.get(k, "") for k in cols), exponent(s)] for s, c in cells.items()])
    goals = [[name, num(g.get("impressions")), json.dumps(g["measured"]), json.dumps(g.get("goal")),
              met(g.get("met"))] for name, g in d["goals"].items()]
    return out + ["", "Goals:", ""] + table(["goal", "impressions", "measured", "goal", "met"], goals)


def t_serving(d: Node) -> list[str]:
    cur = d["current"]
    rows = [["start-up s", num(cur["startup_s"], 1)],
            ["new query p50 / p99 ms", f"{num(cur['new_query']['p50_ms'], 1)} / {num(cur['new_query']['p99_ms'], 1)}"],
            ["warm p50 / p99 ms", f"{num(cur['warm']['p50_ms'], 1)} / {num(cur['warm']['p99_ms'], 1)}"],
            ["concurrency 8: requests/s, p99 ms", f"{num(cur['concurrency8']['requests_per_s'], 1)}, "
                                                  f"{num(cur['concurrency8']['p99_ms'], 1)}"]]
    if "soak" in cur:
        s = cur["soak"]
        rows.append(["soak: requests, errors, RSS growth", f"{s.get('n', 'n/a')}, {s['errors']}, "
                                                           f"{num(100 * s['rss_growth_after_warmup'], 2)}%"])
    q = d.get("quality")
    if q:
        rows.append(["NDCG@10 full cross-encoder − phased (new query)", num(q["gap"], signed=True)])
    out = [f"{d['catalog_products']:,} products, {d['n_candidates']} candidates per request, "
           f"{d['held_out_queries']} held-out queries; CPU steal {num(d.get('cpu_steal_share'))}.", ""]
    out += table(["measure", "this service"], rows)
    if d.get("ratios"):
        out += ["", f"Against the baseline service ({d['baseline']['rev']}), same machine and run: "
                + ", ".join(f"{k} {num(v, 2)}x" for k, v in d["ratios"].items()) + "."]
    if d.get("goals_met"):
        out += ["", "Goals:", ""] + table(["goal", "met"], [[k, met(v)] for k, v in d["goals_met"].items()])
    return out


def t_index(d: Node) -> list[str]:
    return table(["benchmark", "status", "seconds"],
                 [[name, v["status"], num(v.get("seconds"), 1)] for name, v in d.items()])


@dataclass(frozen=True)
class Bench:
    """One table of the page: its title, the JSON file(s) it reads, how to measure it and how to render it."""

    title: str
    file: str  # a glob under --results
    command: str  # "{results}" is the --results directory
    render: Callable[[Node], list[str]]
    what: str = ""
    image: str = ""  # a plot the bench writes, linked under its table when it is there


def _cmd(name: str, extra: str = "") -> str:
    return f"python -m bench.{name} --out {{results}}" + (f" {extra}" if extra else "")


BENCHES = [
    Bench("Label budget: human labels against the zero-shot bi-encoder", "label_budget.json",
          _cmd("bench_label_budget", "--run-dir runs/homedepot --config configs/homedepot.yaml "
                                     "--png docs/label_budget.png"), t_label_budget,
          "How many human labels, and how good, before the ranker beats what a shop already has.",
          "docs/label_budget.png"),
    Bench("Home Depot recipe, cross-validated on training queries", "recipe_cv.json",
          _cmd("bench_recipe_cv", "--run-dir runs/homedepot --config configs/homedepot.yaml"), t_recipe_cv,
          "What each change to the recipe gives, chosen without the test split (docs/homedepot.md)."),
    Bench("World generation", "bench_world.json", _cmd("bench_world"), t_world,
          "Goal: the built-in world in well under 60 s; Spearman grade vs CTR in 0.3-0.6."),
    Bench("LambdaMART training", "bench_train.json", _cmd("bench_train"), t_train),
    Bench("Feast materialize and online reads", "bench_feast.json", _cmd("bench_feast"), t_feast,
          "Goals: bulk materialize >= 5x Feast's own; online read of 100 candidates p99 < 10 ms (SQLite)."),
    Bench("Cross-encoder inference speed", "crossencoder_speed.json", _cmd("bench_crossencoder"), t_crossencoder,
          "Goal: >= 2x sentence-transformers; within 1e-3 (fp32) or Spearman >= 0.99 (reduced precision)."),
    Bench("Labeler throughput", "bench_labeler.json", _cmd("bench_labeler"), t_labeler),
    Bench("Grader against the zero-shot bi-encoder grader, held-out ESCI", "bench_grader.json",
          _cmd("bench_grader"), t_grader),
    Bench("Grader pipeline speed", "bench_grader_pipeline.json", _cmd("bench_grader_pipeline"), t_grader_pipeline),
    Bench("Cross-encoder quality, held-out ESCI", "ce_quality.json", _cmd("bench_ce_quality"), t_ce_quality,
          "Goal: the fine-tuned cross-encoder beats the zero-shot bi-encoder (interval above zero)."),
    Bench("Cross-encoder transfer to ESCI", "ce_transfer.json", _cmd("bench_ce_transfer"), t_ce_transfer),
    Bench("Training on Dask", "bench_dask.json", _cmd("bench_dask"), t_dask),
    Bench("Encoder throughput", "bench_encoders.json", _cmd("bench_encoders"), t_encoders),
    Bench("Retrieval and mining", "bench_retrieval.json", _cmd("bench_retrieval"), t_retrieval),
    Bench("Two-tower fine-tuning with a curriculum", "twotower.json", _cmd("bench_twotower"), t_twotower,
          "Goal: two-tower beats zero-shot on held-out ESCI queries (interval above zero), lower Irrelevant@10."),
    Bench("Cold route over many splits", "bench_cold_route_*.json", _cmd("bench_cold_route", "--run-dir runs/default"),
          t_cold_route),
    Bench("Scale of the data stages", "bench_scale.json", _cmd("bench_scale"), t_scale,
          "Wall / CPU seconds and peak RSS per stage; italic: projected from the measured rate."),
    Bench("Ranking service over HTTP", "bench_serving.json", _cmd("bench_serving", "--baseline-rev 0f27b42"),
          t_serving),
]


# --- run reports (`ltr run`: OUT/reports/*.json, shapes as ltr/pipeline.py writes them) -----------------------

SEGMENTS = ("", "/head", "/tail", "/cold")
RUN_METRICS = ("ndcg@10", "ndcg_exp@10", "irrelevant@10", "cart_recall@10", "purchase_recall@10")


def t_run_test(s: Node) -> list[str]:
    m = s["test_metrics"]
    rows = [[k] + [num(m.get(k + seg)) for seg in SEGMENTS] for k in RUN_METRICS if k in m]
    return [f"{num(m.get('n_queries'), 0)} test queries; engagement {s.get('engagement_source', 'n/a')}.", ""] + table(
        ["metric", "all", "head", "tail", "cold (engagement absent)"], rows)


def t_run_cold(s: Node) -> list[str]:
    c = s["cold_start"]
    rows = [["champion, warm", num(c["champion_warm"])], ["champion, cold", num(c["champion_cold"])],
            ["content-only model, cold", num(c["content_only"])],
            ["zero-shot bi-encoder", num(c.get("bienc_zero_shot"))]]
    return table([c["metric"], "test queries"], rows) + [
        "", f"Champion cold >= zero-shot bi-encoder: {met(c.get('zero_shot_rule_met'))}; champion cold >= "
            f"content-only: {met(c.get('cold_rule_met'))}."]


def t_run_labels(s: Node) -> list[str]:
    c = s["labels"]
    if not c:
        return ["No calibration against human grades in this run."]
    return table(["pairs", "accuracy", "quadratic kappa", "Spearman", "scope"],
                 [[num(c.get("n_pairs")), num(c.get("accuracy"), 3), num(c.get("kappa_quadratic"), 3),
                   num(c.get("spearman"), 3), c.get("scope", "")]])


def t_run_experiments(e: Node) -> list[str]:
    c, g = e["content_metric"], e["engagement_metric"]
    def cell(a, k: str) -> str:
        return f"{num(a['mean'].get(k))} ± {num(a['std'].get(k))}"
    irr = e.get("irrelevant_metric", "irrelevant@10")
    rows = [[a["name"], a.get("group", ""), cell(a, c), cell(a, f"{c}/cold"), cell(a, g), cell(a, irr)]
            for a in e["arms"]]
    out = [f"Means ± sd over seeds {list(e['seeds'])}.", ""]
    out += table(["arm", "group", c, f"{c} cold", g, irr], rows)
    cl = e.get("claim")
    if cl:
        content, eng = num(100 * cl["content_rel_gain"], 2, True), num(100 * cl["engagement_rel_change"], 2, True)
        out += ["", f"Claim: {cl['statement']}: content {content}% (p t-test {num(cl.get('content_p_ttest'), 3)}), "
                    f"engagement {eng}% (p t-test {num(cl.get('engagement_p_ttest'), 3)}): {met(cl['met'])}."]
    return out


def t_run_evaluate(ev: Node) -> list[str]:
    b = ev.get("bienc_zero_shot")
    row = [num(ev["n_queries"]), num(ev["ndcg@10"]), num(ev.get("ndcg_exp@10")), num(ev["irrelevant@10"])]
    head = ["queries", "NDCG@10", "NDCG@10 exp", "Irrelevant@10"]
    if b:
        d = b["model_vs_bienc"]
        row += [num(b["ndcg@10"]), f"{num(d['diff'], signed=True)} {ci(d)}"]
        head += ["zero-shot bi-encoder NDCG@10", "model − bi-encoder (95% CI)"]
    return [f"Dataset `{ev['dataset']}`, never seen in training; engagement {ev.get('engagement', 'n/a')}.", ""] + \
        table(head, [row])


def run_command(name: str, runs: Path) -> str:
    if name == "default" and runs == Path("runs"):
        return "make run"
    cfg = Path("configs") / f"{name}.yaml"
    return f"ltr run --config {cfg if cfg.exists() else 'CONFIG'} --out {runs / name}"


@dataclass(frozen=True)
class Table:
    """One table of the page as found on disk: its JSON (None: not measured yet) and how to measure it."""

    title: str
    path: Path | None
    command: str
    render: Callable[[Node], list[str]]
    what: str = ""
    level: str = "###"


EVALUATE_NOTE = ("The champion on a judged dataset it never saw; `ltr run` does this when the ESCI sample is "
                 "there ($LTR_ESCI_DIR, else ../shared/data/esci).")


def run_tables(name: str, runs: Path) -> list[Table]:
    """One run's tables; summary.json, else train_metrics.json (what a run stopped before experiments left)."""
    rep, cmd = runs / name / "reports", run_command(name, runs)
    summary = next((p for p in (rep / "summary.json", rep / "train_metrics.json") if p.exists()), None)
    exp = rep / "experiments.json"
    out = [Table("Held-out test queries", summary, cmd, t_run_test), Table("Cold start", summary, cmd, t_run_cold),
           Table("Labels against human grades", summary, cmd, t_run_labels),
           Table("Experiments (arms over seeds)", exp if exp.exists() else None, cmd, t_run_experiments)]
    evals = sorted(rep.glob("evaluate_*.json")) or [None]
    return out + [Table(f"Never-seen dataset (`{p.name if p else 'evaluate_esci.json'}`)", p, cmd, t_run_evaluate,
                        EVALUATE_NOTE) for p in evals]


def run_names(runs: Path) -> list[str]:
    """The runs the docs report (default, homedepot), then any other run directory that has reports."""
    found = sorted(p.parent.parent.name for p in runs.glob("*/reports/*.json"))
    return list(dict.fromkeys(["default", "homedepot", *found]))


# --- the page ---------------------------------------------------------------------------------------------------

HEADER = """# Measured results

Generated by `python -m bench.report` (`make report`) from the JSON that `make bench` writes under
`{results}/` and `ltr run` writes under `{runs}/<run>/reports/`; edit the benchmarks, not this page. Every table
says the commit, date and machine its figures were measured on. Results that missed their goal stay here.
"""


def section(t: Table) -> list[str]:
    """One table with its provenance line, or the command that would measure it."""
    out = [f"{t.level} {t.title}", ""] + ([t.what, ""] if t.what else [])
    if t.path is None:
        return out + [f"not measured yet: run `{t.command}`", ""]
    doc = load(t.path, t.command)
    try:
        body = t.render(doc)
    except Malformed:
        raise
    except (TypeError, ValueError, AttributeError) as e:
        raise Malformed(f"{t.path}: a field has an unexpected type ({e}). Fix: {doc.fix}") from None
    return out + [provenance(doc, t.path), ""] + body + [""]


def bench_sections(b: Bench, results: Path, out_dir: Path) -> list[str]:
    """A bench's table, one per file where its JSON is a family (bench_cold_route_<run>.json), and its plot."""
    command = b.command.format(results=results)
    files = sorted(results.glob(b.file))
    if len(files) <= 1:
        out = section(Table(b.title, files[0] if files else None, command, b.render, b.what, "##"))
    else:
        out = [f"## {b.title}", ""] + ([b.what, ""] if b.what else [])
        for f in files:
            out += section(Table(f"`{f.name}`", f, command, b.render))
    if files and b.image and Path(b.image).exists():
        out += [f"![{b.title}]({os.path.relpath(b.image, out_dir)})", ""]
    return out


def run_section(name: str, runs: Path) -> list[str]:
    """A run's tables; one line when the run has written no report at all."""
    head = [f"## Run `{runs / name}`", ""]
    if not list((runs / name / "reports").glob("*.json")):
        return head + [f"not measured yet: run `{run_command(name, runs)}`", ""]
    return head + [line for t in run_tables(name, runs) for line in section(t)]


def render_page(results: Path, runs: Path, out_dir: Path = Path("docs")) -> tuple[str, list[str]]:
    """The page's Markdown and the malformed-JSON messages (the page is only written when there are none)."""
    index = results / "index.json"
    parts = [lambda b=b: bench_sections(b, results, out_dir) for b in BENCHES]
    parts.append(lambda: section(Table("Last `make bench`", index if index.exists() else None, "make bench",
                                       t_index, level="##")))
    parts += [lambda name=name: run_section(name, runs) for name in run_names(runs)]
    lines, errors = [HEADER.format(results=results, runs=runs)], []
    for part in parts:
        try:
            lines += part()
        except Malformed as e:
            errors.append(str(e))
    return "\n".join(lines).rstrip() + "\n", errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("bench/results"), help="where `make bench` writes JSON")
    ap.add_argument("--runs", type=Path, default=Path("runs"), help="directory of `ltr run` outputs")
    ap.add_argument("--out", type=Path, default=Path("docs/results.md"))
    a = ap.parse_args(argv)
    page, errors = render_page(a.results, a.runs, a.out.parent)
    if errors:
        print("bench.report: page not written, malformed JSON:\n" + "\n".join(f"  {e}" for e in errors),
              file=sys.stderr)
        return 2
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(a.out.suffix + ".tmp")
    tmp.write_text(page)
    os.replace(tmp, a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
