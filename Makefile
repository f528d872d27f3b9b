# The two commands a newcomer needs: `make run` (the demo service) and `make test` (everything).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install clean bench

run: $(STAMP)
	$(BIN)/kinwire serve --demo

# Four test processes on two cores: most of the suite waits on real time (minutes billed,
# outages, browsers). With 908 tests, three processes took 14.5 min with the CPU 63% busy
# (user+sys 18.2 min); four took 11.9 min of pytest, 70% busy (2026-12-06, quiet machine).
test: $(STAMP)
	scripts/system-deps.sh
	$(BIN)/ruff check .
	$(BIN)/pytest -n 4 --dist loadfile --durations=25

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
