"""Orbax checkpoints of the training state, kept outside Snakemake's outputs.

Snakemake deletes a job's outputs before it reruns it, so checkpoints live under
`paths.checkpoints/<task>/<method>/seed<k>/` and a rerun of a killed job resumes from the latest
complete one (Orbax writes to a temp dir and renames on commit: a SIGKILL mid-save leaves no
half-checkpoint that could be restored).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["CheckpointStore", "load_params", "params_digest", "save_params"]


class CheckpointStore:
    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self._mngr = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def save(self, step: int, state: dict) -> None:
        """state: a pytree of arrays (params, optimizer state, rng, step counters)."""
        self._mngr.save(step, args=ocp.args.StandardSave(state), force=True)
        self._mngr.wait_until_finished()

    def restore(self, step: int, like: dict) -> dict:
        """Restore into the structure (and dtypes) of `like`."""
        abstract = jax.tree.map(lambda x: ocp.utils.to_shape_dtype_struct(np.asarray(x))
                                if not hasattr(x, "sharding") else ocp.utils.to_shape_dtype_struct(x), like)
        return self._mngr.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self._mngr.close()


def save_params(directory: str | os.PathLike, params) -> None:
    """Final parameters only (what eval and downstream cells load), atomically committed."""
    directory = os.path.abspath(directory)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(directory, params, force=True)
    ckptr.wait_until_finished()


def load_params(directory: str | os.PathLike, like):
    """Restore parameters saved by `save_params` into the structure of `like`."""
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no parameters at {directory}: rerun the job that writes them "
                                "(its checkpoint directory was deleted)")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return ocp.StandardCheckpointer().restore(directory, abstract)


def params_digest(params) -> str:
    """sha256 over every leaf's bytes, in tree order: ties a final.json to its checkpoint."""
    import hashlib

    h = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()
