# Set-up and the two entry points. `make demo` and `make test` work on a fresh clone with only Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# reinstall when the project's dependencies change
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1 || $(PY) -m pip install --quiet torch torchvision
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# a real sweep (search + seeds + baselines, every class) on the digits shipped with scikit-learn; run it again to
# resume an interrupted one, DEMO_ARGS=--fresh to start over
demo: $(STAMP)
	$(PY) -m engine.sweep digits --name demo --pack 3 $(DEMO_ARGS)
	$(PY) -m analysis.tables sweeps/demo
	$(PY) -m analysis.report sweeps/demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench: $(STAMP)
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache
