# The two commands of the README. Both build .venv first if it is missing or stale.
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg
# OpenMP threads sleep instead of spinning while waiting: on a shared CPU spinning made forwards 10x slower.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: reproduce test env
env:
	@bash scripts/setup_env.sh

reproduce: env
	$(PY) -m neuronlib reproduce

test: env
	$(PY) -m pytest -q -p no:cacheprovider
