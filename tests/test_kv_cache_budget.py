"""The paper config's sampler KV cache per chip, from shapes alone (jax.eval_shape of the
autoregressive MaxText model; nothing is allocated), checked against the budget written in
config/paper.yaml: 256 rollouts × (1024 prompt + 1024 new) tokens, bfloat16, on the v4-8's 4 chips
with FSDP 4 (simulated here by 4 CPU devices in a subprocess)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROLLOUTS, P, N, CHIPS = 32 * 8, 1024, 1024, 4  # prompts_per_step × group_size; paper max lengths


def _worker(out: str) -> None:
    import yaml

    from cts.model.policy import ModelConfig
    from cts.model.sampler import kv_cache_bytes

    paper = yaml.safe_load(open(REPO / "config" / "paper.yaml"))
    cfg = ModelConfig(vocab_size=151936, **paper["model"])  # Qwen2.5's padded vocabulary
    r = kv_cache_bytes(cfg, batch_size=ROLLOUTS, max_prompt_len=P, max_new_tokens=N,
                       parallelism=paper["parallelism"])
    Path(out).write_text(json.dumps({**r, "model": paper["model"], "parallelism": paper["parallelism"]}))


@pytest.mark.slow
def test_paper_kv_cache_is_bf16_split_over_the_batch(tmp_path):
    out = tmp_path / "kv.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={CHIPS}",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for k in ("CTS_COORDINATOR_ADDRESS", "CTS_NUM_PROCESSES", "CTS_PROCESS_ID"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, __file__, str(out)], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    m = r["model"]
    print(f"KV cache: {r['total'] / 1e9:.2f} GB in all, {r['per_device'] / 1e9:.2f} GB per chip, {r['dtype']}")
    assert r["dtype"] == ["bfloat16"]  # ModelConfig.dtype, not float32
    # K and V, every layer, every kv head, 2 bytes, for every rollout's prompt + completion
    kv = 2 * m["num_layers"] * m["num_kv_heads"] * m["head_dim"] * 2 * ROLLOUTS * (P + N)
    assert kv <= r["total"] <= 1.01 * kv
    assert r["per_device"] <= 1.01 * r["total"] / r["parallelism"]["fsdp"]  # the batch axis is split
    assert r["per_device"] < 4.0e9  # the budget in config/paper.yaml: 3.8 GB per chip
    for shape, spec in r["shapes"].values():  # [seq, kv heads, batch, head dim] in MaxText's cache order
        assert ROLLOUTS in shape and spec[shape.index(ROLLOUTS)] == "fsdp", (shape, spec)


if __name__ == "__main__":
    _worker(sys.argv[1])
