"""QLoRA measurements for docs/PERFORMANCE.md: what a quantized base costs in memory, accuracy and step time.

    python benchmarks/qlora.py memory [--arch qwen2.5-3b]        resident parameter bytes, from shapes alone
    python benchmarks/qlora.py accuracy [--new-tokens 32]        SmolLM2-135M logits and greedy tokens vs bf16
    python benchmarks/qlora.py train [--steps 100 --batch 2]     SmolLM2-135M LoRA on real PrOntoQA: bf16 vs quantized

`memory` counts `parameter_bytes` over `jax.eval_shape` of the params tree, so a 3B model needs no memory.
`accuracy` and `train` compare each quantized base with the same weights stored in bf16 (model.dtype), all
computing in float32 (the CPU default): the differences are the quantization's alone. `train` builds every
variant's real train step (capt_jax.train.make_train_step) from the same LoRA init and feeds them the same
batches, one step of each in turn (the order rotating), so a busy machine slows all of them alike. Each
subcommand prints a markdown table, then one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import capt_jax
from capt_jax.architectures import ARCHS
from capt_jax.model import ModelConfig, init_params
from capt_jax.model.decoder import parameter_bytes

# (label, model.quantize, model.double_quant)
VARIANTS = [("bf16", "none", False), ("int8", "int8", False), ("nf4", "nf4", False), ("nf4+dq", "nf4", True)]
PROMPTS = [
    "A wumpus is a cat. Every cat is a mammal. Is the wumpus a mammal? Answer Yes or No.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
]
GIB = 1024**3


def memory(args: argparse.Namespace) -> dict[str, Any]:
    config = ModelConfig.from_hf_dict(ARCHS[args.arch])
    rows = {}
    for label, quantize, double_quant in VARIANTS:
        quantized = config.replace(quantize=quantize, double_quant=double_quant)
        shapes = jax.eval_shape(functools.partial(init_params, quantized, dtype="bfloat16"), jax.random.PRNGKey(0))
        rows[label] = parameter_bytes(shapes)
    full = rows["bf16"]
    print(f"| {args.arch} | whole model | % of bf16 | 7 projections | % of bf16 |\n|---|---|---|---|---|")
    for label, sizes in rows.items():
        print(
            f"| {label} | {sizes['total'] / GIB:.3f} GiB | {100 * sizes['total'] / full['total']:.1f}% | "
            f"{sizes['projections'] / GIB:.3f} GiB | {100 * sizes['projections'] / full['projections']:.1f}% |"
        )
    return {"bench": "qlora_memory", "arch": args.arch, "bytes": rows}


def load(quantize: str, double_quant: bool) -> capt_jax.Pretrained:
    """SmolLM2-135M with bf16 weights, its projections quantized as asked, computing in float32."""
    return capt_jax.load_pretrained(
        "smollm2", dtype="bfloat16", compute_dtype="float32", quantize=quantize, double_quant=double_quant,
        progress=False,
    )  # fmt: skip


def prompt_batch(tokenizer: Any, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Chat prompts, left-padded into one batch (ids, mask)."""
    from capt_jax.tokenization import chat_prompt

    encoded = [tokenizer(chat_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
    length = max(map(len, encoded))
    ids = np.zeros((len(encoded), length), np.int32)
    mask = np.zeros(ids.shape, bool)
    for row, tokens in enumerate(encoded):
        ids[row, length - len(tokens) :], mask[row, length - len(tokens) :] = tokens, True
    return ids, mask


def heldout_prompts(count: int) -> list[str]:
    """The first PrOntoQA ID test questions of the shared data (../shared/data: the paper's file), raw."""
    from capt_jax.config import load_config
    from capt_jax.data import test_examples

    config = load_config("configs/demo_prontoqa.py", ["--config.data.source=auto"])
    return [e.prompt for e in test_examples(config.data, ("id",))["id"].examples[:count]]


def transformers_run(folder: Any, ids: np.ndarray, mask: np.ndarray, new_tokens: int, eos: tuple, pad: int):
    """(logits at the real positions, greedy tokens) of transformers + bitsandbytes nf4, one unpadded prompt at a
    time (transformers numbers left-padded positions from the pad), rows padded after EOS as `decode` pads."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=nf4, device_map="cpu").eval()
    logits, tokens = [], np.full((len(ids), new_tokens), pad, np.int64)
    for row, (prompt, real) in enumerate(zip(ids, mask)):
        prompt = torch.from_numpy(prompt[real][None].astype(np.int64))
        with torch.no_grad():
            logits.append(model(prompt).logits[0].numpy())
            out = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, eos_token_id=list(eos),
                                 pad_token_id=pad)[0, prompt.shape[1] :].numpy()  # fmt: skip
        tokens[row, : len(out)] = out
    return np.concatenate(logits), tokens


def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    from capt_jax.generate import Sampling, decode
    from capt_jax.tokenization import eos_token_ids, pad_id

    prompts = PROMPTS + heldout_prompts(args.prontoqa_prompts)
    reference = load(*VARIANTS[0][1:])
    tokenizer = reference.tokenizer
    ids, mask = prompt_batch(tokenizer, prompts)
    eos = eos_token_ids(reference.config.eos_token_ids, tokenizer)
    pad = pad_id(tokenizer, eos)
    static = dict(max_new_tokens=args.new_tokens, sampling=Sampling(), eos_ids=eos, pad_id=pad)

    def run(model: capt_jax.Pretrained) -> tuple[np.ndarray, np.ndarray]:
        logits = np.asarray(model.logits(ids, mask))[mask]  # real positions only
        tokens = np.asarray(decode(model.params, ids, mask, jax.random.PRNGKey(0), config=model.config, **static))
        return logits, tokens

    want_logits, want_tokens = run(reference)
    runs = {label: functools.partial(lambda q, dq: run(load(q, dq)), q, dq) for label, q, dq in VARIANTS[1:]}
    if args.context:  # the same weights in float32, and bitsandbytes' nf4 of them (float32 elsewhere)
        runs["float32 weights"] = lambda: run(capt_jax.load_pretrained("smollm2", progress=False))
        runs["bitsandbytes nf4"] = lambda: transformers_run(reference.path, ids, mask, args.new_tokens, eos, pad)
    rows = {}
    for label, measure in runs.items():
        logits, tokens = measure()
        same = tokens == want_tokens
        rows[label] = {
            "max_relative_logit_error": float(np.abs(logits - want_logits).max() / np.abs(want_logits).max()),
            "greedy_agreement": float(same.mean()),
            "identical_prefix_mean": float(np.mean([np.argmin(row) if not row.all() else len(row) for row in same])),
            "identical_rows": int(same.all(axis=1).sum()),
        }
    columns = "max rel. logit error | greedy tokens equal | tokens before the first difference | prompts identical"
    print(
        f"| vs bf16 ({len(prompts)} chat prompts, {args.new_tokens} greedy tokens) | {columns} |\n" + "|---" * 5 + "|"
    )
    for label, r in rows.items():
        print(
            f"| {label} | {r['max_relative_logit_error']:.3f} | {100 * r['greedy_agreement']:.1f}% | "
            f"{r['identical_prefix_mean']:.1f} | {r['identical_rows']}/{len(prompts)} |"
        )
    return {"bench": "qlora_accuracy", "prompts": len(prompts), "new_tokens": args.new_tokens, "rows": rows}


def train(args: argparse.Namespace) -> dict[str, Any]:
    from capt_jax.batches import BatchStream, batch_length, loss_width, make_batch, tokenize_pairs
    from capt_jax.config import load_config
    from capt_jax.lora import init_lora, make_optimizer, warmup_cosine
    from capt_jax.tokenization import pad_id
    from capt_jax.train import make_train_step, training_pairs

    config = load_config(
        "configs/demo_prontoqa.py",
        [
            "--config.data.source=auto",
            f"--config.train.batch_size={args.batch}",
            f"--config.train.seq_len={args.seq}",
            f"--config.train.max_steps={args.steps}",
        ],
    )
    models = {label: load(q, dq) for label, q, dq in VARIANTS if label in args.variants}
    tokenizer = models["bf16"].tokenizer
    pairs, _ = training_pairs(config)
    data = tokenize_pairs(tokenizer, pairs, config.train.seq_len, config.data.chat_template, config.data.loss_on)
    stream = BatchStream(data.lengths, config.train.batch_size, config.seed)
    pad = pad_id(tokenizer, models["bf16"].config.eos_token_ids)
    schedule = warmup_cosine(config.train.learning_rate, config.train.max_steps, config.train.warmup_ratio)
    optimizer = make_optimizer(schedule, config.train.weight_decay, config.train.grad_clip)
    adapters = init_lora(models["bf16"].config, config.lora.targets, config.lora.rank, jax.random.PRNGKey(config.seed))
    steps, states = {}, {}
    for label, model in models.items():
        steps[label] = jax.jit(make_train_step(model.config, config, optimizer, schedule), donate_argnums=(0,))
        trainable = jax.tree.map(jnp.copy, adapters)
        states[label] = {"step": jnp.array(0), "lora": trainable, "opt": optimizer.init(trainable),
                         "rng": jax.random.PRNGKey(1)}  # fmt: skip
    curves: dict[str, list[float]] = {label: [] for label in models}
    times: dict[str, list[float]] = {label: [] for label in models}
    labels = list(models)
    for step in range(config.train.max_steps):
        rows = stream.rows(step)
        length = batch_length(data, rows)
        batch = make_batch(data, rows, length, pad, loss_width(data, rows, length))
        batch = jax.device_put({k: v[None] for k, v in batch.items()})
        for label in labels[step % len(labels) :] + labels[: step % len(labels)]:
            began = time.perf_counter()
            states[label], metrics = steps[label](states[label], models[label].params, batch)
            curves[label].append(float(metrics["loss"]))  # waits for the step
            if step >= args.warmup:
                times[label].append(time.perf_counter() - began)
    last = args.last
    summary = {
        label: {
            "loss_first": curves[label][0],
            "loss_last": curves[label][-1],
            f"loss_mean_last_{last}": statistics.fmean(curves[label][-last:]),
            "step_time_s": statistics.median(times[label]),
            "param_bytes": parameter_bytes(models[label].params)["total"],
        }
        for label in labels
    }
    base = summary["bf16"]
    n = config.train.max_steps
    columns = f"loss at step 1 | loss at step {n} | mean of the last {last} | median step | vs bf16 | base bytes"
    print(f"| SmolLM2-135M, {n} LoRA steps (batch {args.batch}, seq <= {args.seq}) | {columns} |\n" + "|---" * 7 + "|")
    for label, r in summary.items():
        print(
            f"| {label} | {r['loss_first']:.4f} | {r['loss_last']:.4f} | {r[f'loss_mean_last_{last}']:.4f} | "
            f"{1e3 * r['step_time_s']:.0f} ms | {r['step_time_s'] / base['step_time_s']:.2f}x | "
            f"{r['param_bytes'] / 2**20:.0f} MiB |"
        )
    return {"bench": "qlora_train", "steps": config.train.max_steps, "batch": args.batch, "seq": args.seq,
            "truncated": data.truncated, "summary": summary, "curves": curves}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/qlora.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    mem = sub.add_parser("memory")
    mem.add_argument("--arch", default="qwen2.5-3b", choices=list(ARCHS))
    acc = sub.add_parser("accuracy")
    acc.add_argument("--new-tokens", type=int, default=32)
    acc.add_argument("--prontoqa-prompts", type=int, default=5, help="test questions added to the 3 chat prompts")
    acc.add_argument("--context", action="store_true", help="also float32 weights and transformers + bitsandbytes")
    tr = sub.add_parser("train")
    tr.add_argument("--steps", type=int, default=100)
    tr.add_argument("--batch", type=int, default=2)
    tr.add_argument("--seq", type=int, default=256)
    tr.add_argument("--warmup", type=int, default=2, help="first steps of each variant left out of the timing")
    tr.add_argument("--last", type=int, default=10, help="steps averaged for the final loss")
    tr.add_argument("--variants", type=lambda s: s.split(","), default=[v[0] for v in VARIANTS],
                    help="which of " + ",".join(v[0] for v in VARIANTS) + " (bf16 is the reference)")  # fmt: skip
    args = parser.parse_args()
    result = {"memory": memory, "accuracy": accuracy, "train": train}[args.what](args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
