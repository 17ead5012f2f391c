import os

# Tests never need an accelerator (a GPU/TPU run is opt-in: unset this yourself).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
