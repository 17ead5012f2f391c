"""Checkpoints and final parameters on cloud storage (gs://…) — paths kept as URIs, never
os.path.abspath'd — and a local directory standing in for the bucket: a store opened again (a job
restarted on another machine) finds the latest step."""

import os

import numpy as np
import pytest

from cts.train.checkpoint import (CheckpointStore, is_uri, load_params, params_digest, remove_stale_states,
                                  save_params, state_dir, storage_path)


def test_uris_are_not_made_local_paths():
    assert is_uri("gs://bucket/ckpt") and not is_uri("work/checkpoints")
    assert str(storage_path("gs://bucket/ckpt/abc")) == "gs://bucket/ckpt/abc"  # not <cwd>/gs:/bucket/...
    assert str(storage_path("work/x")) == os.path.abspath("work/x")
    d, _ = state_dir("gs://bucket/ckpt/t/B3/seed0", {"a": 1}, {})
    assert d.startswith("gs://bucket/ckpt/t/B3/seed0/") and len(d.rsplit("/", 1)[1]) == 16


def test_schema_accepts_a_bucket_for_checkpoints():
    import jsonschema
    import yaml

    schema = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "schemas", "workflow_config.schema.yaml")))
    paths = schema["properties"]["paths"]
    for ok in ("work/checkpoints", "/gcs/cts/ckpt", "gs://my-bucket/cts/checkpoints"):
        jsonschema.validate({"checkpoints": ok}, paths)
    for bad in ("gs://", "s3://b/x", "work/a b", "gs://Bad_Bucket/x"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"checkpoints": bad}, paths)


def test_store_in_a_stand_in_bucket_resumes_after_reopen(tmp_path):
    import jax.numpy as jnp

    bucket = tmp_path / "bucket"  # stands in for gs://bucket: only reached through epath
    root = str(bucket / "t" / "B3")
    d, _ = state_dir(root, {"cfg": 1}, {"train": "abc"})
    state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(0)}
    store = CheckpointStore(d)
    for step in (1, 2):
        store.save(step, {"w": state["w"] + step, "step": jnp.int32(step)})
    store.close()
    again = CheckpointStore(d)  # "another machine": a fresh store on the same storage
    step, restored = again.restore_latest(state)
    again.close()
    assert step == 2 and int(restored["step"]) == 2
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.arange(6.0).reshape(2, 3) + 2)

    final = os.path.join(d, "final")
    save_params(final, state)
    back = load_params(final, state)
    assert params_digest(back) == params_digest(state)
    stale, _ = state_dir(root, {"cfg": 2}, {})
    CheckpointStore(stale).close()
    removed = remove_stale_states(str(bucket), [d], log=lambda m: None)
    assert removed == [str(storage_path(stale))] and os.path.isdir(d)


def test_digest_is_layout_independent_and_bit_sensitive():
    import jax.numpy as jnp

    p = {"a": jnp.arange(12.0).reshape(3, 4), "b": jnp.ones((5,), jnp.bfloat16)}
    d = params_digest(p)
    assert params_digest({"a": np.asarray(p["a"]), "b": p["b"]}) == d
    flipped = np.asarray(p["a"]).copy()
    flipped.view(np.uint32)[2, 3] ^= 1  # one bit of one weight
    assert params_digest({"a": flipped, "b": p["b"]}) != d
    assert params_digest({"a": p["a"].T.T.reshape(4, 3), "b": p["b"]}) != d  # same bytes, other shape


def test_final_json_names_its_digest_scheme_and_an_older_one_is_reported_as_such(tmp_path):
    """A final.json is loaded only when its parameters match its digest; one written under an older
    digest scheme says so (rerun the job), rather than claiming the parameters were overwritten."""
    import jax.numpy as jnp

    from cts.io import DataError, atomic_write_json, read_json
    from cts.train.artifacts import load_final_params, write_final

    class Runtime:
        init_params = {"w": jnp.zeros((2, 3), jnp.float32)}

    params = {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3)}
    final = tmp_path / "final.json"
    write_final(str(final), ckpt_dir=str(tmp_path / "state"), state_digest="d" * 16, params=params,
                config={}, rows=[], inputs={})
    np.testing.assert_array_equal(load_final_params(Runtime(), str(final))["w"], params["w"])

    row = read_json(str(final))
    atomic_write_json(str(final), {**row, "params_sha256": "0" * 64})
    with pytest.raises(DataError, match="do not match"):
        load_final_params(Runtime(), str(final))
    atomic_write_json(str(final), {k: v for k, v in row.items() if k != "params_digest_scheme"})
    with pytest.raises(DataError, match="older cts"):
        load_final_params(Runtime(), str(final))
