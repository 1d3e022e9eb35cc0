"""The relevance workbench in a real browser, against the workbench issue's goals (#30).

    .venv/bin/python -m bench.bench_workbench --out bench/results [--screenshot docs/workbench.png]

Setup (built once under --work and reused): `ltr run` twice on a tiny built-in world with 20 candidates per
query (ltr/serving/workbench/demo.py: v1 champion, v2 challenger, 4 Optuna trials); the service built
by `ltr workbench`'s code (ltr.serving.workbench.serve: create_app with champion + challenger and the run's
Feast store, the workbench mounted, uvicorn on loopback) in its own process; Debian's headless Chromium
driven by Playwright on the same cores.

Measured in the browser, with the service warm (every query's page loaded once first):
  render       navigation start -> the page's lists in the DOM (DOMContentLoaded, the script's `ready`
               mark), two lists of 20 (champion and challenger, each result explained), every judged query
  correction   key press -> the label stored (POST through the label store) and the page updated, timed by
               the page from the request's start; >= 100 corrections
  slider       input event -> both lists re-scored, reordered and laid out
Peak RSS: the server process's (VmHWM) and this process's (the Playwright driver).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np

from ltr.data.provenance import stamp

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
GOALS = {"render_p99_ms": 300, "correction_p99_ms": 50, "slider_p99_ms": 100}
TOKEN = "bench-token"


def _pcts(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, float)
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "max_ms": round(float(a.max()), 2), "mean_ms": round(float(a.mean()), 2), "n": len(a)}


def prepare(work: Path) -> dict:
    """The demo run with lists of 20, built once (a marker file says it finished)."""
    from ltr.serving.workbench.demo import build_demo_run

    done = work / "built.json"
    if done.exists():
        return json.loads(done.read_text())
    built = build_demo_run(work, "ltr-workbench-bench", world={"n_candidates": 20, "n_queries": 30})
    out = {k: str(v) for k, v in built.items()}
    done.write_text(json.dumps(out))
    return out


class Service:
    """`ltr workbench`'s server (ltr.serving.workbench.serve.open_workbench) in its own process, as a person
    runs it: the browser's driver here does not share a GIL with the service."""

    def __init__(self, built: dict, port: int) -> None:
        import subprocess
        import sys

        code = ("from ltr.serving.workbench.serve import open_workbench; "
                f"open_workbench({built['run_dir']!r}, model={built['champion']!r}, "
                f"challenger={built['challenger']!r}, port={port}, token={TOKEN!r}, "
                f"tracking_uri={built['tracking']!r})")
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.DEVNULL)

    def wait(self, timeout: float = 600) -> float:
        import httpx

        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the workbench server exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError("the workbench server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                GIT_PYTHON_REFRESH="quiet")


def _open(page, url: str) -> float:
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]", state="attached")
    return float(page.evaluate("window.__wb.ready"))


def measure_render(page, base: str, queries: list[str]) -> list[float]:
    for q in queries:  # warm: each query ranked once, templates compiled, assets cached
        _open(page, f"{base}/workbench?query={quote(q)}&right=challenger")
    return [_open(page, f"{base}/workbench?query={quote(q)}&right=challenger&n=20") for q in queries * 2]


def _corrections(page, base: str, queries: list[str], n: int) -> list[float]:
    """Corrections by key, ten per query page, until n; the page's own round-trip times."""
    times: list[float] = []
    while len(times) < n:
        for q in queries:
            _open(page, f"{base}/workbench?query={quote(q)}&right=challenger#token={TOKEN}")
            items = page.locator('ol.results[data-side="champion"] > li.result')
            k_max = min(10, items.count())
            for k in range(k_max):
                items.nth(k).focus()
                page.keyboard.press(str(k % 4))
                page.wait_for_selector(f"body[data-saves='{k + 1}']", state="attached")
            times += [float(x) for x in page.evaluate("window.__wb.saves")]
            if len(times) >= n:
                break
    return times


def measure_slider(page, base: str, queries: list[str]) -> list[float]:
    times: list[float] = []
    for q in queries[:5]:
        _open(page, f"{base}/workbench?query={quote(q)}&right=challenger")
        for w in [0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0, 0.5]:
            page.locator("#wb-blend").fill(str(w))
            page.wait_for_selector(f'body[data-blend="{w:g}"]', state="attached")
        times += [float(x) for x in page.evaluate("window.__wb.rerank")]
    return times


def run(out: Path, work: Path, n_corrections: int = 120, screenshot: Path | None = None) -> dict:
    from playwright.sync_api import sync_playwright

    from labels.human import HumanLabels, human_store_path
    from ltr.serving.workbench.runinfo import RunInfo
    from tests.fixtures.serving_world import free_port

    t0 = time.perf_counter()
    built = prepare(work)
    info = RunInfo.load(built["run_dir"])
    queries = [info.text_of(q) for q in info.judged_query_ids()]
    setup_s = time.perf_counter() - t0
    res: dict = {"benchmark": "relevance workbench in headless Chromium (bench/bench_workbench.py)", **stamp(),
                 "goals_set": GOALS, "judged_queries": len(queries), "list_length": 20,
                 "setup_seconds": round(setup_s, 1)}
    srv = Service(built, free_port())
    try:
        res["startup_s"] = round(srv.wait(), 1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            res["render"] = _pcts(measure_render(page, srv.url, queries))
            res["correction"] = _pcts(_corrections(page, srv.url, queries, n_corrections))
            res["slider"] = _pcts(measure_slider(page, srv.url, queries))
            if screenshot is not None:
                _open(page, f"{srv.url}/workbench?query={quote(queries[0])}&right=challenger")
                page.wait_for_selector("#wb-pareto[data-drawn=true]", state="attached")
                page.screenshot(path=str(screenshot))
                res["screenshot"] = str(screenshot)
            browser.close()
        res["server_rss_mb"] = _rss_mb(srv.proc.pid)
    finally:
        srv.stop()
    with HumanLabels(human_store_path(built["run_dir"])) as store:
        res["label_store_rows"] = store.state()["rows"]
    res["driver_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    res["goals_met"] = {"render_p99_ms<=300": res["render"]["p99_ms"] <= GOALS["render_p99_ms"],
                        "correction_p99_ms<=50": res["correction"]["p99_ms"] <= GOALS["correction_p99_ms"],
                        "slider_p99_ms<=100": res["slider"]["p99_ms"] <= GOALS["slider_p99_ms"]}
    res["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "bench_workbench.json.tmp"
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    tmp.replace(out / "bench_workbench.json")
    return res


def _rss_mb(pid: int) -> float | None:
    """Peak RSS (VmHWM) of the server process."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="directory for bench_workbench.json")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ltr-bench-workbench",
                    help="the demo run, built once here and reused")
    ap.add_argument("--corrections", type=int, default=120)
    ap.add_argument("--screenshot", type=Path, default=None, help="also save the page as a PNG here")
    a = ap.parse_args()
    os.environ.setdefault("LTR_MODEL_CACHE", str(a.work / "model-cache"))  # not the machine's caches
    os.environ.setdefault("LTR_EMBEDDING_CACHE", str(a.work / "embedding-cache"))
    r = run(a.out, a.work, a.corrections, a.screenshot)
    print(json.dumps({k: r[k] for k in ("render", "correction", "slider", "server_rss_mb", "goals_met")}, indent=2))


if __name__ == "__main__":
    main()
