# Developer commands. `make test` is the one CI runs (.ci/run): it installs what
# the tests need, then lints, type-checks and runs the test suite.
PYTHON ?= python3

.PHONY: install test lint typecheck pytest demo

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[test]"

lint:
	ruff check .
	ruff format --check .

typecheck:
	.ci/typecheck

pytest:
	$(PYTHON) -m pytest

test: install lint typecheck pytest

demo:
	anonstream demo
