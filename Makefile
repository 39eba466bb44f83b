# The two commands: `make lab` and `make test`. Everything else here serves them.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
STAMP  := $(VENV)/.lepton-installed
# Where `make lab` keeps its policy, profiles, audit log and registry.
LAB_HOME ?= $(CURDIR)/.lepton
LAB_PORT ?= 8888
# Jupyter refuses to run as root unless told; containers and CI machines often are root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: lab test hub setup setup-test browser-deps bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip wheel

# torch's CPU wheel goes in first where there is no NVIDIA GPU: a plain `torch`
# requirement would otherwise pull a multi-GB CUDA build.
$(STAMP): pyproject.toml extension/package.json extension/yarn.lock $(BIN)/python
	@# The frontend is built from source: it needs Node.js (jlpm comes with JupyterLab).
	@if ! command -v node >/dev/null 2>&1; then \
		echo "installing nodejs from apt"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq nodejs npm >/dev/null; \
	fi
	@if ! command -v nvidia-smi >/dev/null 2>&1; then \
		echo "no nvidia-smi: installing the CPU build of torch"; \
		$(PIP) install --quiet torch==2.13.0; \
	fi
	PATH="$(CURDIR)/$(BIN):$$PATH" $(PIP) install --quiet -e ".[dev]"
	@# jsonschema's optional IRI format checker (pulled in by jupyter-events) compiles about
	@# 35 Earley grammars whenever jsonschema is imported: every Jupyter server, kernel that
	@# checks a profile and worker pays 1-2 s on a quiet machine, tens of seconds on a busy one.
	@# No schema of Jupyter's or Lepton's uses the iri formats it checks; jsonschema runs without it.
	$(PIP) uninstall --quiet -y rfc3987-syntax
	# Link the built frontend into the venv (an editable install does not copy it).
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/jupyter labextension develop --overwrite .
	touch $@

setup: $(STAMP)

# Chromium for the browser tests comes from Debian (never from playwright's downloader);
# iproute2 gives the network namespaces that stand in for edge hosts. The hub tests build
# their users' venv from Debian's python3 (python3-venv) and the control plane starts
# clusters as users through sudo.
browser-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v ip >/dev/null 2>&1 || missing="$$missing iproute2"; \
	[ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	[ -x /usr/bin/sudo ] || missing="$$missing sudo"; \
	/usr/bin/python3 -c "import ensurepip, venv" >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
		echo "installing from apt:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

setup-test: setup browser-deps

# The lab starts with the server extension and an embedded `local` cluster (2 cloud +
# 2 edge workers) owned by you, the admin of every team in the default policy.
# The notebooks open as copies under work/ (git-ignored, kept between runs): running them
# leaves the repository clean.
lab: setup
	mkdir -p $(LAB_HOME) work
	@for nb in notebooks/*.ipynb; do [ -e "work/$${nb##*/}" ] || cp "$$nb" work/; done
	LEPTON_HOME=$(LAB_HOME) LEPTON_AUTOSTART=local $(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) \
		--ServerApp.root_dir=$(CURDIR) $(ROOT_FLAG) work/quickstart.ipynb

# The team deployment on this machine (root): JupyterHub, the Lepton control plane as a Hub
# service and two analysts in two teams, all with throwaway accounts removed on Ctrl-C.
# Asks before creating accounts (HUB_YES=1 skips the question); HUB_PORT sets the port.
hub: setup-test
	$(BIN)/python tools/hub_demo.py

# Every suite runs even when one before it is red: lint (ruff), types (mypy), jest, the
# Python tests, then the server and browser tests, which each need a pytest process of
# their own. A table of counts ends the run. `make test SUITES=lint,types` runs a selection.
SUITES ?=
test: setup-test
	$(BIN)/python tools/run_suites.py $(if $(SUITES),--only $(SUITES))

# Every benchmark, one after another; each prints what it compares and writes JSON to
# bench/results/. The browser benchmark needs what `make test` installs (Chromium);
# bench/ssh.py needs root and openssh-server (network namespaces with their own sshd).
BENCHES := cluster server status_clusters registry startup ml train tune planner federated dashboard sidebar join ssh
bench: setup-test
	@for b in $(BENCHES); do echo "=== bench/$$b.py"; $(BIN)/python bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) build dist *.egg-info lepton_lab/labextension extension/lib extension/node_modules
