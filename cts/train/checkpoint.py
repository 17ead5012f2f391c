"""Orbax checkpoints of the training state, kept outside Snakemake's outputs.

Snakemake deletes a job's outputs before it reruns it, so checkpoints live under
`paths.checkpoints/<task>/<method>/seed<k>/<state digest>/` and a rerun of a killed job resumes
from the latest complete one (Orbax writes to a temp dir and renames on commit: a SIGKILL mid-save
leaves no half-checkpoint that could be restored). The state digest (`state_dir`) covers the
resolved config of the job and the content of its inputs, so a job resumes only from a state that
the same config and the same inputs produced; an edited config starts a fresh directory at step 0.
A latest checkpoint that cannot be read (truncated by a full disk, a copy cut short) is skipped
with a warning naming its step, and the one before it is used.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterable

import jax
import numpy as np
import orbax.checkpoint as ocp

from cts.io import stable_json

__all__ = ["CheckpointStore", "load_params", "params_digest", "remove_stale_states", "save_params",
           "state_digest", "state_dir"]

STATE_DIR_RE = re.compile(r"^[0-9a-f]{16}$")


def state_digest(config: dict, inputs: dict[str, str]) -> str:
    """sha256 of the resolved config that determines a job's state and its inputs' digests."""
    return hashlib.sha256(stable_json({"config": config, "inputs": inputs}).encode()).hexdigest()


def state_dir(root: str | os.PathLike, config: dict, inputs: dict[str, str]) -> tuple[str, str]:
    """(directory, digest): `<root>/<digest[:16]>`, the only place this state is saved or resumed."""
    digest = state_digest(config, inputs)
    return os.path.join(os.fspath(root), digest[:16]), digest


def remove_stale_states(root: str | os.PathLike, keep: Iterable[str], log: Callable[[str], None] = print) -> list[str]:
    """Delete every state directory (`<...>/<16 hex>/`) under root that is not in `keep`."""
    keep = {os.path.normpath(os.path.abspath(k)) for k in keep}
    removed = []
    if not os.path.isdir(root):
        return removed
    for dirpath, dirnames, _ in os.walk(root, topdown=True):
        for d in list(dirnames):
            if STATE_DIR_RE.match(d):
                path = os.path.normpath(os.path.abspath(os.path.join(dirpath, d)))
                dirnames.remove(d)  # never descend into a state directory
                if path not in keep:
                    shutil.rmtree(path)
                    removed.append(path)
                    log(f"removed {os.path.relpath(path)}")
    return removed


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
                shutil.rmtree(os.path.join(self.directory, str(step)), ignore_errors=True)
                self._mngr.reload()
        return None, None

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
    try:
        return ocp.StandardCheckpointer().restore(directory, abstract)
    except Exception as e:  # noqa: BLE001 - a torn final checkpoint: no earlier state stands in for it
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise OSError(f"the parameters at {directory} are unreadable ({first}): delete that directory "
                      "and the final.json that points at it, then rerun the job") from None


def params_digest(params) -> str:
    """sha256 over every leaf's bytes, in tree order: ties a final.json to its checkpoint."""
    import hashlib

    h = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()
