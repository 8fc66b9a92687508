# mmpretrain: `make demo` and `make test` do all the set-up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done

.PHONY: setup test test-all demo bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/setup.sh
	bash scripts/setup.sh
	touch $@

## fast suite: 2 workers, no slow or gpu tests
test: setup
	$(PY) -m pytest -n 2

## everything but gpu tests
test-all: setup
	$(PY) -m pytest -n 2 -m "not gpu"

demo: setup
	$(VENV)/bin/mmpt demo

## every scripts/bench_*.py in its --quick form; each prints a JSON object as its last line
bench: setup
	@set -e; found=0; for script in scripts/bench_*.py; do \
		[ -e "$$script" ] || continue; found=1; echo "== $$script --quick"; $(PY) "$$script" --quick; \
	done; [ $$found = 1 ] || echo "no benchmark scripts yet (scripts/bench_*.py)"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
