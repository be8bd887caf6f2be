# wsgate: `make run` starts the gateway on the embedded defaults, `make test` runs everything.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The test OIDC identity provider (a Node.js project); its tests skip locally without npm.
IDP_MODULES := tests/idp/node_modules/.package-lock.json
NPM := $(shell command -v npm 2>/dev/null)

.PHONY: run test lint typecheck bench clean install

$(BIN)/python:
	$(PY) -m venv $(VENV)

# The hot path is compiled at install (setup.py): a change to it reinstalls.
HOT_PATH := gateway/proxy.py gateway/http1.py gateway/wsframes.py gateway/guard.py gateway/metrics.py

$(STAMP): $(BIN)/python pyproject.toml setup.py $(HOT_PATH)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(IDP_MODULES): tests/idp/package-lock.json
ifneq ($(NPM),)
	$(NPM) ci --prefix tests/idp --no-audit --no-fund
else
	@echo "npm not found: tests/idp/node_modules not installed (the OIDC tests skip, or fail in CI)"
endif

run: $(STAMP)
	$(BIN)/wsgate serve --dev-login $(if $(CONFIG),--config $(CONFIG))

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) $(IDP_MODULES)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
