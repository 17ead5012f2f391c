"""The policy: a small MaxText decoder used as a library (config, build, forward, log-probs).

MaxText builds the network (`maxtext.models.models.Transformer`); this module fixes the few
config keys that make it run as a plain CPU/GPU/TPU library (no checkpointing, no distributed
init, synthetic data, a private compilation cache) and exposes pure functions of the model:

    forward(model, tokens, segment_ids) -> (logits [B, T, V], hidden [B, T, D])
    token_logprobs(logits, tokens)      -> [B, T]

Parallelism: `Parallelism(fsdp, tensor)` lays the weights out on a MaxText mesh (FSDP × tensor,
the rest of the devices on the data axis) with the specs MaxText's logical axis rules give them,
e.g. an MLP kernel [D, F] gets P('fsdp', 'tensor'); `shard_batch` puts a batch on the batch axes
P(('data', 'fsdp'), ...). With several processes (one per host of a slice; cts.distributed) the
mesh spans every process's devices and the weights are always built on it, sharded or replicated. Sharded and unsharded builds hold the same weight values for the same
seed (tests/test_sharded.py checks this and one full training step on 8 simulated devices).

`hidden` is the FINAL, POST-NORM hidden state: the decoder returns the last layer's output
before its final norm; `forward` applies `model.decoder.decoder_norm` to it, so
`logits == hidden @ W_out` exactly (W_out = `decoder.logits_dense.kernel` [D, V], or the
embedding table transposed when `logits_via_embedding`). tests/test_policy.py checks this.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from cts.distributed import assemble_global_batch, batch_sharding, initialize  # batch_sharding: re-exported

__all__ = [
    "ModelConfig",
    "Parallelism",
    "DECODER_BLOCKS",
    "maxtext_config",
    "build_policy",
    "forward",
    "token_logprobs",
    "output_head_weight",
    "batch_sharding",
    "shard_batch",
]

# Dense (non-MoE, text-only) MaxText blocks that a small config can build; MoE/multimodal
# blocks need many more keys than ModelConfig carries.
DECODER_BLOCKS = ("default", "llama2", "mistral", "gemma", "qwen2", "qwen3", "simple")
_DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "minimal", "full")
ROPE_TYPES = ("default", "llama3.1")  # MaxText names; see ModelConfig.remat_policy
_MODES = ("train", "prefill", "autoregressive")
# MaxText's base.yml replicates the KV cache's batch axis (cache_batch → no mesh axis), so every
# chip of a data/fsdp mesh would hold the whole batch's cache. The sampler splits it like the
# activations' batch; the kv-head axis already follows 'tensor' (cache_heads). See sampler.py.
SAMPLER_CACHE_RULES = [["cache_batch", ["data", "fsdp"]], ["cache_batch_prefill", ["data", "fsdp"]]]


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Architecture of the policy; each field maps onto one MaxText key.

    vocab_size   → vocab_size (tokenizer's padded size; 128 = CharTokenizer)
    emb_dim      → base_emb_dim (D)
    num_heads    → base_num_query_heads
    num_kv_heads → base_num_kv_heads (must divide num_heads: grouped-query attention)
    head_dim     → head_dim
    mlp_dim      → base_mlp_dim
    num_layers   → base_num_decoder_layers (L)
    max_len      → max_target_length (T: longest prompt + completion in train mode)
    dtype        → dtype (activations); weights follow weight_dtype below
    decoder_block→ decoder_block, one of DECODER_BLOCKS
    rope_max_timescale → rope_max_timescale (RoPE θ: frequency i is θ^(-2i/head_dim))
    norm_epsilon → normalization_layer_epsilon (RMSNorm ε)
    tied_embeddings → logits_via_embedding (the output head is the embedding table), with
                   normalize_embedding_logits = False: llama-family models do not divide tied
                   logits by sqrt(D). MaxText 0.2.5 multiplies by a bfloat16 copy of the table.

    attention_bias → attention_bias (biases on the q/k/v projections: Qwen2.5)
    qk_norm      → use_qk_norm (RMSNorm on each query/key head before RoPE: Qwen3)
    rope_type    → rope_type: "default" rotates the two halves of a head (HF/Qwen layout);
                   "llama3.1" rotates adjacent pairs (MaxText's LLaMARotaryEmbedding, the
                   layout its llama converter writes), with Llama 3.1's frequency scaling
                   when rope_use_scale (→ rope_use_scale) is true.
    weight_dtype → weight_dtype: "float32" (default: optimizer updates are exact) or
                   "bfloat16" (halves the weights' memory; a pretrained checkpoint stored in
                   bf16 loses nothing, but the optimizer then updates in bf16).

    The fields after dtype default to MaxText's base.yml values (10000, 1e-5, untied, no bias,
    no qk-norm, default rope), so a config that does not set them builds exactly the model it
    built before they existed; pretrained weights (cts.model.pretrained) need them set to the
    checkpoint's values.

    remat_policy → remat_policy: what the backward pass recomputes. "none" (the default) keeps
                   every activation; MaxText's own default "full" re-runs each layer's forward in
                   the backward pass, trading FLOPs for activation memory. On CPU the two measured
                   the same SFT step time (bench/bench_train_step.py --remat: full 1541 ms, none 1586 ms); the
                   paper config sets "full", where memory binds.
    """

    vocab_size: int = 128
    emb_dim: int = 128
    num_heads: int = 4
    num_kv_heads: int = 4
    head_dim: int = 32
    mlp_dim: int = 512
    num_layers: int = 2
    max_len: int = 256
    dtype: str = "float32"
    decoder_block: str = "default"
    rope_max_timescale: int = 10_000
    norm_epsilon: float = 1e-5
    tied_embeddings: bool = False
    attention_bias: bool = False
    qk_norm: bool = False
    rope_type: str = "default"
    rope_use_scale: bool = False
    weight_dtype: str = "float32"
    remat_policy: str = "none"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "emb_dim", "num_heads", "num_kv_heads", "head_dim", "mlp_dim", "num_layers", "max_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {v!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelConfig.num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}"
            )
        if self.max_len < 2:
            raise ValueError(f"ModelConfig.max_len must be >= 2, got {self.max_len}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"ModelConfig.dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.decoder_block not in DECODER_BLOCKS:
            raise ValueError(f"ModelConfig.decoder_block must be one of {DECODER_BLOCKS}, got {self.decoder_block!r}")
        if not isinstance(self.rope_max_timescale, int) or isinstance(self.rope_max_timescale, bool) \
                or self.rope_max_timescale <= 0:  # MaxText types the key as an int
            raise ValueError(f"ModelConfig.rope_max_timescale must be a positive int, got {self.rope_max_timescale!r}")
        if not isinstance(self.norm_epsilon, (int, float)) or isinstance(self.norm_epsilon, bool) \
                or not self.norm_epsilon > 0:
            raise ValueError(f"ModelConfig.norm_epsilon must be a positive number, got {self.norm_epsilon!r}")
        if not isinstance(self.tied_embeddings, bool):
            raise ValueError(f"ModelConfig.tied_embeddings must be a bool, got {self.tied_embeddings!r}")
        for name in ("attention_bias", "qk_norm", "rope_use_scale"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"ModelConfig.rope_type must be one of {ROPE_TYPES}, got {self.rope_type!r}")
        if self.rope_use_scale and self.rope_type != "llama3.1":
            raise ValueError("ModelConfig.rope_use_scale needs rope_type 'llama3.1' (MaxText scales only that rope)")
        if self.weight_dtype not in _DTYPES:
            raise ValueError(f"ModelConfig.weight_dtype must be one of {_DTYPES}, got {self.weight_dtype!r}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"ModelConfig.remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")

    @property
    def num_params_estimate(self) -> int:
        """Rough parameter count (attention + MLP + embedding + head), for logs and FLOP estimates."""
        d, h, kv, hd = self.emb_dim, self.num_heads, self.num_kv_heads, self.head_dim
        attn = d * hd * (h + 2 * kv) + h * hd * d + (hd * (h + 2 * kv) if self.attention_bias else 0)
        mlp = 3 * d * self.mlp_dim if self.decoder_block != "default" else 2 * d * self.mlp_dim
        return self.num_layers * (attn + mlp) + (1 if self.tied_embeddings else 2) * self.vocab_size * d

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class Parallelism:
    """How the weights are laid out on the device mesh; each field maps onto one MaxText key.

    fsdp     → ici_fsdp_parallelism (weights' embed axis and the batch are split fsdp ways)
    tensor   → ici_tensor_parallelism (heads / MLP / vocab axes split tensor ways)
    dcn_data → dcn_data_parallelism (multislice: whole slices hold replicas, batch split across them)
    dcn_fsdp → dcn_fsdp_parallelism (multislice: weights also split across slices; slow links, rare)

    The ICI axes (fsdp, tensor and the data axis that takes the rest: data = chips per slice /
    (fsdp·tensor)) live within a slice, whose chips may sit on several hosts — a v5e-16 is 4 hosts ×
    4 chips, one process each, and its mesh spans all 16 chips (cts.distributed). The DCN axes span
    slices: num_slices = dcn_data · dcn_fsdp. Examples:

      v5e-16 (1 slice, 16 chips):        {fsdp: 16}            or {fsdp: 8, tensor: 2}
      2 × v5e-16 (multislice, 32 chips): {fsdp: 16, dcn_data: 2}  (FSDP in a slice, data across)

    fsdp = tensor = 1 in one process (the default) is the unsharded build: MaxText's own default
    mesh, weights replicated, exactly as before this option existed. With several processes the
    weights are always built on the global mesh (a process-local build could not be combined).
    """

    fsdp: int = 1
    tensor: int = 1
    dcn_data: int = 1
    dcn_fsdp: int = 1

    _FIELDS = ("fsdp", "tensor", "dcn_data", "dcn_fsdp")

    def __post_init__(self) -> None:
        for name in self._FIELDS:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"Parallelism.{name} must be a positive int, got {v!r}")

    @property
    def sharded(self) -> bool:
        return self.fsdp * self.tensor * self.dcn_fsdp > 1

    @property
    def num_slices(self) -> int:
        return self.dcn_data * self.dcn_fsdp

    @classmethod
    def coerce(cls, value: "Parallelism | dict | None") -> "Parallelism":
        """None → unsharded; a dict such as {"fsdp": 4, "tensor": 2} (from a config file) → Parallelism."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(cls._FIELDS))
            if unknown:
                raise ValueError(f"parallelism: unknown keys {unknown}; expected {', '.join(cls._FIELDS)}")
            return cls(**value)
        raise TypeError(f"parallelism must be a Parallelism, a dict or None, got {type(value).__name__}")

    def maxtext_keys(self, n_devices: int, *, global_mesh: bool = False) -> dict:
        """The ici_*/dcn_* keys for `n_devices` devices in all ({} when unsharded in one process:
        keep MaxText's defaults). global_mesh: spell the mesh out even when unsharded (several
        processes: data = every device, weights replicated)."""
        if not (self.sharded or self.num_slices > 1 or global_mesh):
            return {}
        if n_devices % self.num_slices:
            raise ValueError(f"Parallelism(dcn_data={self.dcn_data}, dcn_fsdp={self.dcn_fsdp}) needs a multiple "
                             f"of {self.num_slices} devices, but JAX sees {n_devices}")
        per_slice = n_devices // self.num_slices
        model_ways = self.fsdp * self.tensor
        if per_slice % model_ways:
            raise ValueError(
                f"Parallelism(fsdp={self.fsdp}, tensor={self.tensor}) needs a multiple of {model_ways} "
                f"devices per slice, but JAX sees {per_slice} ({n_devices} devices / {self.num_slices} slices)"
            )
        return {
            "ici_data_parallelism": per_slice // model_ways,
            "ici_fsdp_parallelism": self.fsdp,
            "ici_tensor_parallelism": self.tensor,
            "dcn_data_parallelism": self.dcn_data,
            "dcn_fsdp_parallelism": self.dcn_fsdp,
            "num_slices": self.num_slices,
        }

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _hardware() -> str:
    """MaxText's `hardware` key for the active JAX backend (cpu unless a GPU/TPU is in use)."""
    backend = jax.default_backend()
    return {"gpu": "gpu", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}.get(backend, "cpu")


_PROCESS_RUN_DIR: dict[int, str] = {}  # pid -> this process's scratch dir (a forked job-server child gets its own)


def _process_run_dir() -> str:
    """One scratch directory per process for MaxText's output dir (and the compile cache when no shared
    one is set), removed at exit. A fresh `mkdtemp` per config left a directory in /tmp for every model
    built (up to ~12 MB of compile cache each; ~1,900 of them after a day of tests and pipeline runs)."""
    pid = os.getpid()
    if pid not in _PROCESS_RUN_DIR:
        import atexit
        import shutil

        _PROCESS_RUN_DIR[pid] = tempfile.mkdtemp(prefix="cts-maxtext-")
        atexit.register(shutil.rmtree, _PROCESS_RUN_DIR[pid], ignore_errors=True)
    return _PROCESS_RUN_DIR[pid]


def _compile_cache_dir(run_dir: str) -> str:
    """XLA's persistent compilation cache: the shared directory a pipeline job was given
    ($CTS_JAX_CACHE_DIR, from paths.compile_cache via cts.script_support), else one of its own.
    XLA keys each entry by the program, compile options and jax/backend versions, so sharing it
    across jobs only skips compiles; every compile is cached (no minimum compile time), since
    the tiny laptop models compile in well under JAX's default 1 s threshold."""
    shared = os.environ.get("CTS_JAX_CACHE_DIR")
    if not shared:
        return os.path.join(run_dir, "jax_cache")
    os.makedirs(shared, exist_ok=True)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return shared


def maxtext_config(
    cfg: ModelConfig,
    *,
    batch_size: int,
    mode: str = "train",
    max_prefill_len: int | None = None,
    run_dir: str | None = None,
    parallelism: Parallelism | None = None,
):
    """MaxText `HyperParameters` for `cfg`.

    Args:
      cfg: the architecture.
      batch_size: global batch B (one device here, so per_device_batch_size = B / devices).
      mode: "train" | "prefill" | "autoregressive". Non-train modes fix the KV cache shapes:
        prefill cache P = max_prefill_len, decode cache T − P with T = cfg.max_len.
      max_prefill_len: P, required for non-train modes, 1 <= P < cfg.max_len.
      run_dir: where MaxText may write (compile cache under run_dir/jax_cache); a fresh temp dir
        when None. Never ~/jax_cache, so concurrent jobs do not share one cache directory.
      parallelism: the mesh layout (None = unsharded, MaxText's default mesh).
    """
    from maxtext.configs import pyconfig  # heavy import (6–9 s): keep it out of module import

    if mode not in _MODES:
        raise ValueError(f"maxtext_config: mode must be one of {_MODES}, got {mode!r}")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"maxtext_config: batch_size must be a positive int, got {batch_size!r}")
    procs = initialize()  # jax.distributed first, when the environment names several processes
    n_dev = jax.device_count()  # every process's devices: the mesh spans them all
    mesh_keys = Parallelism.coerce(parallelism).maxtext_keys(n_dev, global_mesh=procs.multi_process)
    if batch_size % n_dev:
        raise ValueError(f"maxtext_config: batch_size={batch_size} is not divisible by {n_dev} devices")
    if mode == "train":
        prefill = max_prefill_len or max(1, cfg.max_len // 2)  # unused in train mode but must be < T
    else:
        if max_prefill_len is None:
            raise ValueError(f"maxtext_config: mode={mode!r} needs max_prefill_len")
        prefill = max_prefill_len
    if not 1 <= prefill < cfg.max_len:
        raise ValueError(f"maxtext_config: max_prefill_len={prefill} must be in [1, max_len={cfg.max_len})")
    # Only a tied head needs a key beyond the defaults: MaxText's base.yml would divide tied
    # logits by sqrt(D) (normalize_embedding_logits), which llama-family models do not do.
    head_keys = {"logits_via_embedding": True, "normalize_embedding_logits": False} if cfg.tied_embeddings else {}
    if mode != "train":
        head_keys["logical_axis_rules"] = SAMPLER_CACHE_RULES
    if run_dir is None:
        run_dir = _process_run_dir()
    os.makedirs(run_dir, exist_ok=True)
    compile_cache = _compile_cache_dir(run_dir)
    return pyconfig.initialize(
        None,
        run_name="cts_policy",
        base_output_directory=os.path.join(run_dir, "maxtext"),
        jax_cache_dir=compile_cache,
        hardware=_hardware(),
        enable_checkpointing=False,
        # initialize() above already ran jax.distributed when several processes run this job;
        # MaxText's own init would find it initialised. One process: nothing to initialise.
        skip_jax_distributed_system=not procs.multi_process,
        dataset_type="synthetic",
        decoder_block=cfg.decoder_block,
        base_emb_dim=cfg.emb_dim,
        base_num_query_heads=cfg.num_heads,
        base_num_kv_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        base_mlp_dim=cfg.mlp_dim,
        base_num_decoder_layers=cfg.num_layers,
        vocab_size=cfg.vocab_size,
        rope_max_timescale=cfg.rope_max_timescale,
        normalization_layer_epsilon=cfg.norm_epsilon,
        max_target_length=cfg.max_len,
        max_prefill_predict_length=prefill,
        per_device_batch_size=batch_size / n_dev,
        dtype=cfg.dtype,
        weight_dtype=cfg.weight_dtype,
        attention_bias=cfg.attention_bias,
        use_qk_norm=cfg.qk_norm,
        rope_type=cfg.rope_type,
        rope_use_scale=cfg.rope_use_scale,
        attention="dot_product",
        scan_layers=False,  # per-layer params: simpler trees, and L is small
        remat_policy=cfg.remat_policy,
        enable_dropout=False,
        log_config=False,
        **head_keys,
        **mesh_keys,
    )


def build_policy(cfg: ModelConfig, *, seed: int, batch_size: int, mode: str = "train",
                 max_prefill_len: int | None = None, run_dir: str | None = None,
                 parallelism: Parallelism | dict | None = None):
    """Build the MaxText Transformer (train mode by default) and its mesh.

    Args:
      parallelism: None / Parallelism() builds replicated weights on MaxText's default mesh.
        With fsdp·tensor > 1 every variable is created directly in the NamedSharding that
        MaxText's logical axis rules give it (one jitted init with out_shardings, so no device
        ever holds the full model).

    Returns:
      (model, mesh). Weights are a pure function of (cfg, seed), whatever the parallelism: the
      sharded build draws from the same `nnx.Rngs(params=seed, ...)` streams as the unsharded
      one (not MaxText's `create_nnx_rngs`, which folds the seed differently), and JAX's
      threefry draws do not depend on jit or sharding. The model is built under
      `jax.set_mesh(mesh)`; callers should jit/run under the same mesh (otherwise the first
      training step recompiles).
    """
    from maxtext.utils import maxtext_utils, model_creation_utils

    par = Parallelism.coerce(parallelism)
    mt_cfg = maxtext_config(cfg, batch_size=batch_size, mode=mode, max_prefill_len=max_prefill_len,
                            run_dir=run_dir, parallelism=par)
    mesh = maxtext_utils.get_mesh_from_config(mt_cfg)

    def create_model():
        rngs = nnx.Rngs(params=seed, dropout=seed + 1, aqt=seed + 2)
        return model_creation_utils.from_config(mt_cfg, mesh=mesh, model_mode=mode, rngs=rngs)

    if not par.sharded and jax.process_count() == 1:
        with jax.set_mesh(mesh):
            return create_model(), mesh
    # The abstract model only supplies the per-variable NamedShardings (shapes and logical axes
    # do not depend on the rng streams); the values come from create_model, in one jit whose
    # out_shardings put every variable where it belongs (no device holds the full model).
    _, abstract = model_creation_utils.create_nnx_abstract_model(mt_cfg, mesh=mesh, model_mode=mode)
    is_sds = lambda x: isinstance(x, jax.ShapeDtypeStruct)  # noqa: E731
    by_path = {jax.tree_util.keystr(p): x.sharding
               for p, x in jax.tree_util.tree_leaves_with_path(nnx.state(abstract), is_leaf=is_sds)}
    box = {}

    def traced_state():
        box["graphdef"], state = nnx.split(create_model())
        return state

    with jax.set_mesh(mesh):  # the real state also holds rng streams the abstract one lacks: replicated
        full = jax.eval_shape(traced_state)
    graphdef = box["graphdef"]
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shardings = jax.tree_util.tree_map_with_path(
        lambda p, x: _fit_sharding(by_path.get(jax.tree_util.keystr(p), replicated), x.shape), full, is_leaf=is_sds)

    # Not maxtext_utils_nnx.create_nnx_sharded_model: its with_sharding_constraint is replaced
    # process-wide once Tunix's MaxText adapter is imported, and that shim fails on nnx.State trees.
    @partial(jax.jit, out_shardings=shardings)
    def create_sharded_state():
        return nnx.state(create_model())

    with jax.set_mesh(mesh):
        model = nnx.merge(graphdef, create_sharded_state())
    return model, mesh


def _fit_sharding(sharding, shape: tuple[int, ...]):
    """`sharding` with every dimension that its mesh axes do not divide left unsplit. MaxText
    creates some decode-cache variables with batch 1 before their first use; the logical rule
    for the cache batch (SAMPLER_CACHE_RULES) cannot split a dimension of 1."""
    from jax.sharding import NamedSharding, PartitionSpec

    if not isinstance(sharding, NamedSharding):
        return sharding
    spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
    for d, axes in enumerate(spec[:len(shape)]):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        ways = 1
        for a in names:
            ways *= sharding.mesh.shape[a]
        if ways > 1 and shape[d] % ways:
            spec[d] = None
    return NamedSharding(sharding.mesh, PartitionSpec(*spec[:len(shape)]))


def shard_batch(batch, mesh: jax.sharding.Mesh):
    """Put every array of a (nested) batch on `mesh` with `batch_sharding`.

    Args:
      batch: pytree of arrays [B, ...] (numpy or jax), the same on every process; B must be
        divisible by data·fsdp.
      mesh: the policy's mesh (`PolicyRuntime.mesh`).

    Returns:
      the same pytree of jax.Arrays, committed to the mesh; each process uploads only the rows its
      own devices hold (cts.distributed.assemble_global_batch).
    """
    return assemble_global_batch(batch, mesh)


def output_head_weight(model) -> jax.Array:
    """The [D, V] matrix the logits come from: logits = post_norm_hidden @ W (no bias)."""
    mcfg = model.config
    if mcfg.logits_via_embedding:
        # MaxText divides by sqrt(D) in that case (normalize_embedding_logits); fold it in.
        w = model.token_embedder.embedding[...].T
        return w / jnp.sqrt(w.shape[0]) if mcfg.normalize_embedding_logits else w
    return model.decoder.logits_dense.kernel[...]


def forward(model, tokens: jax.Array, segment_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Train-mode forward pass.

    Args:
      model: a train-mode MaxText Transformer (from `build_policy`).
      tokens: int32 [B, T], T <= max_len.
      segment_ids: int32 [B, T], 1 for real tokens, 0 for padding. Attention never crosses
        segments, so with right padding the real tokens' logits do not depend on the padding.

    Returns:
      logits: float32 [B, T, V]; logits[:, t] predicts tokens[:, t + 1].
      hidden: [B, T, D], the final post-norm hidden state (logits = hidden @ output_head_weight).
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    segment_ids = jnp.asarray(segment_ids, jnp.int32)
    if tokens.ndim != 2 or tokens.shape != segment_ids.shape:
        raise ValueError(f"forward: tokens {tokens.shape} and segment_ids {segment_ids.shape} must be equal [B, T]")
    B, T = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))  # (B, T)
    logits, pre_norm, _ = model.decoder(
        shared_embedding=model.token_embedder,
        decoder_input_tokens=tokens,
        decoder_positions=positions,
        decoder_segment_ids=segment_ids,
        deterministic=True,
        model_mode="train",
    )  # (B, T, V), (B, T, D)
    # MaxText sows intermediates on every call; popping them keeps the model's graph the same
    # from call to call, so jitted steps do not retrace.
    nnx.pop(model, nnx.Intermediate)
    hidden = model.decoder.decoder_norm(pre_norm)  # (B, T, D), the input of the output head
    return logits.astype(jnp.float32), hidden


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Per-token log-probabilities of `tokens` under next-token `logits`.

    Args:
      logits: [B, T, V]; logits[:, t] is the distribution of tokens[:, t + 1].
      tokens: int [B, T].

    Returns:
      float32 [B, T] with out[:, t] = log p(tokens[:, t] | tokens[:, :t]) and out[:, 0] = 0
      (the first token has no prediction).
    """
    if logits.ndim != 3 or tokens.shape != logits.shape[:2]:
        raise ValueError(f"token_logprobs: logits {logits.shape} must be [B, T, V] with tokens {tokens.shape} = [B, T]")
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)  # (B, T-1, V)
    picked = jnp.take_along_axis(logp, tokens[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]  # (B, T-1)
    return jnp.concatenate([jnp.zeros_like(picked[:, :1]), picked], axis=1)  # (B, T)
