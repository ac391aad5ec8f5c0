"""The prefill alone: a prompt batch written into a fresh KV cache, as `capt_jax.generate.decode` starts.

    python benchmarks/prefill.py [--batch 16] [--prompt-len 128] [--slots 640] [--calls 6]
    python benchmarks/prefill.py --before 8a0e719 --rounds 3     # the code of a commit against this tree

Random SmolLM2-135M weights in float32, split per layer as `decode` runs them. The prefill's cost depends on how
many cache slots it fills beside the prompt (`--slots`: prompt length plus the new tokens to come), which the
whole-call benchmark (`compare.py --preset cpu --only generate`) fixes at 128. With --before, each side runs in
its own processes, alternated (before, here, here, before, ...), since two versions of capt_jax cannot share one
process; each process reports the median of its calls. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(batch: int, prompt_len: int, slots: int, calls: int) -> dict[str, float]:
    """Seconds per prefill call (median and min of `calls`, after one untimed) with the capt_jax on sys.path."""
    import jax
    import numpy as np

    from capt_jax import bench
    from capt_jax.generate import decoding_layout
    from capt_jax.model import KVCache, hidden_states

    argv = ["generate", "--arch", "smollm2-135m", "--config.model.dtype=float32", f"--config.train.batch_size={batch}"]
    cfg, params, _ = bench.load_model(bench.arguments_from(argv))
    params = jax.block_until_ready(decoding_layout(cfg, params)[0])
    cfg = cfg.replace(scan_layers="layers" in params)
    prompt, _ = bench.token_batch(0, batch, prompt_len, cfg.vocab_size)
    mask = np.ones(prompt.shape, bool)
    mask[1, : prompt_len // 3] = False  # one left-padded row

    @jax.jit
    def prefill(params, prompt, mask):
        return hidden_states(params, prompt, cfg, token_mask=mask, cache=KVCache.empty(cfg, batch, slots))

    times = []
    for _ in range(calls + 1):
        began = time.perf_counter()
        jax.block_until_ready(prefill(params, prompt, mask))
        times.append(time.perf_counter() - began)
    return {"median_s": statistics.median(times[1:]), "min_s": min(times[1:])}


def alternate(args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    """Each side's per-process results, the processes alternated before/here/here/before/..."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from compare import before_tree

    trees = {f"@{args.before}": before_tree(args.before), "here": REPO}
    shape = ["--batch", str(args.batch), "--prompt-len", str(args.prompt_len), "--slots", str(args.slots)]
    results: dict[str, list[dict[str, float]]] = {side: [] for side in trees}
    for r in range(args.rounds):
        for side in list(trees)[:: 1 if r % 2 == 0 else -1]:
            env = {**os.environ, "PYTHONPATH": str(trees[side])}
            cmd = [sys.executable, __file__, *shape, "--calls", str(args.calls), "--code", str(trees[side])]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            results[side].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds} {side}: {results[side][-1]['median_s']:.3f} s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--slots", type=int, default=640, help="KV-cache slots: prompt length plus new tokens")
    parser.add_argument("--calls", type=int, default=6, help="timed calls per process, after one untimed")
    parser.add_argument("--before", default=None, help="also time the code of this git commit, alternated")
    parser.add_argument("--rounds", type=int, default=3, help="with --before: processes per side")
    parser.add_argument("--code", default=str(REPO), help=argparse.SUPPRESS)  # the tree a child process imports
    args = parser.parse_args()
    if args.slots < args.prompt_len:
        parser.error(f"--slots ({args.slots}) must hold the prompt (--prompt-len {args.prompt_len})")
    if args.before is None:
        sys.path.insert(0, args.code)
        print(json.dumps(measure(args.batch, args.prompt_len, args.slots, args.calls)))
        return
    results = alternate(args)
    summary = {side: statistics.mean(r["median_s"] for r in runs) for side, runs in results.items()}
    print(json.dumps({"shape": vars(args), "per_process": results, "mean_of_medians_s": summary}))


if __name__ == "__main__":
    main()
