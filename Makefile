# normlab: make sweep (run a study, then its table) and make test. `make help` lists all targets.
SHELL := bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXP ?= d2l_bn_lenet
ARGS ?=
# MLflow's usage telemetry off for every process make starts (the package sets it for its own too).
export MLFLOW_DISABLE_TELEMETRY ?= true

.DEFAULT_GOAL := help
.PHONY: help venv constraints data browser screenshots sweep table rerun test lint bench ui server clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "normlab needs Python >= 3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

venv: $(VENV)/.installed ## create .venv with the pinned packages, every transitive one pinned by constraints.txt (pip)

constraints: ## re-pin constraints.txt: a fresh venv resolves pyproject.toml's packages, its freeze is the file
	rm -rf .venv-pin && $(PYTHON) -m venv .venv-pin
	.venv-pin/bin/pip install -q -e '.[dev]'
	{ echo "# Every package normlab installs, transitive ones included: made by \`make constraints\`,"; \
	  echo "# used by \`make venv\` (pip install -c constraints.txt), so two fresh machines get the same stack."; \
	  .venv-pin/bin/pip freeze --exclude-editable; } > constraints.txt
	rm -rf .venv-pin

data: ## install Debian's dataset-fashion-mnist when root on Debian/Ubuntu (else torchvision downloads it)
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; fi

browser: ## install Debian's chromium + chromedriver for the UI test when root on Debian/Ubuntu (else it skips)
	@if ! { command -v chromium && command -v chromedriver; } >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; fi

# A study may have more grids than one product: experiments/<EXP>__<grid>.yaml run after its own,
# except named extra grids (<EXP>__extra_<name>.yaml), which run only when asked: EXTRA="<name> ...".
EXTRA ?=
GRIDS = $(EXP) $(filter-out $(EXP)__extra_%,$(patsubst experiments/%.yaml,%,$(wildcard experiments/$(EXP)__*.yaml))) \
	$(addprefix $(EXP)__extra_,$(EXTRA))

# The studies: experiments/<name>.yaml less the grids of one (<name>__<grid>.yaml).
STUDIES = $(sort $(foreach f,$(wildcard experiments/*.yaml),$(if $(findstring __,$(f)),,$(basename $(notdir $(f))))))
comma := ,
space := $(subst ,, )
# A study that does not exist: one line (make's own), before anything runs.
ifneq ($(filter sweep,$(MAKECMDGOALS)),)
ifeq ($(filter $(EXP),$(STUDIES)),)
$(error no study '$(EXP)'; the studies: $(subst $(space),$(comma)$(space),$(STUDIES)))
endif
endif

sweep: venv data ## run study EXP (default d2l_bn_lenet) over its grids (EXTRA= adds named extra grids), then its table; ARGS= adds overrides
	@status=0; for grid in $(GRIDS); do $(PY) -m normlab.train -m experiment=$$grid $(ARGS) || status=1; done; \
	$(PY) -m normlab.report $(EXP) && exit $$status

table: venv ## rebuild experiments/EXP/RESULTS.md (+ CSV) from MLflow alone
	$(PY) -m normlab.report $(EXP)

rerun: venv ## train a recorded run again (RUN_ID=<id> from the UI) and compare its final metrics
	@[ -n "$(RUN_ID)" ] || { echo "usage: make rerun RUN_ID=<run id>  (the run's page in the UI shows it)"; exit 2; }
	$(PY) -m normlab.rerun $(RUN_ID)

test: venv data browser lint ## ruff and the import contract, then the test suite in 2 processes
	$(PY) -m pytest -q -n 2 --dist loadgroup

bench: venv data ## speed ratios (median of 5 repeats): platform vs a plain loop, scratch vs native BN, logging, 1 vs N jobs, fused training (~31 min)
	$(PY) -m normlab.bench $(ARGS)

lint: venv ## ruff check, and the import contract (imports only downward: pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# The store: $MLFLOW_TRACKING_URI, else the project's mlflow.db (normlab.config says which, once).
STORE = $$($(PY) -c 'from normlab.config.paths import tracking_uri; print(tracking_uri())')

ui: venv ## the MLflow UI over the project's store on 127.0.0.1 (PORT, default 5000); prints each study's runs page
	@echo "MLflow UI: http://127.0.0.1:$${PORT:-5000}"
	@$(PY) -m normlab.ui http://127.0.0.1:$${PORT:-5000}  # each study's runs, in model-training mode
	$(VENV)/bin/mlflow ui --backend-store-uri "$(STORE)" --host 127.0.0.1 --port $${PORT:-5000}

server: venv ## an MLflow tracking server over the project's store on 127.0.0.1 (PORT, default 5001; HOST to expose)
	@echo "tracking server: http://$${HOST:-127.0.0.1}:$${PORT:-5001}  (export MLFLOW_TRACKING_URI=that URL)"
	$(VENV)/bin/mlflow server --backend-store-uri "$(STORE)" \
		--artifacts-destination "$(CURDIR)/mlartifacts" --host $${HOST:-127.0.0.1} --port $${PORT:-5001}

screenshots: venv data browser ## rerun the UI browser test, keeping its screenshots in docs/ (for the README)
	NORMLAB_SCREENSHOTS=$(CURDIR)/docs $(PY) -m pytest -q tests/test_ui.py -k browser

clean: ## remove Hydra outputs (keeps .venv and mlflow.db)
	rm -rf outputs multirun .pytest_cache .import_linter_cache
