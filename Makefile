# One entry point for users and CI. `make test` runs everything; `make test-fast` skips the slow marker.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: install test test-fast bench reproduce clean

PROFILE ?= paper

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not slow"

# Executes every notebook in order with papermill (PROFILE=paper needs CIFAR-10; PROFILE=smoke
# runs offline on generated data). ONLY=02 runs one notebook.
reproduce: $(STAMP)
	$(PY) -m fa_nb_utils.reproduce --profile $(PROFILE) $(if $(ONLY),--only $(ONLY),)

bench: $(STAMP)
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
