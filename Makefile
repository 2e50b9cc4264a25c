# The two commands of the README. Both build .venv first if it is missing or stale.
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: reproduce test env
env:
	@bash scripts/setup_env.sh

reproduce: env
	$(PY) -m neuronlib reproduce

test: env
	$(PY) -m pytest -q -p no:cacheprovider
