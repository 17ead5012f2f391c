#!/bin/sh
# Runs on a fresh Cloud TPU VM, from the unpacked checkout, before the jobscript
# (cts/cloud/gcloud.py remote_job_command). Builds the pinned environment (make install: .venv
# from requirements.lock) and swaps the CPU jaxlib for the TPU build of the same JAX version.
# TPU VM images ship Python 3.10; the pipeline needs >= 3.12, fetched here with uv.
# Idempotent: a stamp file skips the work on a VM that already has it.
set -e
if [ ! -f .venv/.tpu-installed ]; then
  PY=$(command -v python3.12 || true)
  if [ -z "$PY" ]; then
    python3 -m pip install --user -q uv
    "$HOME/.local/bin/uv" python install 3.12
    PY=$("$HOME/.local/bin/uv" python find 3.12)
  fi
  make install PYTHON="$PY"
  JAX_VERSION=$(.venv/bin/python -c 'import jax; print(jax.__version__)')
  .venv/bin/pip install -q "jax[tpu]==${JAX_VERSION}"
  touch .venv/.tpu-installed
fi
