# One venv for everything; `make test` works on a fresh machine with only Python 3.11 and pip.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test test-compose fuzz mutants up bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Everything but the Docker end-to-end test (that one needs an engine: `make test-compose`, run by .ci/run).
# TEST_WORKERS pytest-xdist workers: most tests wait on timeouts, so 4 share two cores (tests/conftest.py
# groups the quick bench on one worker and queues the long ones first); TEST_WORKERS=0 runs them in turn.
TEST_WORKERS ?= 4
test: install
	$(BIN)/pytest -q -p no:cacheprovider -m 'not compose' -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-compose: install
	$(BIN)/pytest -q -p no:cacheprovider -m compose -s $(PYTEST_ARGS)

# The long fuzz: the codec's hypothesis properties with the `fuzz` profile (FUZZ_EXAMPLES examples each) and
# every server against a mutated request corpus for FUZZ_SECONDS each. `make test` runs both, bounded.
FUZZ_EXAMPLES ?= 20000
FUZZ_SECONDS  ?= 60
fuzz: install
	HYPOTHESIS_PROFILE=fuzz WEBMODELS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) WEBMODELS_FUZZ_SECONDS=$(FUZZ_SECONDS) \
	$(BIN)/pytest -q -s -p no:cacheprovider --timeout 0 --hypothesis-show-statistics \
	    tests/test_unit_codec_fuzz.py tests/test_conformance_fuzz.py $(PYTEST_ARGS)

# Plant each bug of scripts/mutants.toml in a copy of the tree, run the tests meant to catch it, print the
# table; fails if one survives or a snippet no longer matches. When code moves, edit the table's `file` and
# `original` (`$(BIN)/python scripts/mutants.py --check` lists what no longer matches).
mutants: install
	$(BIN)/python scripts/mutants.py $(MUTANTS_ARGS)

# The lab, natively. First `webmodels` goes on the PATH of your next terminal (a link to .venv/bin/webmodels
# in ~/.local/bin, or /usr/local/bin as root: src/webmodels/pathlink.py), so the banner's and the README's
# commands work as printed in any shell. `.venv/bin/python -m webmodels.pathlink --remove` takes it away.
up: install
	@$(BIN)/python -m webmodels.pathlink
	$(BIN)/webmodels up $(UP_ARGS)

bench: install
	$(BIN)/webmodels bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
