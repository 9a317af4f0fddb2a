# Set-up and entry points. `make demo` and `make test` create .venv on first use.
VENV ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: demo test test-all lint bench results clean

# the project itself is installed editable (pyproject.toml), so that scripts/ import its modules
$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

demo: $(VENV)/.installed
	PYTHON=$(PYTHON) bash scripts/demo.sh

test: $(VENV)/.installed
	$(PYTHON) -m pytest -q tests

test-all: $(VENV)/.installed
	$(PYTHON) -m pytest -q -m "slow or not slow" tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

results: $(VENV)/.installed
	$(PYTHON) scripts/reproduce.py --discussion=docs/RESULTS-discussion.md --comparison_discussion=docs/COMPARISON-discussion.md --table2_models=Linear3NoBias,Linear5NoBias

bench: $(VENV)/.installed
	PYTHON=$(PYTHON) bash bench/run_all.sh

clean:
	rm -rf demo_runs .pytest_cache
