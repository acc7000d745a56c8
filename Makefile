# One task runner. CI calls `make test` (through .ci/run).
.PHONY: install install-dev run stop lint typecheck test test-fast hostile bench clean

PY := .venv/bin/python
PORT ?= 7423

install:            ## install corral and what it needs (apt, runsc, venv, default image)
	scripts/setup

install-dev:
	scripts/setup --dev

run: install        ## start the server on 127.0.0.1:$(PORT) and show a sandbox at work
	scripts/quickstart

stop:               ## stop the server `make run` started
	scripts/quickstart --stop

lint: install-dev
	.venv/bin/ruff check src tests bench scripts
	.venv/bin/ruff format --check src tests bench scripts

typecheck: install-dev
	.venv/bin/mypy

test: lint typecheck  ## everything CI runs
	.venv/bin/pytest -n 2 --dist loadgroup

test-fast: install-dev
	.venv/bin/pytest -n 2 --dist loadgroup -m "not runsc"

hostile: install-dev  ## the hostile-workload cases alone; writes their table into docs/security.md
	CORRAL_HOSTILE_REPORT=docs/security.md .venv/bin/pytest -n 2 --dist loadgroup -m hostile tests

bench: install-dev  ## speed against the raw runsc floor; writes docs/benchmarks.md (BENCH_ARGS=--quick: minutes)
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
