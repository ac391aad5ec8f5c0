"""The peer of `python -m capt_jax.bench`: the same measurement for transformers + peft, on the same device.

    python benchmarks/peft_peer.py train    --arch qwen2.5-3b --dtype bfloat16 --batch 8 --seq 1024 --lora-rank 64 \
        [--gradient-checkpointing]
    python benchmarks/peft_peer.py generate --arch qwen2.5-3b --dtype bfloat16 --batch 32 --prompt-len 256 \
        --new-tokens 256

The model is built from the same config.json that capt_jax.bench uses (random weights, no download) or loaded from
`--model DIR`; `--save-model DIR` writes the random model, so `capt_jax.bench --config.model.path=DIR` can run on
the very same weights (then both `first_loss` values, the base model's loss on the same token batch, must agree).

train: peft LoRA (same rank, alpha, dropout, targets) on the base in `--dtype` (peft keeps the adapters in float32),
sdpa attention, torch AdamW on the adapters (fused on CUDA) with the same lr / weight decay / betas and global-norm
clipping at 1.0, loss = transformers' own causal-LM cross-entropy on the same inputs and targets.
generate: `model.generate`, greedy, KV cache, min_new_tokens = max_new_tokens so no row stops early.

Same timing (median of --steps after --warmup), tokens/s, FLOP formula and MFU as capt_jax.bench (imported from it);
peak memory is torch.cuda.max_memory_allocated on a GPU and the process's peak RSS on a CPU. Last line: one JSON.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # capt_jax imports jax; keep it off the GPU

import numpy as np  # noqa: E402
import torch  # noqa: E402

from capt_jax.architectures import ARCHS, hf_config_dict  # noqa: E402
from capt_jax.bench import (  # noqa: E402
    GIB,
    Memory,
    Peak,
    cpu_name,
    emit,
    generate_report,
    host_peak_rss_bytes,
    human_lines,
    matmul_peak,
    measure,
    token_batch,
    train_report,
)
from capt_jax.flops import datasheet_peak  # noqa: E402
from capt_jax.lora import DEFAULT_TARGETS  # noqa: E402
from capt_jax.model import ModelConfig  # noqa: E402  (pure Python: the FLOP formulas read its fields)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_info(device: torch.device) -> dict[str, Any]:
    import peft
    import transformers

    if device.type == "cuda":
        kind = torch.cuda.get_device_name(device)
    else:
        kind = f"cpu: {cpu_name()} x{os.cpu_count()} ({torch.get_num_threads()} torch threads)"
    return {
        "backend": "gpu" if device.type == "cuda" else device.type,
        "device": kind,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def measured_matmul_peak(dtype: torch.dtype, device: torch.device, reps: int = 5) -> tuple[float, int]:
    """capt_jax.bench.matmul_peak for torch.matmul: the same sizes and timing as capt_jax's own denominator."""

    def best_seconds(n: int) -> float:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        product = functools.partial(torch.matmul, a, b)
        time_calls(device, product, 1)
        return min(time_calls(device, product, reps))

    return matmul_peak(best_seconds)


def peak_flops(args: argparse.Namespace, device: torch.device, kind: str) -> Peak:
    if args.peak_flops:
        return args.peak_flops, "--peak-flops"
    peak = datasheet_peak(kind, args.dtype)
    if peak is not None:
        return peak, f"datasheet dense {args.dtype} peak of {kind}"
    if device.type == "cpu":
        peak, n = measured_matmul_peak(DTYPES[args.dtype], device)
        return peak, f"measured {n}^3 {args.dtype} torch.matmul on this CPU"
    return None, f"unknown peak for {kind} {args.dtype}: pass --peak-flops"


def memory(device: torch.device) -> Memory:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    return host_peak_rss_bytes(), "host peak RSS of the whole process"


def build_model(args: argparse.Namespace, device: torch.device):
    """(transformers model in --dtype on device, capt_jax ModelConfig for the FLOP formulas, name)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = DTYPES[args.dtype]
    if args.model:
        from capt_jax.pretrained import resolve_model_dir

        folder = resolve_model_dir(args.model)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa").to(device)
        hf, name = hf_config_dict(model=str(folder)), str(folder)
    else:
        hf, name = hf_config_dict(arch=args.arch), args.arch
        config = AutoConfig.for_model(**hf)
        torch.manual_seed(args.seed)
        with torch.device(device):  # random init straight on the device
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
        if args.save_model:
            model.save_pretrained(args.save_model)
            print(f"saved the random model to {args.save_model}")
    model.config.use_cache = args.bench == "generate"
    return model, ModelConfig.from_hf_dict(hf, source=name), name


def time_calls(device: torch.device, call, steps: int, cpu: list[float] | None = None) -> list[float]:
    times = []
    for _ in range(steps):
        sync(device)
        c, t = time.process_time(), time.perf_counter()
        call()
        sync(device)
        times.append(time.perf_counter() - t)
        if cpu is not None:
            cpu.append(time.process_time() - c)
    return times


def bench_train(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model

    model, cfg, name = build_model(args, device)
    alpha = float(args.lora_alpha or 2 * args.lora_rank)
    lora = LoraConfig(
        r=args.lora_rank,
        lora_alpha=alpha,
        lora_dropout=args.lora_dropout,
        target_modules=list(args.targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # capt_jax's optimizer: AdamW(lr 3e-4, b1 .9, b2 .999, eps 1e-8, wd .01) after clipping the global norm at 1.
    optimizer = torch.optim.AdamW(
        params, lr=3e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, fused=device.type == "cuda"
    )

    inputs, targets = token_batch(args.seed, args.batch, args.seq, cfg.vocab_size)
    inputs = torch.from_numpy(inputs.astype(np.int64)).to(device)
    targets = torch.from_numpy(targets.astype(np.int64)).to(device)
    mask = torch.ones_like(inputs)
    losses: list[float] = []

    def one_step():
        optimizer.zero_grad(set_to_none=True)
        # shift_labels: the targets are already the next tokens, so all seq positions count, as in capt_jax.
        loss = model(input_ids=inputs, attention_mask=mask, labels=targets, shift_labels=targets).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())  # waits for the step

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timing = measure(functools.partial(time_calls, device), one_step, args.warmup, args.steps)
    info = device_info(device)
    return {
        **train_report(
            args,
            cfg,
            timing,
            losses,
            framework="peft" + (" +ckpt" if args.gradient_checkpointing else ""),
            model=name,
            info=info,
            attention=model.config.get_text_config()._attn_implementation,
            lora_alpha=alpha,
            peak=peak_flops(args, device, info["device"]),
            memory=memory(device),
        ),
        "gradient_checkpointing": args.gradient_checkpointing,
        "torch_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB if device.type == "cuda" else None,
    }


def bench_generate(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    model, cfg, name = build_model(args, device)
    model.eval()
    prompt, _ = token_batch(args.seed, args.batch, args.prompt_len, cfg.vocab_size)
    prompt = torch.from_numpy(prompt.astype(np.int64)).to(device)
    mask = torch.ones_like(prompt)
    outputs = []

    @torch.inference_mode()
    def one_call():
        out = model.generate(
            input_ids=prompt,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            pad_token_id=0,
        )
        outputs.append(out[:, args.prompt_len :].cpu().numpy())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timing = measure(functools.partial(time_calls, device), one_call, args.warmup, args.steps)
    assert outputs[-1].shape == (args.batch, args.new_tokens), outputs[-1].shape
    info = device_info(device)
    return generate_report(
        args,
        cfg,
        timing,
        outputs[0][0, :8].tolist(),
        framework="transformers",
        model=name,
        info=info,
        attention=model.config._attn_implementation,
        peak=peak_flops(args, device, info["device"]),
        memory=memory(device),
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/peft_peer.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    for mode in ("train", "generate"):
        p = sub.add_parser(mode)
        src = p.add_mutually_exclusive_group()
        src.add_argument("--arch", default="smollm2-135m", help=f"random weights of one of: {', '.join(ARCHS)}")
        src.add_argument("--model", help="a model folder, a .gguf file, or 'smollm2'")
        p.add_argument("--batch", type=int, default=4)
        p.add_argument("--dtype", default="float32", choices=list(DTYPES))
        p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda")
        p.add_argument("--steps", type=int, default=10)
        p.add_argument("--warmup", type=int, default=2)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--peak-flops", type=float, default=None)
        p.add_argument("--save-model", default=None, help="save the random model here (safetensors)")
        if mode == "train":
            p.add_argument("--seq", type=int, default=256)
            p.add_argument("--lora-rank", type=int, default=64)
            p.add_argument("--lora-alpha", type=float, default=None, help="default: 2 x rank")
            p.add_argument("--lora-dropout", type=float, default=0.1)
            p.add_argument("--targets", type=lambda s: tuple(s.split(",")), default=DEFAULT_TARGETS)
            p.add_argument("--gradient-checkpointing", action="store_true")
        else:
            p.add_argument("--prompt-len", type=int, default=64)
            p.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be at least 1")
    return args


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    result = bench_train(args, device) if args.bench == "train" else bench_generate(args, device)
    emit(result, human_lines(result))
    return result


if __name__ == "__main__":
    main()
