# One venv for everything; `make test` works on a fresh machine with only Python 3.11 and pip.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test test-compose up bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Everything but the Docker end-to-end test (that one needs an engine: `make test-compose`, run by .ci/run).
test: install
	$(BIN)/pytest -q -p no:cacheprovider -m 'not compose' $(PYTEST_ARGS)

test-compose: install
	$(BIN)/pytest -q -p no:cacheprovider -m compose -s $(PYTEST_ARGS)

up: install
	$(BIN)/webmodels up

bench: install
	$(BIN)/webmodels bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
