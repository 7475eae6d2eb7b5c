# One entry point for users and CI. `make test` runs everything; `make test-fast` skips the slow marker;
# `make lab` opens the notebooks in JupyterLab on the same environment.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
LAB_STAMP = $(VENV)/.installed-lab

.PHONY: install test test-fast bench reproduce lab clean

PROFILE ?= paper
# The fast tests run on two pytest-xdist workers (TEST_JOBS=auto: one per core; 0: one process):
# 162 s against 187-196 s in one process. `make test` runs them so, then the slow tests in one
# process: their reproductions already keep every core busy (on two workers the whole suite took
# 1,807 s against ~1,180 s: docs/measurements.md, "The test suite's duration").
TEST_JOBS ?= 2

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests -m "not slow" -n $(TEST_JOBS); fast=$$?; \
	$(PY) -m pytest tests -m slow; slow=$$?; \
	test $$fast -eq 0 && test $$slow -eq 0

test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not slow" -n $(TEST_JOBS)

# Executes every notebook in order with papermill (PROFILE=paper needs CIFAR-10; PROFILE=smoke
# runs offline on generated data). ONLY=02 runs one notebook.
reproduce: $(STAMP)
	$(PY) -m fa_nb_utils.reproduce --profile $(PROFILE) $(if $(ONLY),--only $(ONLY),) \
		$(if $(EXECUTOR),--executor $(EXECUTOR),) $(if $(WORKERS),--workers $(WORKERS),) \
		$(if $(THREADS),--threads $(THREADS),)

# JupyterLab comes from the optional extra `lab` (pyproject.toml), installed into $(VENV) on first use
# only, so `make test` stays lean. The kernel is this environment's Python; a notebook's relative
# results_dir is under the project root, as with `make reproduce`. fa_nb_utils.lab opens notebooks/
# (with --allow-root when run as root, as in a container); LAB_ARGS go to JupyterLab.
$(LAB_STAMP): $(STAMP)
	$(PY) -m pip install -e '.[lab]'
	touch $(LAB_STAMP)

lab: $(LAB_STAMP)
	$(PY) -m fa_nb_utils.lab $(LAB_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
