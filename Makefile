# The two commands a newcomer needs: `make run` (the demo service) and `make test` (everything).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install clean bench

run: $(STAMP)
	$(BIN)/kinwire serve --demo

# Four test processes on two cores: most of the suite waits on real time (minutes billed,
# outages, browsers), and tests/conftest.py hands the modules out longest first with the heavy
# ones spread apart. 2026-12-06, 909 tests on this machine: 14.5 min of pytest before the
# suite was made cheaper (three processes; libfaketime's monotonic fix, assertion rewriting
# redone by every process, seconds of fixed waiting); 12.5 min with three after; 9.6 min with
# four. Four with the heavy modules together failed 3 timing tests (starved). 2026-12-07, on a
# host ~40-70% slower a core (bench/calibrate.py's round 0.69-0.85 s against 0.50 s): 12.4-15.4
# min, both cores 97% busy the whole run, so only less CPU makes it shorter (docs/BENCHMARKS.md).
# A session later, 0.70-1.02 s a round: 714-762 s of pytest with four (CPU 95-100% busy by
# vmstat); five took 763 s and starved a link test: four stays. The next session, at 0.51 s a
# round: 534-643 s of pytest (546 s, then 643 s an hour later at the same calibration), and
# 636 s for CI's whole run from a fresh clone, install included. 2026-12-07 (round 0.54 s):
# 606-622 s of pytest, CPU 93% busy on average (docs/BENCHMARKS.md, the suite's CPU by module);
# 617 s for CI's whole run with uv installing; with a busy loop beside it, 722 s.
# The suite writes bytecode even where the shell says not to (PYTHONDONTWRITEBYTECODE=1 on this
# machine): without it every test process re-rewrote ~280 plugin modules' assertions (pytest
# start 3.8 s -> 2.0 s) and every spawned server recompiled the project (1.23 s -> 1.03 s).
test: export PYTHONDONTWRITEBYTECODE =
test: $(STAMP)
	scripts/system-deps.sh
	$(BIN)/ruff check .
	$(BIN)/pytest -n 4 --dist loadfile --no-loadscope-reorder --durations=25

lint: $(STAMP)
	$(BIN)/ruff check .

# All benchmark scenarios, up to 3 runs each within 14 minutes (docs/BENCHMARKS.md): results.json + charts.
bench: $(STAMP)
	$(BIN)/python -m bench.run

install: $(STAMP)

# uv (Astral's installer, from PyPI) rather than pip: the same packages (pip freeze compared)
# in 13-17 s instead of 34 s from a fresh clone, 2026-12-07; bytecode compiled at install, as
# pip did, so four test processes do not each compile the same modules on their first import.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'uv>=0.9,<1'
	$(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode -e '.[test,bench]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) data .pytest_cache
