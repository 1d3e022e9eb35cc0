"""The CLI's output: our lines, progress bars and other libraries' WARNINGs; no third-party DEBUG logs or
torch export warnings unless `ltr -v` (ltr/logs.py)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from ltr.logs import QuietFilter, quiet_warning

REPO = Path(__file__).resolve().parents[1]

# `ltr retrieve` builds a bm25s index (bm25s sets its logger to DEBUG at import); the library calls below are
# what made the DEBUG line show in `ltr run`: onnxruntime's quantizer calls logging.warning() on the root
# logger, which installs logging's default stderr handler. Here one library does it before the CLI starts and
# one while the job runs (just before the index is built), with a torch exporter log, a TracerWarning and a
# library's FutureWarning.
DRIVER = textwrap.dedent('''
    import logging, sys, warnings
    logging.warning("library-root-warning-before")
    import bm25s
    _index = bm25s.BM25.index

    def index(self, *a, **k):
        import torch
        logging.warning("library-root-warning-mid-run")
        logging.getLogger("torch.onnx._internal.exporter._registration").warning("torchvision-not-installed-note")
        warnings.warn("tracer-warning-note", torch.jit.TracerWarning)
        warnings.warn_explicit("future-warning-note", FutureWarning, "/x/site-packages/somelib/mod.py", 3)
        logging.getLogger("ltr.quiet_test").info("our-own-info-line")
        logging.getLogger("ltr.quiet_test").debug("our-own-debug-line")
        return _index(self, *a, **k)

    bm25s.BM25.index = index
    from ltr.cli import main
    sys.argv = ["ltr", *sys.argv[1:]]
    main()
''')


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("quiet")
    words = ["red", "blue", "cotton", "shirt", "wool", "sock", "lamp", "desk"]
    pd.DataFrame({"product_id": [f"p{i}" for i in range(24)],
                  "title": [f"{words[i % 8]} {words[(i * 3 + 1) % 8]} item {i}" for i in range(24)]}
                 ).to_parquet(d / "products.parquet")
    pd.DataFrame({"query_id": ["q0", "q1"], "query": ["red shirt", "wool sock"]}).to_parquet(d / "queries.parquet")
    (d / "driver.py").write_text(DRIVER)
    return d


def _retrieve(d: Path, *global_opts: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("LTR_VERBOSE", "TORCH_LOGS", "PYTHONWARNINGS")}
    res = subprocess.run([sys.executable, str(d / "driver.py"), *global_opts, "retrieve", "--dataset", str(d),
                          "--out", str(d / f"retrieved{len(global_opts)}.parquet")],
                         cwd=d, env=env, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert '"pairs"' in out, out[-3000:]  # the command's own summary
    return out


def test_cli_is_quiet_by_default_and_verbose_with_v(tiny):
    quiet = _retrieve(tiny)
    lines = quiet.splitlines()
    assert not [ln for ln in lines if "DEBUG:" in ln], quiet[-3000:]
    for hidden in ("torchvision-not-installed-note", "tracer-warning-note", "TracerWarning", "future-warning-note",
                   "our-own-debug-line"):
        assert hidden not in quiet, (hidden, quiet[-3000:])
    # still shown: another library's WARNING (before and during the run) and our own INFO
    for shown in ("WARNING:root:library-root-warning-before", "WARNING:root:library-root-warning-mid-run",
                  "INFO:ltr.quiet_test:our-own-info-line"):
        assert shown in quiet, (shown, quiet[-3000:])

    verbose = _retrieve(tiny, "-v")
    for shown in ("DEBUG:bm25s:Building index from tokens", "torchvision-not-installed-note", "TracerWarning",
                  "tracer-warning-note", "future-warning-note", "DEBUG:ltr.quiet_test:our-own-debug-line",
                  "WARNING:root:library-root-warning-mid-run"):
        assert shown in verbose, (shown, verbose[-3000:])


def _record(name: str, level: int, msg: str = "m", pathname: str = "x.py") -> logging.LogRecord:
    return logging.LogRecord(name, level, pathname, 1, msg, None, None)


@pytest.mark.parametrize("name, level, pathname, msg, shown", [
    ("bm25s", logging.DEBUG, "x.py", "Building index from tokens", False),
    ("feast", logging.INFO, "x.py", "m", False),
    ("feast", logging.WARNING, "x.py", "m", True),
    ("root", logging.WARNING, "/v/site-packages/bm25s/__init__.py", "m", True),
    ("root", logging.WARNING, "/v/site-packages/onnxruntime/quantization/quantize.py",
     "Please consider to run pre-processing before quantization. Refer to example: ...", False),
    ("ltr.serving.reload", logging.INFO, "x.py", "m", True),
    ("labels.openai", logging.DEBUG, "x.py", "m", False),
    ("features", logging.INFO, "x.py", "m", True),
    ("ltrx", logging.INFO, "x.py", "m", False),  # not ours: a prefix is not a package
])
def test_quiet_filter(name, level, pathname, msg, shown):
    assert QuietFilter().filter(_record(name, level, msg, pathname)) is shown


class TracerWarning(Warning):
    pass


TracerWarning.__module__ = "torch.jit._trace"  # where torch defines it


@pytest.mark.parametrize("category, filename, hidden", [
    (TracerWarning, "/v/site-packages/transformers/models/bert/modeling_bert.py", True),
    (UserWarning, "/v/lib/python3.11/site-packages/torch/onnx/_internal/exporter/_core.py", True),
    (UserWarning, "/v/lib/python3.11/site-packages/sklearn/base.py", False),
    (DeprecationWarning, "/v/lib/python3.11/site-packages/ibis/backends/duckdb/__init__.py", True),
    (FutureWarning, "/v/lib/python3.11/site-packages/pandas/core/frame.py", True),
    (UserWarning, str(REPO / "ltr" / "evaluate.py"), False),
    (FutureWarning, str(REPO / "features" / "lexical.py"), False),  # ours always show
])
def test_quiet_warning(category, filename, hidden):
    assert quiet_warning(category, filename) is hidden
