# make demo: set up .venv and run a real batch over examples/ ; make test: set up and run the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := demo

.PHONY: help demo test bench clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)  ## generate sample images and run a real batch over them
	$(BIN)/python examples/make_samples.py examples/generated
	rm -rf $(DEMO)
	BATCHCLI_HOME=$(DEMO)/home $(BIN)/batchcli start examples/generated --out $(DEMO)/web \
		--pipeline-file examples/web.toml --name demo; rc=$$?; test $$rc -le 1
	BATCHCLI_HOME=$(DEMO)/home $(BIN)/batchcli status demo --items
	@echo "outputs are in $(DEMO)/web; try: BATCHCLI_HOME=$(DEMO)/home $(BIN)/batchcli status demo --json"

# pytest-xdist: two test processes per CPU. The tests start thousands of CLI, runner and worker processes
# and wait on them, so one per CPU leaves CPUs idle: on 2 cores, lightly loaded, 4 took 223 s where 2 took
# 255 s (10% more CPU time); on a busy machine they were even (357 s against 342 s). JOBS=N to choose.
JOBS ?= $(shell echo $$(( 2 * $$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 1) )))
# compileall first: the package is installed editable, so with PYTHONDONTWRITEBYTECODE set (as on CI) every
# CLI, runner and worker process the tests start would compile batchcli from source (about 20% of the suite's
# CPU time). It writes only what is stale. pytest, for its part, keeps the test modules it has rewritten (for
# its assert messages) only where bytecode may be written: allowed, each test process collects the suite in
# 2.2 s of CPU instead of 5.7 s from the second run on.
test: $(STAMP)  ## lint, then run the whole test suite
	$(BIN)/ruff check batchcli tests benchmarks examples
	$(BIN)/python -m compileall -q batchcli
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n $(JOBS)

bench: $(STAMP)  ## run the benchmarks (minutes; prints tables)
	$(BIN)/python benchmarks/bench_core.py

clean:  ## remove the venv, demo output and caches
	rm -rf $(VENV) $(DEMO) examples/generated .pytest_cache
