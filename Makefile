# The two commands a new machine needs: `make run` and `make test`.
# With DATABASE_URL and REDIS_URL unset, both use the embedded Postgres and Redis under ./var/.
SHELL := /bin/bash
PY := .venv/bin/python
STAMP := .venv/.installed-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)
BENCH_STAMP := .venv-bench/.installed-$(shell cat requirements.txt requirements-dev.txt requirements-bench.txt | sha1sum | cut -c1-12)

.PHONY: run not-running test test-e2e lint format install services migrate version stop bench bench-peers clean-var

$(STAMP):
	python3 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	.venv/bin/pip install --quiet -r requirements-dev.txt
	rm -f .venv/.installed-*
	touch $@

install: $(STAMP)

version: install
	@$(PY) -m aipb.buildinfo

# Starts the embedded servers when the URLs are unset; production and CI set the URLs.
services: install
	@if [ -z "$$DATABASE_URL" ] && [ -z "$$REDIS_URL" ]; then $(PY) -m aipb.embedded up; fi

migrate: services
	$(PY) manage.py migrate --noinput

# A second `make run` says so and stops here, before migrating or collecting anything.
not-running: install
	@$(PY) -m aipb.run check

# aipb.run is exec'd: no shell stays between make and it, and it stops the embedded servers itself,
# so Ctrl-C, SIGTERM to the group and a closed terminal (SIGHUP) all leave nothing running.
run: not-running migrate version
	-$(PY) manage.py usage prices sync  # a failed AI_PRICES_AUTO_UPDATE fetch must not stop the start
	$(PY) manage.py bootstrap_admin
	$(PY) manage.py collectstatic --noinput -v 0
	@exec $(PY) -m aipb.run

# Tests flush their Redis database: in embedded mode they get database 15 of the embedded server,
# never the one `make run` uses; with REDIS_URL set, point it at a database you can lose.
# The fault drills and the load test (tests/e2e) bring their own private Postgres and Redis, which
# they restart and flush, and run last.
TEST_ENV = set -a; \
  if [ -z "$$DATABASE_URL" ] && [ -z "$$REDIS_URL" ]; then . var/embedded.env; REDIS_URL="$${REDIS_URL%db=0}db=15"; fi; \
  DJANGO_SECRET_KEY="$${DJANGO_SECRET_KEY:-test-only-secret-key}"; set +a

test: services version lint
	@$(TEST_ENV); $(PY) -m pytest $(PYTEST_ARGS)

# Only the fault drills and the load test, without lint (`make test` runs them too).
test-e2e: services version
	@$(TEST_ENV); $(PY) -m pytest tests/e2e $(PYTEST_ARGS)

lint: install
	.venv/bin/ruff check .
	.venv/bin/lint-imports --no-cache
	.venv/bin/ruff format --check .

format: install
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

# The app processes of a `make run` (its pid file is var/run.pid), then the embedded servers.
stop: install
	@$(PY) -m aipb.run stop
	@$(PY) -m aipb.embedded down

bench: services version
	$(PY) -m bench.run_all

# The benchmark's peers (Celery with its thread and gevent pools) live in their own venv, .venv-bench, from
# requirements-bench.txt: never in requirements.txt or .venv. This runs bench.io_bound with ours and the peers.
$(BENCH_STAMP):
	python3 -m venv .venv-bench
	.venv-bench/bin/pip install --quiet --upgrade pip
	.venv-bench/bin/pip install --quiet -r requirements-bench.txt
	rm -f .venv-bench/.installed-*
	touch $@

bench-peers: services version $(BENCH_STAMP)
	.venv-bench/bin/python -c 'from bench import common; common.configure_env(); common.ensure_database()'
	.venv-bench/bin/python -m bench.io_bound $(BENCH_ARGS)
