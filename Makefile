# The two commands README.md starts with: `make demo` and `make test`. Each creates the virtual
# environment it needs (.venv) and installs the project with its test tools into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck imports unit lowest bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/gcmk-gateway demo $(ARGS)

test: lint typecheck imports unit

lint: $(BIN)/.installed
	$(BIN)/ruff check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy

imports: $(BIN)/.installed
	$(BIN)/lint-imports

# pytest's run ends by counting the skipped tests by reason (tests/conftest.py).
# Its exit code goes on as it is; 5 (no test collected) fails `make test` like any other.
unit: $(BIN)/.installed
	@rc=0; $(BIN)/python -m pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make unit: pytest collected no tests: that is a failure" >&2; fi; \
	exit $$rc

# The lowest dependency versions pyproject.toml allows (ci/lowest-constraints.txt), with the quick tests:
# a lower bound is a version that was tested. Its own venv, so the main one stays as resolved.
LOWEST := .venv-lowest
lowest:
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet --upgrade pip
	$(LOWEST)/bin/python -m pip install --quiet -c ci/lowest-constraints.txt -e '.[test]'
	$(LOWEST)/bin/python -m pytest -q -p no:cacheprovider tests/unit

bench: $(BIN)/.installed
	for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(LOWEST) .mypy_cache .ruff_cache .pytest_cache .hypothesis var
