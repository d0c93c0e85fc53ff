# The two commands of the README: `make run` starts the service, `make test` runs the whole suite.
# Both build their own virtual environment in .venv from pyproject.toml, at the versions of
# constraints.txt (`make lock` regenerates it): `make run` the runtime dependencies only,
# `make test` the test extra on top.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
PIP_INSTALL := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt
RUNTIME := $(VENV)/.installed-runtime
TESTING := $(VENV)/.installed-test

.PHONY: run test lint typecheck pytest openapi clean ci container-check deploy-check fresh-check lock

$(RUNTIME): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(PIP_INSTALL) -e .
	touch $@

$(TESTING): $(RUNTIME)
	$(PIP_INSTALL) -e '.[test]'
	touch $@

run: $(RUNTIME)
	$(BIN)/loss-service serve --host $(HOST) --port $(PORT)

test: lint typecheck pytest

lint: $(TESTING)
	$(BIN)/ruff check service tests bench scripts
	$(BIN)/ruff format --check service tests bench scripts

typecheck: $(TESTING)
	$(BIN)/mypy service tests

pytest: $(TESTING)
	$(BIN)/pytest

lock:
	bash scripts/lock.sh

openapi: $(RUNTIME)
	mkdir -p openapi && $(BIN)/loss-service openapi > openapi/openapi.json.tmp && mv openapi/openapi.json.tmp openapi/openapi.json

# CI (.ci/run) adds two checks to `make test`; both need root and network access to Debian's
# packages and PyPI, and install what they use (see docs/deployment.md).
ci: test deploy-check container-check

# Lints the Dockerfile and deploy/, renders deploy/k8s and validates it offline (a few seconds).
deploy-check:
	bash scripts/deploy_check.sh

# Builds the image with buildah against a locally made Debian base and serves requests from it.
container-check:
	bash scripts/container_check.sh

# `make test` in a fresh clone of the committed HEAD on a bare Debian stable (python3, make, git,
# curl): what a new user's first command meets. Root, podman, network; about 15 minutes.
fresh-check:
	bash scripts/fresh_clone_check.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
