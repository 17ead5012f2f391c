"""Multi-process JAX: when a job runs on several hosts, and what each process may do.

A slice larger than one host (v5e-16 = 4 hosts × 4 chips, v4-32, …) runs the same program on
every host at once; each process sees only its own chips (`jax.local_devices()`), and the mesh
spans all of them (`jax.devices()`). This module is the one place that

  * reads the environment that says so (`process_env`) and calls `jax.distributed.initialize()`
    before anything touches a device (`initialize`, called by `cts.model.policy.maxtext_config`
    and the rule-script preamble `cts.script_support.stage_logger`);
  * names the one writer (`is_writer`: process 0 writes metrics, final.json and every file);
  * moves data between host and mesh without materialising a global array on one host:
    `assemble_global_batch` (each process contributes the rows its devices hold, through
    `jax.make_array_from_process_local_data`), `host_copy` (a small replicated/sharded result
    gathered to every host), `map_once` (host work such as verifiers and the sandbox split
    across processes, each item run exactly once, results gathered in order).

Environment, first match wins (all three give the same (coordinator, count, id)):

  CTS_COORDINATOR_ADDRESS, CTS_NUM_PROCESSES, CTS_PROCESS_ID   explicit (offline tests, any cluster)
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID   JAX's own names
  TPU_WORKER_HOSTNAMES, TPU_WORKER_ID [, MEGASCALE_NUM_SLICES, MEGASCALE_SLICE_ID]
                                                             GKE's TPU webhook in a JobSet pod
                                                             (cts/cloud/jobset.py); JAX finds the
                                                             coordinator itself (GkeTpuCluster)

With none of them (or a count of 1) the job is one process and nothing here changes behaviour.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["ProcessEnv", "assemble_global_batch", "batch_sharding", "host_copy", "initialize", "is_multi_process",
           "is_writer", "map_once", "process_env"]


@dataclass(frozen=True)
class ProcessEnv:
    """What the environment says about this job's processes.

    coordinator: host:port of process 0's coordinator, None when JAX detects it (GKE TPU pods).
    num_processes, process_id: this job's process count and this process's rank (0-based).
    source: which variables said so (for the log line and error messages).
    """

    coordinator: str | None
    num_processes: int
    process_id: int
    source: str

    @property
    def multi_process(self) -> bool:
        return self.num_processes > 1


def _int_var(environ, name: str) -> int:
    raw = environ.get(name, "")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def process_env(environ=None) -> ProcessEnv:
    """Parse the environment (see the module docstring); bad values raise naming the variable."""
    environ = os.environ if environ is None else environ
    for prefix in ("CTS", "JAX"):
        addr = environ.get(f"{prefix}_COORDINATOR_ADDRESS")
        if addr:
            n = _int_var(environ, f"{prefix}_NUM_PROCESSES")
            pid = _int_var(environ, f"{prefix}_PROCESS_ID")
            if n < 1 or not 0 <= pid < n:
                raise ValueError(f"{prefix}_PROCESS_ID={pid} must be in [0, {prefix}_NUM_PROCESSES={n})")
            return ProcessEnv(addr, n, pid, f"{prefix}_*")
    hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1 or int(environ.get("MEGASCALE_NUM_SLICES", "1") or 1) > 1:
        slices = _int_var(environ, "MEGASCALE_NUM_SLICES") if environ.get("MEGASCALE_NUM_SLICES") else 1
        slice_id = _int_var(environ, "MEGASCALE_SLICE_ID") if environ.get("MEGASCALE_SLICE_ID") else 0
        worker = _int_var(environ, "TPU_WORKER_ID") if environ.get("TPU_WORKER_ID") else 0
        per_slice = max(1, len(hosts))
        return ProcessEnv(None, per_slice * slices, slice_id * per_slice + worker, "TPU_WORKER_*/MEGASCALE_*")
    return ProcessEnv(None, 1, 0, "single process")


_INITIALIZED: list[ProcessEnv] = []


def initialize(log: Callable[[str], None] | None = None, environ=None) -> ProcessEnv:
    """Call `jax.distributed.initialize` once when the environment names several processes.

    Must run before JAX's backend starts (the first `jax.devices()`, array or jit); a backend that
    already started as a single process raises here with that explanation. Idempotent.
    """
    if _INITIALIZED:
        return _INITIALIZED[0]
    env = process_env(environ)
    if env.multi_process:
        import jax

        if not jax.distributed.is_initialized():
            from jax._src import xla_bridge

            if xla_bridge.backends_are_initialized():
                raise RuntimeError(
                    f"{env.source} names {env.num_processes} processes, but JAX's backend started before "
                    "cts.distributed.initialize() ran; call it first thing in the job")
            if env.coordinator is None:  # GKE TPU: JAX reads the pod's TPU metadata itself
                jax.distributed.initialize()
            else:
                jax.distributed.initialize(coordinator_address=env.coordinator,
                                           num_processes=env.num_processes, process_id=env.process_id)
        if log:
            log(f"multi-process JAX ({env.source}): process {env.process_id} of {env.num_processes}")
    _INITIALIZED.append(env)
    return env


def is_multi_process() -> bool:
    import jax

    return jax.process_count() > 1


def is_writer() -> bool:
    """True on the one process that writes files (process 0); every process when there is one."""
    import jax

    return jax.process_index() == 0


# ----------------------------------------------------------------------------- host ↔ mesh


def _local_rows(sharding, global_shape: tuple[int, ...]) -> slice:
    """The contiguous block of leading-axis rows this process's devices hold under `sharding`."""
    blocks = set()
    for idx in sharding.addressable_devices_indices_map(global_shape).values():
        rows = idx[0] if idx else slice(None)
        start, stop, _ = rows.indices(global_shape[0])
        blocks.add((start, stop))
    blocks = sorted(blocks)
    lo, hi = blocks[0][0], max(b for _, b in blocks)
    pos = lo  # the blocks must tile [lo, hi) without gaps for one local array to describe them
    for a, b in blocks:
        if a > pos:
            raise ValueError(f"this process's devices hold rows with a gap at {pos}..{a}: not one local block")
        pos = max(pos, b)
    return slice(lo, hi)


def batch_sharding(mesh, ndim: int):
    """Sharding of a batch array of rank `ndim`: leading (batch) axis over ('data', 'fsdp'),
    the rest replicated — MaxText's `activation_batch` rule, so the model's own sharding
    constraints find the activations already where they want them. Rank 0 → replicated."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    if ndim == 0:
        return NamedSharding(mesh, PartitionSpec())
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def assemble_global_batch(batch, mesh):
    """A host batch (identical on every process: drawn from (seed, step)) → global jax.Arrays.

    Each leaf [B, ...] goes on the batch axes P(('data', 'fsdp'), ...) of `mesh` (rank 0 →
    replicated). Every process passes only the rows its own devices hold to
    `jax.make_array_from_process_local_data`, so no host ever uploads or holds another host's
    shard; with one process this is `device_put` of the whole batch, as before.

    Raises ValueError naming the leaf when B is not divisible by data × fsdp.
    """
    import jax
    import numpy as np

    ways = mesh.shape["data"] * mesh.shape["fsdp"]

    def put(path, x):
        x = np.asarray(x)
        if x.ndim and x.shape[0] % ways:
            raise ValueError(f"assemble_global_batch: {jax.tree_util.keystr(path)} has batch size {x.shape[0]}, "
                             f"not divisible by data×fsdp = {ways}")
        sharding = batch_sharding(mesh, x.ndim)
        if x.ndim == 0:
            return jax.make_array_from_process_local_data(sharding, x, x.shape)
        rows = _local_rows(sharding, x.shape)
        return jax.make_array_from_process_local_data(sharding, x[rows], x.shape)

    return jax.tree_util.tree_map_with_path(put, batch)


def host_copy(x):
    """A jax.Array (any layout, any process count) as a numpy array on this host.

    For small results only (sampled tokens, metrics): with one process, or an array whose shards
    are all addressable here, this is `np.asarray`; otherwise the shards are all-gathered across
    processes (`np.asarray` would raise "spans non-addressable devices")."""
    import jax
    import numpy as np

    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_shards[0].data)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _allgather_bytes(payload: bytes) -> list[bytes]:
    """Every process's payload, in process order (pickled objects travel as padded uint8 rows)."""
    import numpy as np
    from jax.experimental import multihost_utils

    n = np.asarray(multihost_utils.process_allgather(np.array([len(payload)], np.int64)))  # (P, 1)
    longest = int(n.max())
    buf = np.zeros(longest, np.uint8)
    buf[:len(payload)] = np.frombuffer(payload, np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(buf))  # (P, longest)
    return [bytes(rows[p, :int(n[p, 0])]) for p in range(rows.shape[0])]


def map_once(fn: Callable[[list], list], items: Sequence) -> list:
    """fn(items) computed once per item across processes, the full result on every process.

    fn maps a list to a list of equal length (e.g. `verify_many`). With P processes, process p
    runs fn on items[p::P] (the sandbox and verifiers never run an item twice) and the results
    are gathered back into item order. One process: fn(items)."""
    import jax

    items = list(items)
    n_proc = jax.process_count()
    if n_proc == 1:
        return list(fn(items))
    me = jax.process_index()
    mine = list(fn(items[me::n_proc])) if items[me::n_proc] else []
    parts = [pickle.loads(b) for b in _allgather_bytes(pickle.dumps(mine))]
    out: list = [None] * len(items)
    for p, part in enumerate(parts):
        out[p::n_proc] = part
    return out
