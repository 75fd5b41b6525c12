# Two set-up targets (see README): `make run` and `make test`. Both create .venv and install
# into it; torch and torchvision are installed first, as a matched pair (torchvision from PyPI does not
# import beside any other torch build).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

# Ray: keep every port on loopback, no usage stats. (The dashboard keeps Ray's token auth.)
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install run test test-gpu lint bench-sana clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e ".[diffusion,tts,dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)  ## install, then serve configs/dev.yaml (CPU, tiny models) on http://127.0.0.1:8000
	$(VENV)/bin/serve run configs/dev.yaml

test: $(STAMP)  ## install, then run the test suite (GPU tests skip without a GPU)
	$(PY) -m pytest -q

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu tests/gpu

lint: $(STAMP)
	$(VENV)/bin/ruff check serve_app components deployments tests bench
	$(VENV)/bin/mypy serve_app components deployments

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
