"""Sequence packing vs length buckets on the real CAPT PrOntoQA training pairs: trained tokens per second.

    python benchmarks/packing.py [--model smollm2] [--steps 6] [--packed-batch 1] [--seq-len 1024]

The pairs are those of the paper's PrOntoQA CAPT config (`capt_jax.config.paper_config`), tokenized with the
model's tokenizer at train.seq_len (the paper's 1024 unless --seq-len), exactly as `capt_jax.train` sees them.
Both pipelines run the real step (`capt_jax.train.make_train_step`: LoRA r64 on q/k/v/o, AdamW, dropout 0.1) on
batches that `capt_jax.batches` builds:

- buckets: the default, 4 examples per batch padded to their length bucket;
- packing: `data.packing`, --packed-batch rows of at most train.seq_len positions, several examples each.

Every batch shape is compiled first; then steps alternate between the two pipelines (so both see the same load on
a shared machine), each waiting for its loss on the host as train.py does. Reported per pipeline: real (non-pad)
tokens per second over all its timed steps, positions per step, and the fraction of positions that are padding.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from capt_jax import tokenization  # noqa: E402
from capt_jax.batches import BatchStream, batch_length, loss_width, make_batch, pack, tokenize_pairs  # noqa: E402
from capt_jax.bench import device_info  # noqa: E402
from capt_jax.config import paper_config  # noqa: E402
from capt_jax.data import training_data  # noqa: E402
from capt_jax.lora import init_lora, make_optimizer, warmup_cosine  # noqa: E402
from capt_jax.pretrained import load_pretrained  # noqa: E402
from capt_jax.train import make_train_step  # noqa: E402


def pipeline_batches(data: Any, batch_size: int, seed: int, steps: int, pad_id: int) -> list[dict[str, np.ndarray]]:
    """The first `steps` batches a training run of this data would see, leaves [1, batch, ...] (grad_accum 1)."""
    stream = BatchStream(data.lengths, batch_size, seed)
    batches = []
    for step in range(steps):
        rows = stream.rows(step)
        length = batch_length(data, rows)
        batch = make_batch(data, rows, length, pad_id, loss_width(data, rows, length))
        batches.append({k: v[None] for k, v in batch.items()})
    return batches


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="a model folder, .gguf or 'smollm2'")
    parser.add_argument("--steps", type=int, default=6, help="timed steps of each pipeline")
    parser.add_argument("--packed-batch", type=int, default=1, help="packed rows per step")
    parser.add_argument("--seq-len", type=int, default=None, help="train.seq_len (paper: 1024)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    config = paper_config("qwen2.5-3b", "prontoqa", "capt")  # its data and LoRA settings; the model is --model
    config.model.dtype = config.model.compute_dtype = "float32"
    config.train.seq_len = args.seq_len or config.train.seq_len
    model = load_pretrained(args.model, dtype="float32", progress=False)
    pairs = training_data(config.data)
    data = tokenize_pairs(model.tokenizer, pairs, config.train.seq_len, config.data.chat_template, config.data.loss_on)
    packed = pack(data, args.seed)
    pad_id = tokenization.pad_id(model.tokenizer, model.config.eos_token_ids)
    schedule = warmup_cosine(config.train.learning_rate, config.train.max_steps, config.train.warmup_ratio)
    optimizer = make_optimizer(schedule, config.train.weight_decay, config.train.grad_clip)
    step = jax.jit(make_train_step(model.config, config, optimizer, schedule), donate_argnums=(0,))

    runs = {
        "buckets": pipeline_batches(data, config.train.batch_size, args.seed, args.steps, pad_id),
        "packing": pipeline_batches(packed, args.packed_batch, args.seed, args.steps, pad_id),
    }
    states, losses, times = {}, {name: [] for name in runs}, {name: [] for name in runs}
    for name, batches in runs.items():
        lora = init_lora(model.config, config.lora.targets, config.lora.rank, jax.random.PRNGKey(args.seed))
        states[name] = {"step": jnp.array(0), "lora": lora, "opt": optimizer.init(lora), "rng": jax.random.PRNGKey(1)}
        shapes = {}
        for batch in batches:  # compile every shape before timing
            shapes.setdefault(tuple(v.shape for v in batch.values()), batch)
        for batch in shapes.values():
            states[name], metrics = step(states[name], model.params, batch)
            float(metrics["loss"])
    for i in range(args.steps):
        for name, batches in runs.items():
            began = time.perf_counter()
            states[name], metrics = step(states[name], model.params, batches[i])
            losses[name].append(float(metrics["loss"]))  # waits for the step, as train.py does
            times[name].append(time.perf_counter() - began)

    result: dict[str, Any] = {
        "bench": "packing",
        "model": str(model.path),
        **device_info(),
        "pairs": len(data),
        "lengths": {
            "min": int(data.lengths.min()),
            "median": float(np.median(data.lengths)),
            "max": int(max(data.lengths)),
        },
        "packed_rows": len(packed),
        "examples_per_packed_row": len(data) / len(packed),
        "seq_len": config.train.seq_len,
        "steps": args.steps,
    }
    for name, batches in runs.items():
        real = sum(int(b["mask"].sum()) for b in batches)
        positions = sum(b["mask"].size for b in batches)
        result[name] = {
            "batch": config.train.batch_size if name == "buckets" else args.packed_batch,
            "shapes": sorted({b["inputs"].shape[-1] for b in batches}),
            "real_tokens_per_second": real / sum(times[name]),
            "positions_per_step": positions / len(batches),
            "padding_fraction": 1 - real / positions,
            "step_time_s": float(np.median(times[name])),
            "first_loss": losses[name][0],
        }
    ratio = result["packing"]["real_tokens_per_second"] / result["buckets"]["real_tokens_per_second"]
    result["packing_vs_buckets"] = ratio
    for name in runs:
        r = result[name]
        print(f"{name}: batch {r['batch']}, T in {r['shapes']}, {r['padding_fraction']:.1%} padding, "
              f"{r['real_tokens_per_second']:.1f} real tokens/s (median step {r['step_time_s']:.2f} s)")  # fmt: skip
    print(f"packing / buckets: {ratio:.3f}x ({len(data) / len(packed):.2f} examples per packed row)")
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
