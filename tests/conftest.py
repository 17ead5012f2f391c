import os

# Tests never need an accelerator (a GPU/TPU run is opt-in: unset this yourself).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


@pytest.fixture(params=["bwrap", "unshare"])
def ns_level(request):
    """Each namespace isolation level of the code sandbox, skipped where this machine lacks it."""
    import cts.verifiers.sandbox as sb

    ok, why = sb._probe(request.param)
    if not ok:
        pytest.skip(f"isolation level {request.param!r} unavailable here: {why}")
    return request.param


@pytest.fixture
def x64():
    """float64 for the duration of a test (finite-difference gradient checks), then restored."""
    import jax

    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)
