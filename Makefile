# Set-up, tests, lint and the demo. Everything runs from the repo's own .venv.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup test test-slow lint format demo bench clean

setup: $(STAMP)

# torch + torchvision first (compressai imports torchvision; pip takes both from local disk),
# then the project with every extra. Re-runs only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --disable-pip-version-check -e '.[pipeline,eval,dev]'
	touch $(STAMP)

# pytest exits 5 when it collects nothing: not a failure for a fresh checkout.
test: setup
	$(PY) -m pytest -q -p no:cacheprovider; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

test-slow: setup
	OSCAR_SLOW=1 $(PY) -m pytest -q -m slow -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: setup
	$(VENV)/bin/oscar demo

# The full benchmark (minutes; run on an otherwise idle machine): docs/benchmarks/bench.{json,md}
bench: setup
	$(VENV)/bin/oscar bench

clean:
	rm -rf out .pytest_cache .ruff_cache
