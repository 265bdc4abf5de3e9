# ext-authz: the two commands of the README are `make run` and `make test`.
# Everything the tests need is installed here, into the project: Python packages into
# .venv, the IdP's npm packages into tests/idp/node_modules, and (when missing and
# running as root) the Debian packages for the browser test, the benchmarks and the
# forward-auth proxies (nginx-light has auth_request; caddy 2.6).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
APT_PACKAGES := chromium chromium-driver wrk nghttp2-client nginx-light caddy gdb
RUN_APT_PACKAGES := nginx-light caddy
PYTEST_ARGS ?=

.PHONY: all deps venv npm apt apt-run run test unit lint typecheck protos bench clean

all: test

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev]'
	touch $@

npm: tests/idp/node_modules/.package-lock.json
tests/idp/node_modules/.package-lock.json: tests/idp/package.json tests/idp/package-lock.json
	cd tests/idp && npm ci --no-audit --no-fund --loglevel=error

# Debian packages: only when missing, and only as root (CI and these machines run as root).
define apt_install
	@missing=""; \
	for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages (run as root to install):$$missing"; fi; \
	fi
endef

apt:
	$(call apt_install,$(APT_PACKAGES))

# `make run` fronts the demo with nginx and Caddy too; it needs only those two.
apt-run:
	$(call apt_install,$(RUN_APT_PACKAGES))

deps: venv npm apt

run: venv npm apt-run
	$(PY) -m tests.stack

test: deps lint typecheck
	$(PY) -m pytest -q $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest -q tests/unit

lint: venv
	$(VENV)/bin/ruff check ext_authz tests scripts bench

typecheck: venv
	$(VENV)/bin/mypy ext_authz

protos: venv
	$(PY) scripts/gen_protos.py

bench: deps
	$(PY) -m bench
	$(PY) -m bench.tables --json bench/results/tables.json

clean:
	rm -rf $(VENV) tests/idp/node_modules .pytest_cache .mypy_cache .ruff_cache
