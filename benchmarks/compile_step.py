"""Tracing and compile time of the LoRA train step on abstract weights: nothing is allocated, so the 36-layer
Qwen2.5-3B architecture compiles on a machine that could not hold its weights.

    python benchmarks/compile_step.py --arch qwen2.5-3b --dtype bfloat16 --batch 8 --seq 1024 --lora-rank 64

The base, the state and the batch are `jax.ShapeDtypeStruct`s, and the step is `capt_jax.train.make_train_step`
jitted with the state donated, as `capt_jax.bench train` compiles it. The script uses only what capt_jax has
exposed since before the Flax port (ModelConfig, param_shapes, init_lora, make_optimizer, make_train_step), so
`compare.py --before REF` runs it against both trees. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from capt_jax.architectures import ARCHS
from capt_jax.bench import compiled_bytes, device_info
from capt_jax.config import default_config
from capt_jax.lora import DEFAULT_TARGETS, init_lora, make_optimizer, warmup_cosine
from capt_jax.model import ModelConfig, param_shapes
from capt_jax.train import make_train_step


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="qwen2.5-3b", choices=list(ARCHS))
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--lora-rank", type=int, default=64)
    p.add_argument("--remat", default="none", choices=["none", "full", "dots", "dots_no_batch"])
    args = p.parse_args(argv)

    cfg = ModelConfig.from_hf_dict(ARCHS[args.arch], source=f"--arch {args.arch}", dtype=args.dtype)
    cfg = cfg.replace(remat_policy=args.remat)
    config = default_config()
    config.lora.rank, config.lora.alpha, config.lora.targets = args.lora_rank, 2.0 * args.lora_rank, DEFAULT_TARGETS
    config.train.batch_size = args.batch
    schedule = warmup_cosine(config.train.learning_rate, config.train.max_steps, config.train.warmup_ratio)
    optimizer = make_optimizer(schedule, config.train.weight_decay, config.train.grad_clip)

    def init_state(rng: jax.Array) -> dict:
        lora = init_lora(cfg, config.lora.targets, config.lora.rank, rng)
        return {"step": jnp.array(0, jnp.int32), "lora": lora, "opt": optimizer.init(lora), "rng": rng}

    state = jax.eval_shape(init_state, jax.random.PRNGKey(0))
    shapes = param_shapes(cfg)
    base = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s, jnp.dtype(args.dtype)), shapes, is_leaf=lambda s: isinstance(s, tuple)
    )
    rows = (1, args.batch, args.seq)
    batch = {
        "inputs": jax.ShapeDtypeStruct(rows, jnp.int32),
        "targets": jax.ShapeDtypeStruct(rows, jnp.int32),
        "weights": jax.ShapeDtypeStruct(rows, jnp.float32),
        "mask": jax.ShapeDtypeStruct(rows, np.bool_),
        "task": jax.ShapeDtypeStruct(rows[:2], jnp.int32),
    }
    t0 = time.perf_counter()
    lowered = jax.jit(make_train_step(cfg, config, optimizer, schedule), donate_argnums=(0,)).lower(state, base, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    result = {
        "bench": "compile",
        "framework": "capt_jax",
        "model": args.arch,
        **device_info(),
        "dtype": args.dtype,
        "batch": args.batch,
        "seq": args.seq,
        "lora_rank": args.lora_rank,
        "remat": args.remat,
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "xla_step_bytes": compiled_bytes(compiled),
    }
    print(f"{args.arch} {args.dtype} {args.batch}x{args.seq} r{args.lora_rank}: tracing {t1 - t0:.1f} s, "
          f"compile {t2 - t1:.1f} s")  # fmt: skip
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
