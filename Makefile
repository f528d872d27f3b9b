# The two commands a newcomer needs: `make run` (the demo service) and `make test` (everything).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install clean bench

run: $(STAMP)
	$(BIN)/kinwire serve --demo

# Three test processes on two cores: most of the suite waits on real time (minutes billed,
# outages, browsers). With 908 tests (2026-12-06, quiet machine): three took 14.5 min of
# pytest with the CPU 63% busy; four took 11.9 and 13.2 min but failed 1 and 4 timing tests
# (the load starves them), so three it stays until the suite is made cheaper.
test: $(STAMP)
	scripts/system-deps.sh
	$(BIN)/ruff check .
	$(BIN)/pytest -n 3 --dist loadfile --durations=25

lint: $(STAMP)
	$(BIN)/ruff check .

# All benchmark scenarios, up to 3 runs each within 14 minutes (docs/BENCHMARKS.md): results.json + charts.
bench: $(STAMP)
	$(BIN)/python -m bench.run

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) data .pytest_cache
