# Downstream: `make run` and `make test` are all a new machine needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PG_URL ?= postgres://postgres@127.0.0.1:5432/downstream
REDIS_TEST_URL ?= redis://127.0.0.1:6379/15

.PHONY: install run test test-postgres test-future lint bench clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $@

install: $(VENV)/.installed

## web + worker on SQLite with demo data; prints the URL and a login
run: install
	@PY=$(PY) ./scripts/run

## ruff: pyflakes, pycodestyle, import order and bug-prone patterns, and the code's format (pyproject.toml)
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## the whole suite on SQLite, ORM broker: no service needed
test: install
	DATABASE_URL=sqlite:///$(CURDIR)/var/downstream-test.sqlite3 REDIS_URL= $(PY) -m pytest $(ARGS)

## the same suite on this machine's PostgreSQL with the Redis broker
test-postgres: install
	DATABASE_URL=$(PG_URL) REDIS_URL=$(REDIS_TEST_URL) $(PY) -m pytest $(ARGS)

## the suite (browser tests aside) on SQLite with every Python process's wall clock a year
## ahead (tests/clock_ahead/sitecustomize.py): no test may depend on the date it runs on
test-future: install
	DATABASE_URL=sqlite:///$(CURDIR)/var/downstream-test-future.sqlite3 REDIS_URL= DOWNSTREAM_CLOCK_AHEAD_DAYS=365 \
		PYTHONPATH=$(CURDIR)/tests/clock_ahead $(PY) -m pytest -m "not browser" $(ARGS)

clean:
	rm -rf $(VENV) var/*.sqlite3* var/test-artifacts .pytest_cache
