"""Orbax checkpoints of the training state, kept outside Snakemake's outputs.

Snakemake deletes a job's outputs before it reruns it, so checkpoints live under
`paths.checkpoints/<task>/<method>/seed<k>/<state digest>/` and a rerun of a killed job resumes
from the latest complete one (Orbax writes to a temp dir and renames on commit: a SIGKILL mid-save
leaves no half-checkpoint that could be restored). The state digest (`state_dir`) covers the
resolved config of the job and the content of its inputs, so a job resumes only from a state that
the same config and the same inputs produced; an edited config starts a fresh directory at step 0.
A latest checkpoint that cannot be read (truncated by a full disk, a copy cut short) is skipped
with a warning naming its step, and the one before it is used.

Storage: every root and directory here may be a local path or a cloud URI (`gs://bucket/dir`);
URIs go to Orbax as `etils.epath.Path`s untouched (never through os.path.abspath), so a job
restarted on another machine finds the checkpoints its predecessor left in the bucket.

Several processes (cts.distributed): every process calls save/restore (Orbax coordinates them;
process 0 writes the metadata), each writing only the shards its devices hold.
`params_digest` is computed on the devices, so it never gathers a global array onto one host.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from cts.io import stable_json

__all__ = ["CheckpointStore", "is_uri", "load_params", "params_digest", "remove_stale_states", "save_params",
           "state_digest", "state_dir", "storage_path"]

STATE_DIR_RE = re.compile(r"^[0-9a-f]{16}$")


def is_uri(path: str | os.PathLike) -> bool:
    """True for a storage URI such as gs://bucket/dir (anything with a scheme)."""
    return "://" in os.fspath(path)


def storage_path(path: str | os.PathLike) -> epath.Path:
    """A local path made absolute, or a storage URI kept exactly as written, as an epath.Path."""
    path = os.fspath(path)
    return epath.Path(path if is_uri(path) else os.path.abspath(path))


def state_digest(config: dict, inputs: dict[str, str]) -> str:
    """sha256 of the resolved config that determines a job's state and its inputs' digests."""
    return hashlib.sha256(stable_json({"config": config, "inputs": inputs}).encode()).hexdigest()


def state_dir(root: str | os.PathLike, config: dict, inputs: dict[str, str]) -> tuple[str, str]:
    """(directory, digest): `<root>/<digest[:16]>`, the only place this state is saved or resumed."""
    digest = state_digest(config, inputs)
    return os.path.join(os.fspath(root), digest[:16]), digest


def remove_stale_states(root: str | os.PathLike, keep: Iterable[str], log: Callable[[str], None] = print) -> list[str]:
    """Delete every state directory (`<...>/<16 hex>/`) under root (local or gs://) not in `keep`."""
    keep = {str(storage_path(k)).rstrip("/") for k in keep}
    removed = []
    root_path = storage_path(root)
    if not root_path.is_dir():
        return removed
    stack = [root_path]
    while stack:
        for child in sorted(stack.pop().iterdir()):
            if not child.is_dir():
                continue
            if not STATE_DIR_RE.match(child.name):
                stack.append(child)
                continue
            path = str(child).rstrip("/")  # never descend into a state directory
            if path not in keep:
                child.rmtree()
                removed.append(path)
                log(f"removed {path if is_uri(path) else os.path.relpath(path)}")
    return removed


class CheckpointStore:
    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        self.directory = storage_path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._mngr = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def save(self, step: int, state: dict) -> None:
        """state: a pytree of arrays (params, optimizer state, rng, step counters)."""
        self._mngr.save(step, args=ocp.args.StandardSave(state), force=True)
        self._mngr.wait_until_finished()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def restore(self, step: int, like: dict) -> dict:
        """Restore into the structure (and dtypes) of `like`."""
        abstract = jax.tree.map(lambda x: ocp.utils.to_shape_dtype_struct(np.asarray(x))
                                if not hasattr(x, "sharding") else ocp.utils.to_shape_dtype_struct(x), like)
        return self._mngr.restore(step, args=ocp.args.StandardRestore(abstract))

    def restore_latest(self, like: dict, log: Callable[[str], None] = print) -> tuple[int | None, dict | None]:
        """(step, state) of the newest readable checkpoint, or (None, None) when there is none.

        A checkpoint that fails to restore is deleted with a warning naming its step, and the
        previous one is tried: resuming a little earlier costs a few steps, not the run."""
        for step in reversed(self.all_steps()):
            try:
                return step, self.restore(step, like)
            except Exception as e:  # noqa: BLE001 - TensorStore/Orbax raise many types for a torn file
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                log(f"WARNING: checkpoint step {step} in {self.directory} is unreadable ({first}); "
                    "deleting it and trying the previous one")
                torn = self.directory / str(step)
                if torn.exists():
                    torn.rmtree()
                self._mngr.reload()
        return None, None

    def close(self) -> None:
        self._mngr.close()


def save_params(directory: str | os.PathLike, params) -> None:
    """Final parameters only (what eval and downstream cells load), atomically committed."""
    directory = storage_path(directory)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(directory, params, force=True)
    ckptr.wait_until_finished()


def load_params(directory: str | os.PathLike, like):
    """Restore parameters saved by `save_params` into the structure of `like`."""
    directory = storage_path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no parameters at {directory}: rerun the job that writes them "
                                "(its checkpoint directory was deleted)")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
        return ocp.StandardCheckpointer().restore(directory, abstract)
    except Exception as e:  # noqa: BLE001 - a torn final checkpoint: no earlier state stands in for it
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise OSError(f"the parameters at {directory} are unreadable ({first}): delete that directory "
                      "and the final.json that points at it, then rerun the job") from None


_DIGEST_LANES = 4  # 4 × 32-bit weighted sums: a 128-bit fingerprint per leaf


def _mix32(x: jax.Array) -> jax.Array:
    """murmur3's 32-bit finaliser: a bijective scramble of uint32 values (wrapping arithmetic)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


@jax.jit
def _leaf_fingerprint(x: jax.Array) -> jax.Array:
    """uint32 [LANES]: Σ_i bits(x_i) · h_k(i) mod 2^32 for lanes k, over the flat index i.

    bits(x_i) is the element's bit pattern (float32/int32 as is, 16-bit types zero-extended), so
    any changed bit changes every lane with probability ≈ 1 − 2^-32. Modular sums do not depend on
    the order of the reduction, so the value is the same for every sharding and process count; each
    device reduces its own shard and XLA adds the partial sums (no array leaves the devices)."""
    if x.dtype.itemsize == 4:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif x.dtype.itemsize == 2:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    elif x.dtype.itemsize == 1:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
    else:  # 8-byte leaves: fold the two halves
        pair = jax.lax.bitcast_convert_type(x, jnp.uint32)  # (..., 2)
        bits = pair[..., 0] ^ _mix32(pair[..., 1])
    idx = jnp.zeros(x.shape, jnp.uint32)  # flat row-major index i, built axis by axis
    stride = 1
    for d in range(x.ndim - 1, -1, -1):
        idx = idx + jax.lax.broadcasted_iota(jnp.uint32, x.shape, d) * jnp.uint32(stride)
        stride *= x.shape[d]
    lanes = [jnp.sum(bits * _mix32(idx * jnp.uint32(0x9E3779B1) + jnp.uint32(0x7F4A7C15 * (k + 1) & 0xFFFFFFFF)),
                     dtype=jnp.uint32) for k in range(_DIGEST_LANES)]
    return jnp.stack(lanes)


# Names how params_digest is computed; final.json records it, so a final.json written under another
# scheme is reported as such instead of as overwritten parameters. Bump it with any change below.
PARAMS_DIGEST_SCHEME = "device-fingerprint-1"


def params_digest(params) -> str:
    """sha256 over each leaf's (path, shape, dtype, 128-bit device-side fingerprint), in tree order:
    ties a final.json to its checkpoint. Computed without copying any global array to a host (the
    fingerprints are 16 bytes a leaf), so it works unchanged on a multi-host mesh; equal for the same
    values whatever their sharding."""
    from cts.distributed import host_copy

    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        leaf = jnp.asarray(leaf) if not isinstance(leaf, jax.Array) else leaf
        if leaf.size >= 2**32:
            raise ValueError(f"params_digest: leaf {jax.tree_util.keystr(path)} has {leaf.size} elements (>= 2^32)")
        fp = host_copy(_leaf_fingerprint(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{leaf.shape}|{leaf.dtype}|".encode())
        h.update(np.ascontiguousarray(fp).tobytes())
    return h.hexdigest()
