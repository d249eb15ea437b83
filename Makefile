# Lamina — the two commands a newcomer types are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# `make run` has its own venv with the server's libraries only (no test or lint tools).
RUN_VENV  := .venv-run
RUN_STAMP := $(RUN_VENV)/.installed
DATA   ?= ./lamina-data
# -n auto uses every core; CI has two. Branch coverage of src/lamina (pytest-cov combines
# the xdist workers' data). The 20 slowest tests are listed at the end: the next one to
# make cheaper (tests/conftest.py starts the heaviest first).
PYTEST_ARGS ?= -n auto --dist loadgroup --cov=lamina --cov-branch --cov-report=term --durations=20

.PHONY: install run dist test lint bench bench-load clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[server,dev]'
	touch $(STAMP)

$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(RUN_VENV)
	$(RUN_VENV)/bin/pip install --quiet --upgrade pip
	$(RUN_VENV)/bin/pip install --quiet -e '.[server]'
	touch $(RUN_STAMP)

# The whole development checkout: the server's libraries and the dev tools.
install: $(STAMP)

run: $(RUN_STAMP)
	$(RUN_VENV)/bin/lamina server --data $(DATA)

# A wheel and an sdist in dist/.
dist: $(STAMP)
	$(BIN)/python -m build --outdir dist .

# pytest exits 5 when it collected no tests: a run that tested nothing fails, and says so.
# Bytecode is written (into the ignored __pycache__ folders) even where the environment
# sets PYTHONDONTWRITEBYTECODE, as CI's does: otherwise every `lamina server` and `lamina`
# process a test starts compiles all of src/lamina again (~0.5 s of CPU each), and every
# xdist worker rewrites every test module's asserts again.
test: $(STAMP)
	@env -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# Lamina's own modules byte-compiled first, as installing its wheel does: an editable
# install under PYTHONDONTWRITEBYTECODE (set on the bench host) compiles them again in
# every command (~30 ms of CPU for `snapshot create`'s 55 modules), which restic and
# borg (installed packages) do not pay.
bench: $(STAMP)
	$(BIN)/python -m compileall -q src
	$(BIN)/python -m bench.run && $(BIN)/python -m bench.e2e && $(BIN)/python -m bench.migrate && $(BIN)/python -m bench.startup
	$(BIN)/python -m bench.report --readme

bench-load: $(STAMP)
	$(BIN)/python -m compileall -q src
	$(BIN)/python -m bench.load --pg-s3

clean:
	rm -rf $(VENV) $(RUN_VENV) dist build .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.*
