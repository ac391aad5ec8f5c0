"""How much a hand-written AVX-512 kernel would buy a decode step's float32 products, against the XLA:CPU products
that `capt_jax.model.kernels.matmul_weight_t` runs (docs/PERFORMANCE.md, "A hand-written 32-row kernel, measured").

    taskset -c 0 python benchmarks/avx512_matmul.py [--arch smollm2-135m] [--rows 32]

One decode step's products, streamed over each layer's own weights in decode order (q, k, v, o, gate, up, down
per layer, then the LM head), timed three ways in interleaved rounds, median of 9 calls each:
- XLA: one jitted call of `matmul_weight_t` per product, the code `decode` runs;
- `matmul_packed` (avx512_matmul.c) on a second copy of the weights laid out as [N / 48][K][48] panels;
- `matmul_transposing` on the weights as they are, transposing each panel on the fly.
Compiles avx512_matmul.c with the system C compiler; without one, or on a CPU without AVX-512, it says so and exits.
"""

from __future__ import annotations

import argparse
import ctypes
import pathlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from matmul_rows import median_ms  # benchmarks/, on the path when this runs as a script

from capt_jax.architectures import ARCHS
from capt_jax.model.kernels import matmul_weight_t

SOURCE = pathlib.Path(__file__).with_name("avx512_matmul.c")
PANEL, MAX_K, ROUNDS = 48, 8192, 3


def compile_kernels(build_dir: str) -> ctypes.CDLL:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        sys.exit("avx512_matmul: no C compiler (cc or gcc) on PATH, so there is no kernel to time")
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if not cpuinfo.exists() or "avx512f" not in cpuinfo.read_text():
        sys.exit("avx512_matmul: this CPU has no AVX-512 (no avx512f in /proc/cpuinfo); the kernels need it")
    library = f"{build_dir}/avx512_matmul.so"
    subprocess.run([compiler, "-O3", "-march=native", "-shared", "-fPIC", str(SOURCE), "-o", library], check=True)
    return ctypes.CDLL(library)


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
    shapes = step_shapes(args.arch)
    unfit = sorted({(i, o) for _, i, o in shapes if i % 16 or i > MAX_K or o % PANEL})
    if unfit:
        sys.exit(
            f"avx512_matmul: the kernels need in % 16 == 0, in <= {MAX_K} and out % {PANEL} == 0; "
            f"{args.arch} has (in, out) = {unfit}"
        )
    with tempfile.TemporaryDirectory() as build_dir:
        kernels = compile_kernels(build_dir)
    floats = ctypes.POINTER(ctypes.c_float)

    def pointer(array: np.ndarray):
        return array.ctypes.data_as(floats)

    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((o, i), np.float32) * 0.02 for _, i, o in shapes]
    panels = [np.empty_like(w) for w in weights]
    for w, p in zip(weights, panels):
        kernels.pack_panels(w.shape[0], w.shape[1], pointer(w), pointer(p))
    inputs = {i: rng.standard_normal((args.rows, i), np.float32) for i in {i for _, i, _ in shapes}}
    outputs = [np.empty((args.rows, o), np.float32) for _, _, o in shapes]

    device_weights = [jax.device_put(w) for w in weights]
    device_inputs = {i: jax.device_put(x) for i, x in inputs.items()}

    @jax.jit
    def xla_products(xs, ws):
        return [matmul_weight_t(xs[w.shape[1]], w) for w in ws]

    @jax.jit
    def xla_repeats(xs, ws):  # x + j: distinct products, which XLA cannot merge into one when a weight repeats
        return [matmul_weight_t(xs[w.shape[1]] + j, w) for j, w in enumerate(ws)]

    def cases(chosen: list[int]) -> dict[str, Callable[[], Any]]:
        """The three ways of running the products `chosen` (indices into `shapes`), each with its own outputs."""

        def kernel_run(kernel, operands):
            def run():
                for j in chosen:
                    x, (_, i, o) = inputs[shapes[j][1]], shapes[j]
                    kernel(args.rows, i, o, pointer(x), pointer(operands[j]), pointer(outputs[j]))

            return run

        ws = [device_weights[j] for j in chosen]
        xla = xla_products if len(set(chosen)) == len(chosen) else xla_repeats
        return {
            "XLA (matmul_weight_t)": lambda: xla(device_inputs, ws),
            "matmul_packed": kernel_run(kernels.matmul_packed, panels),
            "matmul_transposing": kernel_run(kernels.matmul_transposing, weights),
        }

    step = list(range(len(shapes)))
    step_cases = cases(step)
    reference = [np.asarray(y) for y in step_cases["XLA (matmul_weight_t)"]()]
    for name in ("matmul_packed", "matmul_transposing"):
        step_cases[name]()
        error = max(float(np.abs(y - r).max() / np.abs(r).max()) for y, r in zip(outputs, reference))
        print(f"{name}: largest difference from XLA, relative to the output's largest value: {error:.1e}")

    weight_mb = sum(w.nbytes for w in weights) / 1e6
    gates = [j for j, (name, _, _) in enumerate(shapes) if name == "gate"]
    _, gate_in, gate_out = shapes[gates[0]]
    gate_label = f"{len(gates)} gate products [{args.rows}, {gate_in}] x [{gate_out}, {gate_in}]^T"
    print(f"ms per call (GFLOP/s), median of 9 calls (matmul_rows.median_ms), in {ROUNDS} interleaved rounds")
    for label, chosen in (
        (f"one decode step of {args.arch}: {len(shapes)} products at {args.rows} rows, {weight_mb:.0f} MB", step),
        # The gates alone, over the layers' own weights (a fifth of the step's bytes), and as many times over one
        # weight, which stays in cache: the arithmetic without the reading.
        (f"{gate_label}, over each layer's own weight", gates),
        (f"{gate_label}, over one weight, in cache", gates[:1] * len(gates)),
    ):
        flop = sum(2 * args.rows * shapes[j][1] * shapes[j][2] for j in chosen)
        print(f"{label}: {flop / 1e9:.2f} GFLOP")
        runs = cases(chosen)
        times = {name: [] for name in runs}
        for _ in range(ROUNDS):
            for name, run in runs.items():
                times[name].append(median_ms(run))
        xla_ms = np.median(times["XLA (matmul_weight_t)"])
        for name, ms in times.items():
            print(
                f"  {name:22s} "
                + "  ".join(f"{t:6.1f} ({flop / t / 1e6:3.0f})" for t in ms)
                + f"   median {np.median(ms):6.1f} ms, {xla_ms / np.median(ms):.2f}x XLA"
            )


if __name__ == "__main__":
    main()
