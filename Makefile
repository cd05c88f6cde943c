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

.PHONY: install venv npm browser loadtools demo serve test test-cpus lint bench bench-server docs clean

# What `make demo` needs: the Python packages and the viewer's npm packages.
install: venv npm

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-models.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	mkdir -p build && printf '[build_ext]\ncmake_args=-DCMAKE_BUILD_TYPE=Release\n' > $(MTSNE_CFG)
	command -v cmake >/dev/null || $(call apt_install,cmake)
	DIST_EXTRA_CONFIG=$(MTSNE_CFG) CMAKE_POLICY_VERSION_MINIMUM=3.5 \
		$(PY) -m pip install -q MulticoreTSNE==0.1
	$(PY) -m pip install -q --no-deps -e .
	touch $@

npm: static/node_modules/.installed
static/node_modules/.installed: static/package.json static/package-lock.json
	cd static && npm ci --no-audit --no-fund
	touch $@

# Debian packages, each only for the targets that use it.
apt_install = { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(1); }
browser:  # the browser tests (make test)
	command -v chromium >/dev/null || $(call apt_install,chromium)
loadtools:  # the load benchmark (make bench-server)
	command -v wrk >/dev/null || $(call apt_install,wrk)
	command -v nginx >/dev/null || $(call apt_install,nginx-light)

demo: install
	$(PY) run.py demo
	$(PY) run.py serve --host $(HOST) --port $(PORT)

serve: install
	$(PY) run.py serve --host $(HOST) --port $(PORT)

lint: venv
	$(VENV)/bin/ruff check mosaic server tests bench run.py

test: install browser lint
	$(PY) -m pytest -q

# The suite as a machine with CPUS cores would run it (os.cpu_count() faked, subprocesses too).
CPUS ?= 16
test-cpus: install browser
	PYTHONPATH=$(CURDIR)/tests/process_hooks MOSAIC_FAKE_CPUS=$(CPUS) $(PY) -m pytest -q

docs: venv
	COLUMNS=100 $(PY) -c "from mosaic.cli.main import help_markdown; print(help_markdown(), end='')" > docs/cli.md

bench: install
	$(PY) bench/pipeline_bench.py

bench-server: install loadtools
	$(PY) bench/load_server.py

clean:
	rm -rf $(VENV) build static/node_modules output demo_data test-artifacts
