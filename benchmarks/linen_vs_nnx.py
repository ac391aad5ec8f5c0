"""Linen or NNX for the decoder: tracing, compile and step time of the same LoRA train step, in one process.

    python benchmarks/linen_vs_nnx.py --arch smollm2-135m --batch 4 --seq 256 --lora-rank 16 --steps 10

`linen` is capt_jax's own decoder (capt_jax.model). `nnx` is a prototype of the same decoder in Flax NNX, kept
here only to make that decision reproducible: the same kernels (recomputing attention, SwiGLU, RoPE, 16-bit
dropout, the LoRA product), layers stacked by `nnx.vmap` and run by `nnx.scan`, and the adapters in their own
Variable type, taken out with `nnx.split` and put back with `nnx.merge` inside the differentiated function. Both
steps are: forward with LoRA dropout, fused cross-entropy over every position, gradient of the adapters only,
capt_jax's AdamW. Each is traced and compiled twice, in both orders (the faster of the two counts), then their
steps are timed alternately, so a busy machine slows both alike. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from capt_jax.architectures import ARCHS
from capt_jax.bench import token_batch
from capt_jax.lora import init_lora, lora_scale, make_optimizer
from capt_jax.model import Lora, ModelConfig, hidden_states, init_params
from capt_jax.model.attention import attend, attention_mask
from capt_jax.model.decoder import REMAT_POLICIES, lm_head
from capt_jax.model.kernels import dropout, lora_delta, rms_norm, swiglu
from capt_jax.model.layers import INIT_STD, AdapterConfig, _lora_a_init, adapter_for
from capt_jax.model.rope import apply_rotary, rotary_tables
from capt_jax.objective import token_nll


class Adapter(nnx.Variable):
    """LoRA factors: the only variables the step differentiates."""


class NnxLinear(nnx.Module):
    def __init__(self, inp: int, out: int, bias: bool, adapter: AdapterConfig | None, rngs: nnx.Rngs):
        self.weight = nnx.Param(INIT_STD * jax.random.normal(rngs.params(), (out, inp)))
        self.bias = nnx.Param(jnp.zeros((out,))) if bias else None
        self.adapter = adapter
        if adapter is not None:
            self.a = Adapter(_lora_a_init(rngs.params(), (adapter.rank, inp)))
            self.b = Adapter(jnp.zeros((out, adapter.rank)))

    def __call__(self, x: jax.Array, rngs: nnx.Rngs) -> jax.Array:
        y = jnp.einsum("...i,oi->...o", x, self.weight[...].astype(x.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        if self.adapter is None:
            return y
        if self.adapter.dropout > 0:
            x = dropout(x, self.adapter.dropout, rngs.dropout())
        return y + lora_delta(x, self.a[...].astype(x.dtype), self.b[...].astype(x.dtype), self.adapter.scale)


class NnxBlock(nnx.Module):
    def __init__(self, c: ModelConfig, adapter: AdapterConfig | None, rngs: nnx.Rngs):
        D, F, q, kv = c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        self.c = c
        self.input_norm = nnx.Param(jnp.ones((D,)))
        self.post_attention_norm = nnx.Param(jnp.ones((D,)))

        def proj(name: str, inp: int, out: int, bias: bool) -> NnxLinear:
            return NnxLinear(inp, out, bias, adapter_for(adapter, name), rngs)

        self.q_proj, self.k_proj = proj("q_proj", D, q, c.qkv_bias), proj("k_proj", D, kv, c.qkv_bias)
        self.v_proj, self.o_proj = proj("v_proj", D, kv, c.qkv_bias), proj("o_proj", q, D, False)
        self.gate_proj, self.up_proj = proj("gate_proj", D, F, c.mlp_bias), proj("up_proj", D, F, c.mlp_bias)
        self.down_proj = proj("down_proj", F, D, c.mlp_bias)

    def __call__(self, h, rotary, mask, rngs):
        c = self.c
        batch, seq, _ = h.shape
        x = rms_norm(h, self.input_norm[...], c.rms_norm_eps)
        q = self.q_proj(x, rngs).reshape(batch, seq, c.num_heads, c.head_dim)
        k = self.k_proj(x, rngs).reshape(batch, seq, c.num_kv_heads, c.head_dim)
        v = self.v_proj(x, rngs).reshape(batch, seq, c.num_kv_heads, c.head_dim)
        q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        out = attend(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask, c, c.causal_block)
        h = h + self.o_proj(out.reshape(batch, seq, -1), rngs)
        x = rms_norm(h, self.post_attention_norm[...], c.rms_norm_eps)
        return h + self.down_proj(swiglu(self.gate_proj(x, rngs), self.up_proj(x, rngs)), rngs)


class NnxDecoder(nnx.Module):
    def __init__(self, c: ModelConfig, adapter: AdapterConfig | None, rngs: nnx.Rngs):
        self.c = c
        self.embed = nnx.Param(INIT_STD * jax.random.normal(rngs.params(), (c.vocab_size, c.hidden_size)))
        self.final_norm = nnx.Param(jnp.ones((c.hidden_size,)))

        @nnx.split_rngs(splits=c.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def stack(rngs: nnx.Rngs) -> NnxBlock:
            return NnxBlock(c, adapter, rngs)

        self.layers = stack(rngs)

    def __call__(self, tokens: jax.Array, rngs: nnx.Rngs) -> jax.Array:
        c = self.c
        batch, seq = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(seq), (batch, seq))
        mask = attention_mask(positions, jnp.ones((batch, seq), bool))
        rotary = rotary_tables(positions, c, jnp.dtype(c.dtype))

        def body(h, block, rngs):
            return block(h, rotary, mask, rngs)

        if c.remat_policy != "none":
            body = nnx.remat(body, policy=REMAT_POLICIES[c.remat_policy], prevent_cse=False)
        body = nnx.split_rngs(splits=c.num_layers)(nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry)(body))
        h = body(jnp.take(self.embed[...], tokens, axis=0).astype(c.dtype), self.layers, rngs)
        return rms_norm(h, self.final_norm[...], c.rms_norm_eps)


def adam_step(loss, optimizer):
    def step(trainable, opt, base, batch, key):
        value, grads = jax.value_and_grad(loss)(trainable, base, batch, key)
        updates, opt = optimizer.update(grads, opt, trainable)
        return optax.apply_updates(trainable, updates), opt, value

    return step


def linen_variant(cfg, adapter, optimizer, seed):
    base = init_params(cfg, jax.random.key(seed))
    trainable = init_lora(cfg, adapter.targets, adapter.rank, jax.random.key(seed + 1))

    def loss(trainable, base, batch, key):
        lora = Lora(trainable, adapter.scale, adapter.dropout, key)
        h, _ = hidden_states(base, batch["inputs"], cfg, lora=lora)
        return jnp.mean(token_nll(h, lm_head(base), batch["targets"]))

    return adam_step(loss, optimizer), trainable, base


def nnx_variant(cfg, adapter, optimizer, seed):
    graphdef, base, lora = nnx.split(NnxDecoder(cfg, adapter, nnx.Rngs(params=seed)), nnx.Param, Adapter)

    def loss(trainable, base, batch, key):
        state = jax.tree.map(lambda x: x, lora)
        nnx.replace_by_pure_dict(state, trainable)
        model = nnx.merge(graphdef, jax.tree.map(lambda x: x, base), state)
        h = model(batch["inputs"], nnx.Rngs(dropout=key))
        return jnp.mean(token_nll(h, model.embed[...], batch["targets"]))

    return adam_step(loss, optimizer), lora.to_pure_dict(), base


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="smollm2-135m", choices=list(ARCHS))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--remat", default="none", choices=list(REMAT_POLICIES))
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant, alternating")
    args = p.parse_args(argv)
    cfg = ModelConfig.from_hf_dict(ARCHS[args.arch], remat_policy=args.remat)
    targets = ("k_proj", "o_proj", "q_proj", "v_proj")
    adapter = AdapterConfig(targets, args.lora_rank, lora_scale(args.lora_rank, 2.0 * args.lora_rank), 0.1)
    optimizer = make_optimizer(3e-4, 0.01, 1.0)
    inputs, targets_ = token_batch(0, args.batch, args.seq, cfg.vocab_size)
    batch = {"inputs": jnp.asarray(inputs), "targets": jnp.asarray(targets_)}
    key = jax.random.key(3)

    runs, result = {}, {"arch": args.arch, "batch": args.batch, "seq": args.seq, "lora_rank": args.lora_rank}
    variants = {"linen": linen_variant, "nnx": nnx_variant}
    for order in (("linen", "nnx"), ("nnx", "linen")):  # each compiled twice, in both orders: the best counts
        for name in order:
            step, trainable, base = variants[name](cfg, adapter, optimizer, 0)  # new closures: traced afresh
            opt = optimizer.init(trainable)
            t0 = time.perf_counter()
            lowered = jax.jit(step, donate_argnums=(0, 1)).lower(trainable, opt, base, batch, key)
            t1 = time.perf_counter()
            compiled = lowered.compile()
            t2 = time.perf_counter()
            runs[name] = [compiled, trainable, opt, base, []]
            best = result.setdefault(name, {"trace_lower_s": math.inf, "compile_s": math.inf})
            best.update(trace_lower_s=min(best["trace_lower_s"], t1 - t0), compile_s=min(best["compile_s"], t2 - t1))
            print(f"{name}: trace+lower {t1 - t0:.2f} s, compile {t2 - t1:.2f} s", flush=True)
    for i in range(args.steps + 1):  # the first round warms both up and is not counted
        for name, run in runs.items():
            compiled, trainable, opt, base, times = run
            t = time.perf_counter()
            trainable, opt, loss = compiled(trainable, opt, base, batch, key)
            float(loss)
            run[1:3] = trainable, opt
            if i:
                times.append(time.perf_counter() - t)
            else:
                result[name]["first_loss"] = float(loss)
    for name, run in runs.items():
        result[name].update(step_s=statistics.median(run[4]), step_min_s=min(run[4]), step_max_s=max(run[4]))
        print(f"{name}: step {result[name]['step_s']:.3f} s (median of {args.steps})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
