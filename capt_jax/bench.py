r"""Throughput benchmark of the real LoRA train step and of KV-cache generation.

    python -m capt_jax.bench train --arch qwen2.5-3b --config.model.dtype=bfloat16 --config.train.batch_size=8 \
        --config.train.seq_len=1024 --config.lora.rank=64
    python -m capt_jax.bench generate --arch qwen2.5-3b --config.model.dtype=bfloat16 \
        --config.train.batch_size=32 --prompt-len 256 --new-tokens 256

What runs is set by the same config keys as training: model.path (a folder, a .gguf file or 'smollm2'; or
`--arch NAME` for random weights of a named architecture, no download), model.dtype (storage and compute),
model.quantize / model.double_quant, model.remat, model.attention_impl, train.batch_size (the batch of both
benches), train.seq_len, train.grad_accum and lora.*; every result reports the base's resident bytes.
`train` times exactly the step `capt_jax.train` runs: `make_train_step` jitted with the state donated, AdamW
on the LoRA weights, LoRA dropout from the state's key. `generate` times the jitted `capt_jax.generate.decode`
(prefill + greedy decode loop, EOS ignored so every row makes all its tokens).

Reported: median step time over `--steps` (>= 10) timed steps after `--warmup` untimed ones, tokens/s, MFU,
peak memory, compile time; the last line printed is one JSON object. benchmarks/peft_peer.py measures the same
for transformers + peft with the same timing protocol and report (from here), the same architectures
(capt_jax/architectures.py) and the same FLOP formulas and datasheet peaks (capt_jax/flops.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import flags

from capt_jax import cli
from capt_jax.architectures import ARCHS, hf_config_dict
from capt_jax.config import ConfigDict, validate_batch, validate_lora, validate_model
from capt_jax.flops import datasheet_peak, generate_flops, train_flops_per_token

GIB = 1024**3
Peak = tuple[float | None, str]  # (FLOP/s, where that number comes from)
Memory = tuple[int | None, str]  # (peak bytes, what was measured)


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


def matmul_peak(best_seconds: Callable[[int], float], n_max: int = 2048, budget_s: float = 1.0) -> tuple[float, int]:
    """Best FLOP/s of an n x n x n product, and the n it was measured at: the CPU's MFU denominator.

    n doubles from 256 to n_max while the next size (8x this one's time) fits in budget_s. On a dtype the CPU
    has no fast kernel for (torch's bf16 on an AMD EPYC runs at about 1 GFLOP/s), 2048^3 takes about 17 s per
    product, minutes with the warm-up and the timed repeats, and stalls a short benchmark; on a fast kernel this
    ends at n_max, as a fixed 2048 did.
    best_seconds(n) is the best of a few timed products at size n, after a warm-up.
    """
    n, seconds = 256, best_seconds(256)
    while n < n_max and 8 * seconds <= budget_s:
        n = min(2 * n, n_max)
        seconds = best_seconds(n)
    return 2.0 * n**3 / seconds, n


def measured_matmul_peak(dtype: str, reps: int = 5) -> tuple[float, int]:
    """matmul_peak for jnp.matmul in this process."""
    jax = _jax()
    import jax.numpy as jnp

    f = jax.jit(jnp.matmul)
    rng = np.random.default_rng(1)  # numpy draws: jax.random.normal would compile a program per size

    def best_seconds(n: int) -> float:
        a, b = (jnp.asarray(rng.standard_normal((n, n), np.float32), dtype) for _ in range(2))

        def product() -> None:
            f(a, b).block_until_ready()

        time_calls(product, 1)  # compiles for this n
        return min(time_calls(product, reps))

    return matmul_peak(best_seconds)


def peak_flops(args: argparse.Namespace, backend: str, device_kind: str) -> Peak:
    if args.peak_flops:
        return args.peak_flops, "--peak-flops"
    peak = datasheet_peak(device_kind, args.dtype)
    if peak is not None:
        return peak, f"datasheet dense {args.dtype} peak of {device_kind}"
    if backend == "cpu":
        peak, n = measured_matmul_peak(args.dtype)
        return peak, f"measured {n}^3 {args.dtype} jnp.matmul on this CPU"
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
    config.lora.rank, config.lora.alpha = args.lora_rank, float(args.lora_alpha)
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

    from capt_jax.generate import Sampling, decode, decoding_layout
    from capt_jax.model import panels
    from capt_jax.model.attention import attention_implementation

    cfg, params, name = loaded or load_model(args)
    storage = quantization_fields(cfg, params)  # reads the stacked tree, as every size helper does
    # The per-layer layout decode runs on, made once before timing as generate() makes it once per call of it
    # (split_layers_s: the split, and on an AVX-512 or AVX2 CPU the packing into panels, their compiles included).
    began = time.perf_counter()
    params = jax.block_until_ready(decoding_layout(cfg, params)[0])
    split_s = time.perf_counter() - began
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
        **storage,
        "xla_step_bytes": compiled_bytes(compiled),
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "split_layers_s": split_s,
        # Which products decode ran: XLA's, or our kernel's for this instruction set (`capt_jax.model.panels`).
        "decode_products": f"panels {panels.for_width(params['lm_head_panels'].shape[-1])}"
        if "lm_head_panels" in params
        else "xla",
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


def _flags(values: flags.FlagValues, bench: str) -> None:
    """The bench's own flags; what it runs (model, batch, LoRA, dtypes) comes from the config keys."""
    flags.DEFINE_string(
        "arch", None, f"random weights of one of {list(ARCHS)} (default: load model.path)", flag_values=values
    )
    flags.DEFINE_integer(
        "steps", 10, "timed steps (the median is reported); at least 10", lower_bound=1, flag_values=values
    )
    flags.DEFINE_integer(
        "warmup", 2, "untimed steps after compilation, the first included", lower_bound=1, flag_values=values
    )
    flags.DEFINE_integer("seed", 0, "random weights and tokens", flag_values=values)
    flags.DEFINE_float(
        "peak-flops",
        None,
        "MFU denominator in FLOP/s (default: see capt_jax/flops.py)",
        lower_bound=1.0,
        flag_values=values,
    )
    if bench == "train":
        flags.DEFINE_bool(
            "loop", False, "time the real training loop (data pipeline, metrics, logging; the config's data and "
            "model.path) against the bare step on the same batches", flag_values=values,
        )  # fmt: skip
        flags.DEFINE_enum(
            "prng-impl", "default", ["default", "threefry2x32", "rbg", "unsafe_rbg"],
            "JAX PRNG implementation for the dropout key (an experiment knob; train.py uses the default)",
            flag_values=values,
        )  # fmt: skip
    else:
        flags.DEFINE_integer("prompt-len", 64, "prompt tokens per row", lower_bound=1, flag_values=values)
        flags.DEFINE_integer("new-tokens", 32, "new tokens per row", lower_bound=1, flag_values=values)


MODEL_KEYS = ("model.path", "model.dtype", "model.quantize", "model.double_quant", "model.attention_impl")
TRAIN_KEYS = (
    *MODEL_KEYS,
    "model.remat",
    "train.batch_size",
    "train.seq_len",
    "train.grad_accum",
    "lora.rank",
    "lora.alpha",
    "lora.dropout",
    "lora.targets",
)


def arguments(bench: str, config: ConfigDict, values: flags.FlagValues) -> argparse.Namespace:
    """What the runners read, from the config and the bench's flags (checked by key)."""
    validate_model(config)
    validate_batch(config)
    validate_lora(config)
    if values.arch is not None:
        hf_config_dict(arch=values.arch)  # an unknown architecture fails here, by name
    args = argparse.Namespace(
        bench=bench,
        arch=values.arch,
        model=None if values.arch else config.model.path,
        batch=config.train.batch_size,
        dtype=config.model.dtype,
        quantize=config.model.quantize,
        double_quant=config.model.double_quant,
        attention=config.model.attention_impl,
        steps=values.steps,
        warmup=values.warmup,
        seed=values.seed,
        peak_flops=values["peak-flops"].value,
    )
    if bench == "train":
        lora = config.lora
        args.seq, args.remat, args.grad_accum = config.train.seq_len, config.model.remat, config.train.grad_accum
        args.lora_rank, args.lora_alpha, args.lora_dropout = lora.rank, lora.alpha, lora.dropout
        args.targets, args.prng_impl = tuple(lora.targets), values["prng-impl"].value
    else:
        args.prompt_len, args.new_tokens = values["prompt-len"].value, values["new-tokens"].value
    return args


def bench_loop(config: ConfigDict, steps: int, warmup: int) -> dict[str, Any]:
    """The real loop (`capt_jax.train.steps`: batches built while a step runs, metrics read one step late, logging,
    the final checkpoint) against the bare step (dispatch, then wait for the loss) on the same `steps` batches.

    One run of setup: `warmup` + `steps` steps compile every length bucket first, then the bare pass, the loop
    over the same steps, and the bare pass again, so drift in a shared machine's speed shows as two bare times.
    """
    from capt_jax import train as training

    with tempfile.TemporaryDirectory() as workdir:
        run_config = ConfigDict(config.to_dict())
        run_config.workdir = workdir
        run_config.train.max_steps = warmup + steps
        run_config.checkpoint.every_steps = warmup + steps
        training.prepare(run_config)
        run = training.setup(run_config)
        batches = [training.step_batch(run, step) for step in range(warmup + steps)]

        def bare(selected: list[dict[str, Any]]) -> float:
            began = time.perf_counter()
            for batch in selected:
                run.state, metrics = run.train_step(run.state, run.base, batch)
                float(metrics["loss"])
            return time.perf_counter() - began

        bare(batches)  # compiles every bucket the timed steps use
        before = bare(batches[warmup:])
        run.start = warmup
        began = time.perf_counter()
        training.steps(run)
        run.mgr.wait_until_finished()
        loop = time.perf_counter() - began
        after = bare(batches[warmup:])
        run.mgr.close()
        run.writer.close()
    reference = (before + after) / 2
    return {
        "bench": "train-loop",
        "framework": "capt_jax",
        "model": str(config.model.path),
        **device_info(),
        "steps": steps,
        "bare_s": [before, after],
        "loop_s": loop,
        "loop_step_s": loop / steps,
        "bare_step_s": reference / steps,
        "loop_overhead": loop / reference - 1,
    }


def run(bench: str, config: ConfigDict, values: flags.FlagValues) -> dict[str, Any]:
    if bench == "train" and values.loop:
        result = bench_loop(config, values.steps, values.warmup)
        line = (
            f"capt_jax train loop on {result['device']}: {result['loop_step_s']:.2f} s/step vs the bare step's "
            f"{result['bare_step_s']:.2f} s (bare passes {result['bare_s'][0]:.1f} s and {result['bare_s'][1]:.1f} s): "
            f"{100 * result['loop_overhead']:+.1f}%"
        )
        emit(result, [line])
        return result
    args = arguments(bench, config, values)
    if args.steps < 10:
        print(f"note: --steps {args.steps} < 10: the median is less reliable than the issue asks for")
    result = bench_train(args) if bench == "train" else bench_generate(args)
    emit(result, human_lines(result))
    return result


def arguments_from(argv: Sequence[str]) -> argparse.Namespace:
    """The runners' arguments for a command line `train|generate [flags] [--config.*]`, for scripts that call the
    runners themselves (benchmarks/qwen3b_cpu.py)."""
    bench, *rest = argv
    config, values = cli.parse(COMMANDS[bench][0], rest)
    return arguments(bench, config, values)


COMMANDS = {
    bench: (
        cli.Command(
            __doc__,
            functools.partial(_flags, bench=bench),
            TRAIN_KEYS if bench == "train" else MODEL_KEYS,
            keep_freed_memory=bench == "train",  # as `capt_jax.train` runs; generation leaves malloc alone
        ),
        functools.partial(run, bench),
    )
    for bench in ("train", "generate")
}


def main(argv: Sequence[str] | None = None) -> None:
    cli.run_group(__doc__, COMMANDS, argv)


if __name__ == "__main__":
    main()
