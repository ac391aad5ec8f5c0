"""A decode step's float32 products, XLA:CPU's against our panel kernels (`capt_jax.model.panels`), one call
of each per product in decode order (q, k, v, o, gate, up, down per layer, then the LM head), in interleaved rounds,
median of 9 calls each (docs/PERFORMANCE.md, "Decoding with packed panels").

    taskset -c 0 python benchmarks/panel_matmul.py [--arch smollm2-135m] [--rows 32]

- XLA: `matmul_weight_t` on the weights as they are, the product `decode` runs without the kernel;
- panels avx512 / avx2: `panels.matmul` on the weights packed by `panels.pack` for each instruction set this CPU
  has, the product `decode` runs with it (the one `panels.instruction_set()` picks decodes).
The whole step streams every layer's own weights; the gates alone show the same over a fifth of the bytes, and over
one weight that stays in cache, the arithmetic without the reading. Exits with a message where the kernel cannot run.
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np
from matmul_rows import median_ms  # benchmarks/, on the path when this runs as a script

from capt_jax.architectures import ARCHS
from capt_jax.model import panels
from capt_jax.model.kernels import matmul_weight_t

ROUNDS = 3


def step_shapes(arch: str) -> list[tuple[str, int, int]]:
    """(name, in, out) of every product of one decode step, in the order decode runs them."""
    hf = ARCHS[arch]
    hidden, ffn, heads, kv_heads = (
        hf[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
    )
    head_dim = hf.get("head_dim", hidden // heads)
    layer = [
        ("q", hidden, heads * head_dim),
        ("k", hidden, kv_heads * head_dim),
        ("v", hidden, kv_heads * head_dim),
        ("o", heads * head_dim, hidden),
        ("gate", hidden, ffn),
        ("up", hidden, ffn),
        ("down", ffn, hidden),
    ]
    return layer * hf["num_hidden_layers"] + [("lm_head", hidden, hf["vocab_size"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="smollm2-135m", choices=sorted(ARCHS))
    parser.add_argument("--rows", type=int, default=32, help="rows per product: the decode batch")
    args = parser.parse_args()
    kernels = list(filter(panels.runs_here, panels.INSTRUCTION_SETS))
    if not kernels:
        sys.exit("panel_matmul: no panel kernel runs here (a CPU backend with AVX-512 or AVX2, and a C++ compiler)")
    shapes = step_shapes(args.arch)
    rng = np.random.default_rng(0)
    weights = [jax.device_put(rng.standard_normal((o, i), np.float32) * 0.02) for _, i, o in shapes]
    packed = {n: [panels.pack(w, panels.INSTRUCTION_SETS[n].width) for w in weights] for n in kernels}
    inputs = {i: jax.device_put(rng.standard_normal((args.rows, i), np.float32)) for _, i, _ in shapes}

    def products(chosen: list[int], kernel: str):
        """One jitted call of the products `chosen` (indices into `shapes`); x + j keeps a repeated weight's
        products distinct, so XLA cannot merge them into one."""

        @jax.jit
        def run(xs, ws):
            outs = []
            for j, (index, w) in enumerate(zip(chosen, ws)):
                x = xs[shapes[index][1]] + j
                outs.append(matmul_weight_t(x, w) if kernel == "XLA" else panels.matmul(x, w, shapes[index][2]))
            return outs

        operands = [weights[j] if kernel == "XLA" else packed[kernel][j] for j in chosen]
        return lambda: run(inputs, operands)

    step = list(range(len(shapes)))
    want = products(step, "XLA")()
    for kernel in kernels:
        got = products(step, kernel)()
        error = max(
            float(np.abs(np.asarray(g) - w).max() / np.abs(w).max()) for g, w in zip(got, map(np.asarray, want))
        )
        print(f"panels {kernel}: largest difference from XLA, relative to the output's largest value: {error:.1e}")

    weight_mb = sum(w.nbytes for w in weights) / 1e6
    gates = [j for j, (name, _, _) in enumerate(shapes) if name == "gate"]
    _, gate_in, gate_out = shapes[gates[0]]
    gate_label = f"{len(gates)} gate products [{args.rows}, {gate_in}] x [{gate_out}, {gate_in}]^T"
    print(f"ms per call (GFLOP/s), median of 9 calls (matmul_rows.median_ms), in {ROUNDS} interleaved rounds")
    for label, chosen in (
        (f"one decode step of {args.arch}: {len(shapes)} products at {args.rows} rows, {weight_mb:.0f} MB", step),
        (f"{gate_label}, over each layer's own weight", gates),
        (f"{gate_label}, over one weight, in cache", gates[:1] * len(gates)),
    ):
        flop = sum(2 * args.rows * shapes[j][1] * shapes[j][2] for j in chosen)
        print(f"{label}: {flop / 1e9:.2f} GFLOP")
        runs = {kernel: products(chosen, kernel) for kernel in ("XLA", *kernels)}
        times = {kernel: [] for kernel in runs}
        for _ in range(ROUNDS):
            for kernel, run in runs.items():
                times[kernel].append(median_ms(run))
        xla_ms = np.median(times["XLA"])
        for kernel, ms in times.items():
            print(
                f"  {kernel:8s} "
                + "  ".join(f"{t:6.1f} ({flop / t / 1e6:3.0f})" for t in ms)
                + f"   median {np.median(ms):6.1f} ms, {xla_ms / np.median(ms):.2f}x XLA"
            )


if __name__ == "__main__":
    main()
