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

.PHONY: install browser run run-https status test test-gpu lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e ".[diffusion,tts,music,realtime,dev]"
	$(PIP) install -q --no-deps ultralytics==8.4.190  # YOLO; --no-deps: see the realtime extra
	touch $(STAMP)

install: $(STAMP)

browser:  ## Debian's Chromium for the browser tests (a system package; never a browser download)
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "chromium is not installed: the browser tests will skip"

run: $(STAMP)  ## install, then serve configs/dev.yaml (CPU, tiny models) on http://127.0.0.1:8000
	$(VENV)/bin/serve run configs/dev.yaml

run-https: $(STAMP)  ## the same app over HTTPS on https://127.0.0.1:8443 (a dev certificate is made on first run)
	$(PY) -m serve_app.tls serve configs/dev.yaml --port 8443

status: $(STAMP)  ## serve status and serve config of the running app (Ray 2.60 clusters want their token)
	RAY_AUTH_MODE=token $(VENV)/bin/serve status
	RAY_AUTH_MODE=token $(VENV)/bin/serve config

test: $(STAMP) browser  ## install, then run the test suite (GPU tests skip without a GPU)
	$(PY) -m pytest -q

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu tests/gpu

lint: $(STAMP)
	$(VENV)/bin/ruff check serve_app components deployments tests bench
	$(VENV)/bin/mypy serve_app components deployments

bench: $(STAMP)  ## served vs bare for every GPU service (on a GPU machine)
	$(PY) bench/served_vs_bare.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
