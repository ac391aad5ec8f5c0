"""Throughput benchmark of the real LoRA train step and of KV-cache generation.

    python -m capt_jax.bench train    --arch qwen2.5-3b --dtype bfloat16 --batch 8 --seq 1024 --lora-rank 64
    python -m capt_jax.bench generate --arch qwen2.5-3b --dtype bfloat16 --batch 32 --prompt-len 256 --new-tokens 256

`--arch NAME` builds random weights of a named architecture (no download); `--model DIR` loads a model folder
(or a .gguf file, or 'smollm2'). `--quantize int8|nf4` (with `--double-quant`) stores the seven projections
quantized, as `model.quantize` does; every result reports the base's resident bytes. `train` times exactly the
step `capt_jax.train` runs: `make_train_step` jitted with the state donated, AdamW on the LoRA weights, LoRA
dropout from the state's key. `generate` times the jitted `capt_jax.generate.decode` (prefill + greedy decode
loop, EOS ignored so every row makes all its tokens).

Reported: median step time over `--steps` (>= 10) timed steps after `--warmup` untimed ones, tokens/s, MFU,
peak memory, compile time; the last line printed is one JSON object. benchmarks/peft_peer.py measures the same
for transformers + peft and imports the architecture table, the batch and the FLOP formulas from here.

FLOP formula (model FLOPs: what the maths needs, so recomputation under remat is not counted):

    N     = L * sum over the 7 projections of (in * out) + V * D          (every matmul weight; lm_head included)
    attn  = 4 * L * Hq * hd * c                                            (QK^T and PV for one query over c keys)
    LoRA training, per token of a length-T sequence:
        forward 2N + input-gradient backward 2N                            (frozen base: no weight gradients)
        + 6 * L * r * sum over adapted projections of (in + out)           (adapter fwd 2r(i+o), bwd 4r(i+o))
        + 3 * attn(c = (T + 1) / 2)                                        (causal: mean keys per query; bwd = 2x fwd)
    generation: prefill 2(N - V*D) + attn((P + 1) / 2) per prompt token, 2VD for the last position's logits,
        then per new token 2N + attn(c) with c its context length.

MFU = FLOPs per second / peak: the dense datasheet peak of the device kind for the dtype (PEAK_FLOPS), or on a CPU
the best rate of a large matmul measured in the same process (`peak_flops_source` says which); `--peak-flops`
overrides both.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# Architectures in Hugging Face config.json form, so peft_peer.py builds the very same model from them.
ARCHS: dict[str, dict[str, Any]] = {
    "qwen2.5-3b": {
        "model_type": "qwen2",
        "vocab_size": 151936,
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "head_dim": 128,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "tie_word_embeddings": True,
        "max_position_embeddings": 32768,
        "hidden_act": "silu",
        "eos_token_id": 151645,
    },
    "llama3.2-3b": {
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "tie_word_embeddings": True,
        "max_position_embeddings": 131072,
        "hidden_act": "silu",
        "eos_token_id": 128009,
    },
    "smollm2-135m": {
        "model_type": "llama",
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
        "tie_word_embeddings": True,
        "max_position_embeddings": 8192,
        "hidden_act": "silu",
        "eos_token_id": 2,
    },
    # For smoke tests: seconds to compile on a CPU.
    "tiny": {
        "model_type": "qwen2",
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "tie_word_embeddings": True,
        "max_position_embeddings": 4096,
        "hidden_act": "silu",
        "eos_token_id": 0,
    },
}

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
GIB = 1024**3
Peak = tuple[float | None, str]  # (FLOP/s, where that number comes from)
Memory = tuple[int | None, str]  # (peak bytes, what was measured)

# Dense (no sparsity) peak FLOP/s per device from the vendors' datasheets: (substring of device_kind, dtype).
# float32 on NVIDIA is the TF32 tensor-core rate (XLA's default precision for f32 dots on Ampere and later).
# The first matching substring wins, so the specific names come first.
PEAK_FLOPS: list[tuple[str, str, float]] = [
    ("H100 PCIe", "bfloat16", 756e12),
    ("H100 PCIe", "float16", 756e12),
    ("H100 PCIe", "float32", 378e12),
    ("H100 NVL", "bfloat16", 835e12),
    ("H100 NVL", "float16", 835e12),
    ("H100 NVL", "float32", 418e12),
    ("H100", "bfloat16", 989.4e12),  # H100 SXM5
    ("H100", "float16", 989.4e12),
    ("H100", "float32", 494.7e12),
    ("H200", "bfloat16", 989.4e12),
    ("H200", "float16", 989.4e12),
    ("H200", "float32", 494.7e12),
    ("A100", "bfloat16", 312e12),
    ("A100", "float16", 312e12),
    ("A100", "float32", 156e12),
    ("TPU v4", "bfloat16", 275e12),
    ("TPU v5 lite", "bfloat16", 197e12),
    ("TPU v5e", "bfloat16", 197e12),
    ("TPU v5p", "bfloat16", 459e12),
    ("TPU v5", "bfloat16", 459e12),
    ("TPU v6", "bfloat16", 918e12),
]


def datasheet_peak(device_kind: str, dtype: str) -> float | None:
    for kind, kind_dtype, peak in PEAK_FLOPS:
        if kind.lower() in device_kind.lower() and kind_dtype == dtype:
            return peak
    return None


# ---------------------------------------------------------------- architecture, batch and FLOPs (framework-free)


def hf_config_dict(arch: str | None = None, model: str | None = None) -> dict[str, Any]:
    """The Hugging Face config.json of a named architecture or of a model folder."""
    if model is not None:
        from capt_jax.pretrained import resolve_model_dir

        with open(resolve_model_dir(model) / "config.json") as f:
            return json.load(f)
    if arch not in ARCHS:
        raise SystemExit(f"error: unknown --arch {arch!r}; known: {', '.join(ARCHS)}")
    return dict(ARCHS[arch])


def projection_dims(cfg: Any) -> dict[str, tuple[int, int]]:
    """(in, out) of every projection of one layer, for a ModelConfig."""
    D, F = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return {
        "q_proj": (D, q),
        "k_proj": (D, kv),
        "v_proj": (D, kv),
        "o_proj": (q, D),
        "gate_proj": (D, F),
        "up_proj": (D, F),
        "down_proj": (F, D),
    }


def matmul_params(cfg: Any) -> int:
    """N: every weight that takes part in a matmul per token (the layers' projections and the LM head)."""
    per_layer = sum(i * o for i, o in projection_dims(cfg).values())
    return cfg.num_layers * per_layer + cfg.vocab_size * cfg.hidden_size


def attention_flops(cfg: Any, context: float) -> float:
    """QK^T and PV of one query token over `context` keys, all layers (the softmax is not counted)."""
    return 4.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * context


def train_flops_per_token(cfg: Any, seq: int, rank: int, targets: Sequence[str] = DEFAULT_TARGETS) -> dict[str, float]:
    dims = projection_dims(cfg)
    base = 4.0 * matmul_params(cfg)  # forward 2N + input gradients 2N; no base-weight gradients
    lora = 6.0 * cfg.num_layers * rank * sum(sum(dims[t]) for t in targets)
    attention = 3.0 * attention_flops(cfg, (seq + 1) / 2)
    return {"base": base, "lora": lora, "attention": attention, "total": base + lora + attention}


def generate_flops(cfg: Any, batch: int, prompt_len: int, new_tokens: int) -> float:
    """Prefill of the prompt (logits of its last position only) plus new_tokens - 1 decode steps."""
    n, head = matmul_params(cfg), cfg.vocab_size * cfg.hidden_size
    prefill = prompt_len * (2.0 * (n - head) + attention_flops(cfg, (prompt_len + 1) / 2)) + 2.0 * head
    decode = sum(2.0 * n + attention_flops(cfg, prompt_len + i + 1) for i in range(1, new_tokens))
    return batch * (prefill + decode)


def token_batch(seed: int, batch: int, seq: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) [batch, seq] int32 of random tokens: targets are the inputs shifted by one."""
    tokens = np.random.default_rng(seed).integers(0, vocab, (batch, seq + 1), dtype=np.int64).astype(np.int32)
    return tokens[:, :-1], tokens[:, 1:]


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds of the first call (compile or cache warm-up), then of each timed call: wall clock and process CPU."""

    first_s: float
    times: list[float]
    cpu: list[float]


def measure(time_calls: Callable[..., list[float]], call: Callable[[], Any], warmup: int, steps: int) -> Timing:
    """The protocol both sides follow: one first call, `warmup - 1` more untimed, then `steps` timed.

    `time_calls(call, steps, cpu=None)` is the side's own timer (the peer synchronises its device around a call)."""
    first = time_calls(call, 1)[0]
    time_calls(call, max(warmup - 1, 0))
    cpu: list[float] = []
    times = time_calls(call, steps, cpu)
    return Timing(first, times, cpu)


def report_fields(
    unit: str, timing: Timing, work_key: str, work: float, flops: float, peak: Peak, memory: Memory
) -> dict[str, Any]:
    """Timing, throughput, MFU and memory under the same names for capt_jax and the peer, so compare.py can
    put them side by side. `unit` is "step" (train) or "call" (generate); `work` is its tokens, `flops` its FLOPs."""
    median = statistics.median(timing.times)
    achieved = flops / median
    peak_flops_per_s, peak_source = peak
    memory_bytes, memory_kind = memory
    return {
        f"{unit}_time_s": median,
        f"{unit}_time_min_s": min(timing.times),
        f"{unit}_time_max_s": max(timing.times),
        f"cpu_time_per_{unit}_s": statistics.median(timing.cpu),
        f"first_{unit}_s": timing.first_s,
        work_key: work,
        "tokens_per_second": work / median,
        "tflops_per_second": achieved / 1e12,
        "peak_flops": peak_flops_per_s,
        "peak_flops_source": peak_source,
        "mfu": achieved / peak_flops_per_s if peak_flops_per_s else None,
        "peak_memory_bytes": memory_bytes,
        "peak_memory_gib": memory_bytes / GIB if memory_bytes else None,
        "peak_memory_kind": memory_kind,
    }


def train_report(
    args: argparse.Namespace,
    cfg: Any,
    timing: Timing,
    losses: Sequence[float],
    *,
    framework: str,
    model: str,
    info: dict[str, Any],
    attention: str,
    lora_alpha: float,
    peak: Peak,
    memory: Memory,
) -> dict[str, Any]:
    """The fields of a train result that capt_jax and the peer share; each adds its own."""
    tokens = args.batch * args.seq
    flops = train_flops_per_token(cfg, args.seq, args.lora_rank, args.targets)
    return {
        "bench": "train",
        "framework": framework,
        "model": model,
        **info,
        "dtype": args.dtype,
        "batch": args.batch,
        "seq": args.seq,
        "lora_rank": args.lora_rank,
        "lora_alpha": lora_alpha,
        "lora_dropout": args.lora_dropout,
        "targets": list(args.targets),
        "attention": attention,
        "steps": args.steps,
        "flops_per_token": flops,
        **report_fields("step", timing, "tokens_per_step", tokens, flops["total"] * tokens, peak, memory),
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


def generate_report(
    args: argparse.Namespace,
    cfg: Any,
    timing: Timing,
    first_tokens: Sequence[int],
    *,
    framework: str,
    model: str,
    info: dict[str, Any],
    attention: str,
    peak: Peak,
    memory: Memory,
) -> dict[str, Any]:
    """The fields of a generate result that capt_jax and the peer share; each adds its own."""
    flops = generate_flops(cfg, args.batch, args.prompt_len, args.new_tokens)
    fields = report_fields("call", timing, "new_tokens_per_call", args.batch * args.new_tokens, flops, peak, memory)
    return {
        "bench": "generate",
        "framework": framework,
        "model": model,
        **info,
        "dtype": args.dtype,
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "attention": attention,
        "steps": args.steps,
        "flops_per_call": flops,
        "ms_per_new_token": 1e3 * fields["call_time_s"] / args.new_tokens,
        **fields,
        "first_tokens": list(first_tokens),
    }


def host_peak_rss_bytes() -> int:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def emit(result: dict[str, Any], lines: Sequence[str]) -> None:
    for line in lines:
        print(line)
    print(json.dumps(result, sort_keys=False), flush=True)


# ---------------------------------------------------------------- JAX side


def _jax():
    import jax

    return jax


def device_info() -> dict[str, Any]:
    jax = _jax()
    dev = jax.local_devices()[0]
    kind = dev.device_kind if dev.platform != "cpu" else f"cpu: {cpu_name()} x{os.cpu_count()}"
    return {"backend": dev.platform, "device": kind, "jax": jax.__version__}


def measured_matmul_peak(dtype: str, n: int = 2048, reps: int = 5) -> float:
    """Best FLOP/s of an n x n x n matmul in this process: the CPU's MFU denominator."""
    jax = _jax()
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.PRNGKey(2), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def peak_flops(args: argparse.Namespace, backend: str, device_kind: str) -> Peak:
    if args.peak_flops:
        return args.peak_flops, "--peak-flops"
    peak = datasheet_peak(device_kind, args.dtype)
    if peak is not None:
        return peak, f"datasheet dense {args.dtype} peak of {device_kind}"
    if backend == "cpu":
        return measured_matmul_peak(args.dtype), f"measured 2048^3 {args.dtype} jnp.matmul on this CPU"
    return None, f"unknown peak for {device_kind} {args.dtype}: pass --peak-flops"


def device_memory() -> Memory:
    """(peak bytes, what was measured): the allocator's peak on an accelerator, the process's peak RSS on a CPU."""
    stats = _jax().local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    return host_peak_rss_bytes(), "host peak RSS of the whole process"


def compiled_bytes(compiled: Any) -> int | None:
    """What XLA plans for one call: arguments + outputs - donated aliases + temporaries."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)
    except Exception:  # not every backend reports it
        return None


def load_model(args: argparse.Namespace):
    """(ModelConfig, base params, name) from --model or random weights of --arch."""
    jax = _jax()
    from capt_jax.model import ModelConfig, init_params

    attention = None if args.attention == "auto" else args.attention
    quantization = {"quantize": args.quantize, "double_quant": args.double_quant}
    if args.model:
        from capt_jax.pretrained import load_pretrained

        model = load_pretrained(args.model, dtype=args.dtype, attention_impl=attention, progress=False, **quantization)
        cfg = model.config
        return cfg.replace(remat_policy=getattr(args, "remat", "none")), model.params, str(model.path)
    hf = hf_config_dict(arch=args.arch)
    cfg = ModelConfig.from_hf_dict(
        hf, source=f"--arch {args.arch}", dtype=args.dtype, attention_impl=attention,
        remat_policy=getattr(args, "remat", "none"), **quantization,
    )  # fmt: skip
    # One leaf at a time (see init_params), each draw fused into its cast or, with --quantize, its quantizer: the
    # whole tree at once ran out of memory for the 3B on a 24 GiB host, and no float32 copy of the weights exists.
    params = jax.block_until_ready(init_params(cfg, jax.random.PRNGKey(args.seed), args.dtype))
    return cfg, params, args.arch


def time_calls(call: Callable[[], Any], steps: int, cpu: list[float] | None = None) -> list[float]:
    """Wall-clock seconds of each call; with `cpu`, also this process's CPU seconds (all threads) of each."""
    times = []
    for _ in range(steps):
        c, t = time.process_time(), time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
        if cpu is not None:
            cpu.append(time.process_time() - c)
    return times


Loaded = tuple[Any, Any, str]  # (ModelConfig, base params, name), as load_model returns them


def bench_train(args: argparse.Namespace, loaded: Loaded | None = None) -> dict[str, Any]:
    """The train report; `loaded` is a model load_model (or the caller) already holds."""
    jax = _jax()
    import jax.numpy as jnp

    from capt_jax.config import default_config
    from capt_jax.lora import init_lora, make_optimizer, warmup_cosine
    from capt_jax.model.attention import attention_implementation
    from capt_jax.train import make_train_step

    if args.prng_impl != "default":
        jax.config.update("jax_default_prng_impl", args.prng_impl)
    cfg, base, name = loaded or load_model(args)
    config = default_config()
    config.lora.rank, config.lora.alpha = args.lora_rank, float(args.lora_alpha or 2 * args.lora_rank)
    config.lora.dropout, config.lora.targets = args.lora_dropout, tuple(args.targets)
    config.train.batch_size, config.train.grad_accum = args.batch, args.grad_accum
    schedule = warmup_cosine(config.train.learning_rate, config.train.max_steps, config.train.warmup_ratio)
    optimizer = make_optimizer(schedule, config.train.weight_decay, config.train.grad_clip)
    rng, lora_rng = jax.random.split(jax.random.PRNGKey(args.seed))
    adapters = init_lora(cfg, config.lora.targets, config.lora.rank, lora_rng)
    state = {"step": jnp.array(0, jnp.int32), "lora": adapters, "opt": optimizer.init(adapters), "rng": rng}

    inputs, targets = token_batch(args.seed, args.batch, args.seq, cfg.vocab_size)
    micro = args.batch // args.grad_accum
    shape = (args.grad_accum, micro, args.seq)
    batch = jax.device_put(
        {
            "inputs": inputs.reshape(shape),
            "targets": targets.reshape(shape),
            "weights": np.ones(shape, np.float32),
            "mask": np.ones(shape, bool),
            "task": np.zeros(shape[:2], np.int32),  # every row an ordinary (intervention) row, as batches.make_batch
        }
    )
    # Exactly the step capt_jax.train runs (there with shardings too, which one device does not need).
    step = jax.jit(make_train_step(cfg, config, optimizer, schedule), donate_argnums=(0,))
    t0 = time.perf_counter()
    lowered = step.lower(state, base, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()

    losses: list[float] = []

    def one_step():
        nonlocal state
        state, metrics = compiled(state, base, batch)
        losses.append(float(metrics["loss"]))  # waits for the step, as train.py does

    timing = measure(time_calls, one_step, args.warmup, args.steps)
    jax.block_until_ready(state)
    info = device_info()
    return {
        **train_report(
            args,
            cfg,
            timing,
            losses,
            framework="capt_jax",
            model=name,
            info=info,
            attention=attention_implementation(cfg),
            lora_alpha=config.lora.alpha,
            peak=peak_flops(args, info["backend"], info["device"]),
            memory=device_memory(),
        ),
        **quantization_fields(cfg, base),
        "grad_accum": args.grad_accum,
        "remat": cfg.remat_policy,
        "prng_impl": str(jax.config.jax_default_prng_impl),
        "xla_step_bytes": compiled_bytes(compiled),
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
    }


def bench_generate(args: argparse.Namespace, loaded: Loaded | None = None) -> dict[str, Any]:
    """The generate report; `loaded` as for bench_train."""
    jax = _jax()

    from capt_jax.generate import Sampling, decode
    from capt_jax.model.attention import attention_implementation

    cfg, params, name = loaded or load_model(args)
    prompt, _ = token_batch(args.seed, args.batch, args.prompt_len, cfg.vocab_size)
    prompt = jax.device_put(prompt)
    mask = jax.device_put(np.ones(prompt.shape, bool))
    rng = jax.random.PRNGKey(args.seed)
    # No EOS ids: every row makes all new tokens (random weights would stop at random places otherwise).
    static = dict(config=cfg, max_new_tokens=args.new_tokens, sampling=Sampling(), eos_ids=(), pad_id=0)
    t0 = time.perf_counter()
    lowered = decode.lower(params, prompt, mask, rng, **static)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    outputs = []

    def one_call():
        outputs.append(np.asarray(compiled(params, prompt, mask, rng)))

    timing = measure(time_calls, one_call, args.warmup, args.steps)
    info = device_info()
    return {
        **generate_report(
            args,
            cfg,
            timing,
            outputs[0][0, :8].tolist(),
            framework="capt_jax",
            model=name,
            info=info,
            attention=attention_implementation(cfg),
            peak=peak_flops(args, info["backend"], info["device"]),
            memory=device_memory(),
        ),
        **quantization_fields(cfg, params),
        "xla_step_bytes": compiled_bytes(compiled),
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
    }


def quantization_fields(cfg: Any, params: Any) -> dict[str, Any]:
    """How the base is stored, and its resident bytes (whole tree, and the seven projections alone)."""
    from capt_jax.model.decoder import parameter_bytes

    sizes = parameter_bytes(params)
    return {
        "quantize": cfg.quantize,
        "double_quant": cfg.double_quant,
        "param_bytes": sizes["total"],
        "projection_bytes": sizes["projections"],
    }


def human_lines(r: dict[str, Any]) -> list[str]:
    what = "step" if r["bench"] == "train" else "call"
    t = r[f"{what}_time_s"]
    lo, hi = r[f"{what}_time_min_s"], r[f"{what}_time_max_s"]
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
    mem = f"{r['peak_memory_gib']:.2f} GiB ({r['peak_memory_kind']})" if r.get("peak_memory_gib") else "n/a"
    stored = (
        f" ({r['quantize']}{' +dq' if r.get('double_quant') else ''} projections)"
        if r.get("quantize", "none") != "none"
        else ""
    )
    lines = [
        f"{r['framework']} {r['bench']} on {r['device']}: {r['model']} {r['dtype']}{stored}",
        f"  {what} {1e3 * t:.1f} ms (median of {r['steps']}; min {1e3 * lo:.1f}, max {1e3 * hi:.1f}; "
        f"{1e3 * r[f'cpu_time_per_{what}_s']:.0f} ms of process CPU time)",
        f"  {r['tokens_per_second']:,.0f} {'new ' if r['bench'] == 'generate' else ''}tokens/s, "
        f"{r['tflops_per_second']:.2f} TFLOP/s, MFU {mfu} of {r['peak_flops_source']}",
        f"  peak memory {mem}",
    ]
    if "compile_s" in r:
        lines.append(f"  compile {r['compile_s']:.1f} s (+ {r['lower_s']:.1f} s tracing)")
    return lines


def add_common(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--arch", default="smollm2-135m", help=f"random weights of one of: {', '.join(ARCHS)}")
    src.add_argument("--model", help="a model folder (config.json + safetensors), a .gguf file, or 'smollm2'")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--quantize", default="none", choices=["none", "int8", "nf4"], help="storage of the projections")
    p.add_argument("--double-quant", action="store_true", help="with --quantize: quantize the block scales too")
    p.add_argument("--attention", default="auto", choices=["auto", "xla", "cudnn"])
    p.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported); at least 10")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation, the first included")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak-flops", type=float, default=None, help="MFU denominator in FLOP/s (default: see docs)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m capt_jax.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    train = sub.add_parser("train", help="time the LoRA train step")
    add_common(train)
    train.add_argument("--seq", type=int, default=256)
    train.add_argument("--lora-rank", type=int, default=64)
    train.add_argument("--lora-alpha", type=float, default=None, help="default: 2 x rank")
    train.add_argument("--lora-dropout", type=float, default=0.1)
    train.add_argument("--targets", type=lambda s: tuple(s.split(",")), default=DEFAULT_TARGETS)
    train.add_argument("--remat", default="none", choices=["none", "full", "dots", "dots_no_batch"])
    train.add_argument("--grad-accum", type=int, default=1)
    train.add_argument(
        "--prng-impl", default="default", choices=["default", "threefry2x32", "rbg", "unsafe_rbg"],
        help="JAX PRNG implementation for the dropout key (an experiment knob; train.py uses the default)",
    )  # fmt: skip
    gen = sub.add_parser("generate", help="time greedy KV-cache generation")
    add_common(gen)
    gen.add_argument("--prompt-len", type=int, default=64)
    gen.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be at least 1")
    if args.bench == "train" and args.batch % args.grad_accum:
        parser.error("--batch must be a multiple of --grad-accum")
    if args.double_quant and args.quantize == "none":
        parser.error("--double-quant needs --quantize int8 or nf4")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.steps < 10:
        print(f"note: --steps {args.steps} < 10: the median is less reliable than the issue asks for")
    result = bench_train(args) if args.bench == "train" else bench_generate(args)
    emit(result, human_lines(result))
    return result


if __name__ == "__main__":
    main()
