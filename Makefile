# Two commands on a fresh machine:
#   make demo   installs everything, builds the demo collection and serves it
#   make test   installs everything and runs the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 5000
# MulticoreTSNE 0.1 passes a bare `--` to cmake >= 3.20 unless build_ext gets cmake_args.
MTSNE_CFG := $(CURDIR)/build/multicoretsne-setup.cfg
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install venv npm system demo serve test lint bench docs clean

install: venv npm system

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-dev.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	mkdir -p build && printf '[build_ext]\ncmake_args=-DCMAKE_BUILD_TYPE=Release\n' > $(MTSNE_CFG)
	command -v cmake >/dev/null || $(SUDO) apt-get install -y -qq cmake
	DIST_EXTRA_CONFIG=$(MTSNE_CFG) CMAKE_POLICY_VERSION_MINIMUM=3.5 \
		$(PY) -m pip install -q MulticoreTSNE==0.1
	$(PY) -m pip install -q --no-deps -e .
	touch $@

npm: static/node_modules/.installed
static/node_modules/.installed: static/package.json static/package-lock.json
	cd static && npm ci --no-audit --no-fund
	touch $@

# Debian packages: chromium for the browser tests, wrk and nginx for the load benchmark.
system:
	@missing=""; \
	for pair in chromium:chromium wrk:wrk nginx:nginx-light; do \
		command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; \
	fi

demo: install
	$(PY) run.py demo
	$(PY) run.py serve --host $(HOST) --port $(PORT)

serve: install
	$(PY) run.py serve --host $(HOST) --port $(PORT)

lint: venv
	$(VENV)/bin/ruff check mosaic server tests bench run.py

test: install lint
	$(PY) -m pytest -q

docs: venv
	COLUMNS=100 $(PY) -c "from mosaic.cli.main import help_markdown; print(help_markdown(), end='')" > docs/cli.md

bench: install
	$(PY) bench/pipeline_bench.py

clean:
	rm -rf $(VENV) build static/node_modules output demo_data test-artifacts
