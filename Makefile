# The few commands people type. `make help` lists them.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup run smoke compare exp-show test test-fast test-scale-out lint clean-smoke

help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.lock
	$(PYTHON) -m pip install --quiet --no-deps -e ".[dev]"
	touch $@

# dvc.yaml's stages run `python`, found on PATH: this .pth puts .venv/bin first on PATH for every program of
# the environment, so `.venv/bin/dvc repro` runs the stages in .venv without activating it (scripts/venv_on_path.pth).
VENV_PATH_HOOK = $(VENV)/.venv_on_path.installed
$(VENV_PATH_HOOK): scripts/venv_on_path.pth $(VENV)/.installed
	cp scripts/venv_on_path.pth "$$($(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/imgclf_venv_on_path.pth"
	touch $@

setup: $(VENV)/.installed $(VENV_PATH_HOOK) ## create .venv with the pinned dependencies (first use only)

# Through imgclf.dvc_cli, which refuses an alias bomb in params.yaml before DVC parses it (imgclf/config.py).
run: setup ## the main job: the whole pipeline, rerunning only what changed (dvc repro)
	$(PYTHON) -m imgclf.dvc_cli repro

smoke: setup ## all stages on tiny synthetic data in smoke/, default results untouched
	$(PYTHON) -m imgclf smoke --dir smoke

ui: setup ## the MLflow UI on the project's store; prints the address that opens on the training runs
	$(PYTHON) -m imgclf ui $(ARGS)

compare: setup ## experiments side by side: state, the params that differ, both accuracies, McNemar p (120 columns)
	$(PYTHON) -m imgclf.evaluation.experiments_table $(ARGS)

# DVC's own table has a column for every param, metric and dependency (over 200). This form keeps the columns whose
# values differ (--only-changed), then drops (DVC joins the --drop patterns, each matched at a column's start) the
# creation time, the executor and every dependency (each path has a slash), and every metric but the two test
# accuracies: those of results/evaluate/metrics.json per model, then of results/analysis/summary.json. --keep shows
# both accuracies even when equal. Tests check that it drops no key of params.yaml and keeps no other metric, and
# that it fits 200 columns.
EXP_SHOW_FORM := --only-changed \
	--drop 'Created|Executor|.*/' \
	--drop '(scratch|transfer)\.(loss|top5_accuracy|macro_|weighted_|ece|temperature|accuracy_calibrated)' \
	--drop '(scratch|transfer)\.(test_images|images_per_second|parameter_count|model_size_mb|degenerate)' \
	--drop 'test_images|both_|only_|(scratch|transfer)_accuracy|accuracy_difference|mcnemar|comparison_meaningful' \
	--drop 'train_test_duplicates|duplicates_within_|excluded_from_training|accuracy_(deduplicated|on_duplicates)' \
	--drop 'deduplicated\.' \
	--keep 'scratch\.accuracy$$|transfer\.accuracy$$'

exp-show: setup ## `dvc exp show` in 200 columns: state, the params that changed, both test accuracies
	dvc exp show $(EXP_SHOW_FORM) $(ARGS)

# One pytest-xdist worker per logical CPU. `loadfile`: a test module runs whole on one worker, so a module-scoped
# fixture (a reference training, a remote, DVC in the shared pipeline run) is built once and never used by two
# workers at a time. (Not `loadgroup`: with pytest 9.2, pytest-xdist 3.8's `xdist_group` is silently ignored; it sets
# `item._nodeid`, which pytest no longer reads.) Modules are dealt in the order tests/plugins/scheduling.py sorts the
# tests (long first): xdist must not reorder them by size.
PYTEST_PARALLEL := -n logical --dist loadfile --no-loadscope-reorder --durations=15

test: setup ## the test suite, in parallel on every core (all but the scale-out tier)
	$(PYTHON) -m pytest $(PYTEST_PARALLEL) -m "not scale_out"

# Multi-process training over JAX, the mirrored strategy, and MLflow servers on SQLite and on a real PostgreSQL:
# 5-9 minutes on 2 cores, so apart from `make test` (whose budget is 8); .ci/run runs it after `make test`;
# run it when changing training/distributed.py, tracking or the store.
test-scale-out: setup ## the scale-out tier: two JAX workers through the real stages, a PostgreSQL team store
	$(PYTHON) -m pytest $(PYTEST_PARALLEL) -m scale_out

# The unit tier: no training, no DVC, no stage or server subprocess, no pipeline run (markers: pyproject.toml).
test-fast: setup ## the unit tests only (no slow or integration tests): under 2 minutes
	$(PYTHON) -m pytest $(PYTEST_PARALLEL) -m "not slow and not integration"

lint: setup ## ruff, and import-linter (imports follow the pipeline)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

clean-smoke: ## remove the smoke run's copy
	rm -rf smoke
