"""capt_jax vs transformers + peft, side by side on one machine: runs `python -m capt_jax.bench` and
`benchmarks/peft_peer.py` as separate processes (so peak memory is each one's own), interleaved over --rounds,
and prints one markdown table from their last-line JSON.

    python benchmarks/compare.py --preset cpu  --out cpu.jsonl            # SmolLM2-135M, float32 (docs/PERFORMANCE.md)
    python benchmarks/compare.py --preset h100 --only train --out gpu.jsonl
    python benchmarks/compare.py --table cpu.jsonl                        # the table again, from saved results
    python benchmarks/compare.py --preset port --before bccce74 --rounds 3 --out port.jsonl   # before vs after

Every run's JSON is appended to --out. With several rounds the table shows, per case, the fastest run. On a
CPU the MFU denominator is measured once here (a float32 matmul, 2048^3 on any fast kernel) and passed to every run.

`--before REF` also runs every capt_jax case on the code at git commit REF (unpacked once under .cache/ with
`git archive`), interleaved with the current code, and the table compares each case with its REF run.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = [sys.executable, "-m", "capt_jax.bench"]
PEER = [sys.executable, str(REPO / "benchmarks" / "peft_peer.py")]


def cpu_cases() -> list[tuple[str, str, list[str]]]:
    """(group, label, argv): SmolLM2-135M at batch 4 x 256 in float32, LoRA r=16 and r=64 on q/k/v/o."""
    cases = []
    for rank in (16, 64):
        group = f"train smollm2-135m f32 4x256 r{rank}"
        common = ["train", "--arch", "smollm2-135m", "--dtype", "float32", "--batch", "4", "--seq", "256"]
        common += ["--lora-rank", str(rank)]
        cases += [
            (group, "capt_jax", BENCH + common),
            (group, "peft", PEER + common),
            (group, "peft +ckpt", PEER + common + ["--gradient-checkpointing"]),
        ]
    gen = ["generate", "--arch", "smollm2-135m", "--dtype", "float32", "--batch", "32"]
    gen += ["--prompt-len", "64", "--new-tokens", "64"]
    group = "generate smollm2-135m f32 b32 p64 n64"
    cases += [(group, "capt_jax", BENCH + gen), (group, "transformers", PEER + gen)]
    return cases


def gpu_cases() -> list[tuple[str, str, list[str]]]:
    """The issue's setup: Qwen2.5-3B architecture, bf16, LoRA r=64 alpha=128 on q/k/v/o, batch 8 x 1024."""
    common = ["train", "--arch", "qwen2.5-3b", "--dtype", "bfloat16", "--batch", "8", "--seq", "1024"]
    common += ["--lora-rank", "64", "--lora-alpha", "128"]
    group = "train qwen2.5-3b bf16 8x1024 r64"
    cases = [(group, f"capt_jax remat={r}", BENCH + common + ["--remat", r]) for r in ("none", "dots", "full")]
    cases += [
        (group, "peft", PEER + common),
        (group, "peft +ckpt", PEER + common + ["--gradient-checkpointing"]),
    ]
    gen = ["generate", "--arch", "qwen2.5-3b", "--dtype", "bfloat16", "--batch", "32"]
    gen += ["--prompt-len", "256", "--new-tokens", "256"]
    group = "generate qwen2.5-3b bf16 b32 p256 n256"
    # HF generate makes ~330 tokens/s here: 3 timed calls of 25 s each are enough for a median.
    cases += [
        (group, "capt_jax", BENCH + gen),
        (group, "transformers", PEER + gen + ["--steps", "3", "--warmup", "1"]),
    ]
    return cases


def parity_cases() -> list[tuple[str, str, list[str]]]:
    """The same random Qwen2.5-3B weights on both sides (the peer saves them, capt_jax loads them): the two
    first_loss values are the base model's bf16 loss on the same batch and must agree to bf16 noise."""
    folder = os.environ.get("PARITY_DIR", "/tmp/capt_parity_qwen2.5-3b")
    common = ["train", "--dtype", "bfloat16", "--batch", "8", "--seq", "1024", "--lora-rank", "64"]
    group = "parity qwen2.5-3b bf16 8x1024 (same weights)"
    return [
        (group, "peft", PEER + common + ["--arch", "qwen2.5-3b", "--save-model", folder]),
        (group, "capt_jax", BENCH + common + ["--model", folder]),
    ]


def port_cases() -> list[tuple[str, str, list[str]]]:
    """Before vs after the Flax port (with --before bccce74): the train step on the real SmolLM2-135M weights, and
    compiling the 36-layer Qwen2.5-3B step on abstract weights (its random weights do not fit a 24 GiB host)."""
    train = ["train", "--model", "smollm2", "--dtype", "float32", "--batch", "4", "--seq", "256", "--lora-rank", "16"]
    compile_3b = [sys.executable, str(REPO / "benchmarks" / "compile_step.py"), "--arch", "qwen2.5-3b"]
    compile_3b += ["--dtype", "bfloat16", "--batch", "8", "--seq", "1024", "--lora-rank", "64"]
    generate = ["generate", "--model", "smollm2", "--dtype", "float32", "--batch", "4", "--prompt-len", "64"]
    return [
        ("train smollm2-135m f32 4x256 r16", "capt_jax", BENCH + train),
        ("compile qwen2.5-3b bf16 8x1024 r64", "capt_jax", compile_3b),
        ("generate smollm2-135m f32 b4 p64 n32", "capt_jax", BENCH + generate + ["--new-tokens", "32"]),
    ]


DEVICE_MODEL_DIR = "/tmp/capt_device_check_model"


def device_cases(tiny: bool = False) -> list[tuple[str, str, list[str]]]:
    """benchmarks/device_check.sh: the issue's training and generation cases in order of priority, so that a short
    loan measures the targets first. The first run (peft) saves its random Qwen2.5-3B and every later run loads
    it, so all first losses are the same base model's loss on the same batch: the bf16 parity check.

    tiny: the tiny architecture at toy sizes, which runs on a CPU in a minute (the script's plumbing test).
    """
    arch, batch, seq = ("tiny", "2", "64") if tiny else ("qwen2.5-3b", "8", "1024")
    gen_batch, prompt, new = ("4", "8", "4") if tiny else ("32", "256", "256")
    # At toy sizes an MFU means nothing, so both sides skip measuring their CPU's matmul peak (seconds per run).
    steps = ["--steps", "2", "--warmup", "1", "--peak-flops", "1e12"] if tiny else []
    folder = os.environ.get("DEVICE_MODEL_DIR", DEVICE_MODEL_DIR)
    # DEVICE_CHECK_ATTENTION chooses capt_jax's attention (then never switched); the peer keeps its own (sdpa).
    chosen = os.environ.get("DEVICE_CHECK_ATTENTION", "")
    if chosen not in ("", "auto", "xla", "cudnn"):
        raise SystemExit(f"DEVICE_CHECK_ATTENTION={chosen!r}: expected auto, xla or cudnn")
    attention = ["--attention", chosen] if chosen else []
    group, gen_group = f"train {arch} bf16 {batch}x{seq} r64", f"generate {arch} bf16 b{gen_batch} p{prompt} n{new}"
    train = ["train", "--dtype", "bfloat16", "--batch", batch, "--seq", seq, "--lora-rank", "64", "--lora-alpha", "128"]
    save = train + steps + ["--arch", arch, "--save-model", folder]
    train += steps + ["--model", folder]
    generate = ["generate", "--dtype", "bfloat16", "--batch", gen_batch, "--prompt-len", prompt, "--new-tokens", new]
    generate += ["--model", folder]
    return [
        (group, "peft", PEER + save),
        (group, "capt_jax remat=none", BENCH + train + ["--remat", "none"] + attention),
        (gen_group, "capt_jax", BENCH + generate + steps + attention),
        (group, "capt_jax remat=full", BENCH + train + ["--remat", "full"] + attention),
        (group, "peft +ckpt", PEER + train + ["--gradient-checkpointing"]),
        # HF generate makes ~330 new tokens/s on an H100: one timed call of 25 s after one untimed.
        (gen_group, "transformers", PEER + generate + (steps or ["--steps", "1", "--warmup", "1"])),
        (group, "capt_jax remat=dots", BENCH + train + ["--remat", "dots"] + attention),
    ]


PRESETS = {
    "cpu": cpu_cases,
    "h100": gpu_cases,
    "parity": parity_cases,
    "port": port_cases,
    "device": device_cases,
    "device-tiny": functools.partial(device_cases, tiny=True),
}

# The targets on one H100: (what, capt_jax runs it applies to, tokens/s at least, peak GiB at most).
DEVICE_TARGETS = [
    ("train at 8x1024 within 40 GiB", "train", 32_000, 40),
    ("train at 8x1024 within 24 GiB", "train", 23_800, 24),
    ("generate at batch 32", "generate", 6_500, None),
]


def device_report(
    results: list[dict], skipped: list[str], failures: list[dict], attention_fallback: str | None, tiny: bool
) -> dict:
    """Targets met or not (the best capt_jax run within each memory limit), the parity of the first losses, the
    table, every run's JSON, and what each failed run printed last (a short loan's only record of its error)."""
    capt = [r for r in results if r["framework"] == "capt_jax"]
    targets = []
    for what, bench, tokens_per_s, gib in DEVICE_TARGETS:
        fits = [r for r in capt if r["bench"] == bench and (gib is None or (r.get("peak_memory_gib") or 0) <= gib)]
        best = max(fits, key=lambda r: r["tokens_per_second"], default=None)
        targets.append(
            {
                "target": what,
                "tokens_per_second_at_least": tokens_per_s,
                "peak_gib_at_most": gib,
                "best_run": best and best["label"],
                "tokens_per_second": best and best["tokens_per_second"],
                "peak_memory_gib": best and best.get("peak_memory_gib"),
                "met": None if tiny or best is None else best["tokens_per_second"] >= tokens_per_s,
            }
        )
    losses = {r["label"]: r["first_loss"] for r in results if r["bench"] == "train"}
    spread = (max(losses.values()) - min(losses.values())) / min(losses.values()) if len(losses) > 1 else None
    return {
        "tiny": tiny,
        "targets": targets,
        "parity": {
            "first_losses": losses,
            "relative_spread": spread,
            "ok": None if spread is None else spread <= PARITY_TOLERANCE,
            "tolerance": PARITY_TOLERANCE,
        },
        "skipped": skipped,
        "failures": failures,
        "attention_fallback": attention_fallback,
        "table": table(results) if results else "",
        "runs": results,
    }


# bf16 noise between transformers' and capt_jax's forward pass of the same weights: a few 1e-3 relative.
PARITY_TOLERANCE = 1e-2

# "retain": one arena, no mmap, no trimming, so freed pages are reused instead of returned to the kernel and
# faulted in again. XLA:CPU allocates each step's temporaries afresh (one block of GiBs) and pays ~0.5 million
# page faults per step without it; torch gains too. GLIBC_TUNABLES is read at process start, so it is set on the
# child processes.
MALLOC_SETTINGS = {
    "default": {},
    "retain": {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
    },
}


def measure_cpu_peak(pin: list[str]) -> tuple[float, int]:
    """The best of three float32 capt_jax.bench.measured_matmul_peak runs: (FLOP/s, the n of its n^3 product)."""
    code = "from capt_jax.bench import measured_matmul_peak as m; print(*max(m('float32') for _ in range(3)))"
    out = subprocess.run(pin + [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    rate, n = out.stdout.strip().splitlines()[-1].split()
    return float(rate), int(n)


def before_tree(ref: str) -> Path:
    """The code at git commit `ref`, unpacked once under .cache/ (a plain copy: no worktree to register), in a
    folder named by the commit it resolves to, so that a moving ref like HEAD never reuses older code."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", ref], capture_output=True, text=True, check=True)
    folder = REPO / ".cache" / f"before-{commit.stdout.strip()[:12]}"
    if not (folder / "capt_jax").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


# The settings both sides share, written as the peer's flags in the cases above, and the config key each is on
# `python -m capt_jax.bench` (whose own flags, --arch, --steps, --warmup, --seed, --peak-flops, ..., pass as they are).
BENCH_KEYS = {
    "--batch": "train.batch_size",
    "--seq": "train.seq_len",
    "--dtype": "model.dtype",
    "--lora-rank": "lora.rank",
    "--lora-alpha": "lora.alpha",
    "--lora-dropout": "lora.dropout",
    "--targets": "lora.targets",
    "--remat": "model.remat",
    "--grad-accum": "train.grad_accum",
    "--attention": "model.attention_impl",
    "--model": "model.path",
    "--quantize": "model.quantize",
}


def bench_argv(argv: list[str]) -> list[str]:
    """A case's capt_jax.bench command line with the shared settings as --config overrides; LoRA alpha defaults
    to 2 x rank, as on the peer."""
    out, keys, items = [], {}, list(argv)
    while items:
        item = items.pop(0)
        if item in BENCH_KEYS:
            keys[BENCH_KEYS[item]] = items.pop(0)
        elif item == "--double-quant":
            keys["model.double_quant"] = "true"
        else:
            out.append(item)
    if "lora.rank" in keys:
        keys.setdefault("lora.alpha", str(2 * int(keys["lora.rank"])))
    return out + [f"--config.{key}={value}" for key, value in keys.items()]


class CaseFailed(Exception):
    """A benchmark process that failed, timed out or printed no JSON: its command, and the end of what it printed."""

    def __init__(self, what: str, argv: Sequence[str], output: str):
        super().__init__(f"{what}: {' '.join(argv)}\n{output}")
        self.output = output


# capt_jax's attention where cuDNN's fails a run: the XLA path, with the same arguments otherwise (test_kernels.py).
XLA_ATTENTION = ["--attention", "xla"]


def names_cudnn_failure(output: str) -> bool:
    """`capt_jax.errors.names_cudnn_failure`, restated: this script imports no capt_jax, since it runs where capt_jax
    is not installed (the device machine), and a failing case must not stop it. An out-of-memory report names
    cuDNN's buffers too, and XLA's attention would need more memory, not less."""
    text = output.lower()
    return "cudnn" in text and "resource_exhausted" not in text and "out of memory" not in text


def run_case(argv: list[str], timeout: float, env: dict[str, str], tree: Path = REPO, pin: Sequence[str] = ()) -> dict:
    """One benchmark process on the code in `tree` (its cwd and first import path), under the `pin` prefix
    (taskset); its last-line JSON, or CaseFailed. A capt_jax.bench with the one command-line shape (a tree with
    capt_jax/cli.py) takes the shared settings as config keys; an older --before tree is run with its own flags."""
    if (tree / "capt_jax" / "cli.py").exists() and argv[: len(BENCH)] == BENCH:
        argv = BENCH + bench_argv(argv[len(BENCH) :])
    argv = [*pin, *argv]
    began = time.perf_counter()
    path = os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])  # carried wheels stay
    env = {**os.environ, "PYTHONPATH": path, "CAPT_JAX_CACHE": str(REPO / ".cache"), **env}
    try:
        proc = subprocess.run(argv, cwd=tree, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"")[-2000:].decode(errors="replace") + (e.stderr or b"")[-4000:].decode(errors="replace")
        raise CaseFailed(f"TIMED OUT after {timeout:.0f} s", argv, output) from None
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode or not lines or not lines[-1].startswith("{"):
        raise CaseFailed(f"FAILED ({proc.returncode})", argv, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    result = json.loads(lines[-1])
    result["process_wall_s"] = time.perf_counter() - began
    return result


def fmt_gib(r: dict) -> str:
    if r.get("peak_memory_gib") is None:
        return "n/a"
    kind = "device" if "device" in r["peak_memory_kind"] or "cuda" in r["peak_memory_kind"] else "RSS"
    return f"{r['peak_memory_gib']:.2f} ({kind})"


def table(results: list[dict]) -> str:
    """One row per (group, label): the fastest run when a case ran several times (on a shared machine noise only
    ever slows a run down, so the fastest is the least disturbed)."""
    by_case: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        by_case.setdefault((r["group"], r["label"]), []).append(r)
    rows = [
        "| case | run | tokens/s | step or call ms (min-max) | CPU s/step | peak GiB | MFU | compile s | first loss "
        "| vs peft |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    groups = list(dict.fromkeys(g for g, _ in by_case))
    for group in groups:
        cases = {label: runs for (g, label), runs in by_case.items() if g == group}
        chosen = {}
        for label, runs in cases.items():
            chosen[label] = max(runs, key=lambda r: r["tokens_per_second"])
        peers = [r["tokens_per_second"] for label, r in chosen.items() if r["framework"] != "capt_jax"]
        best_peer = max(peers) if peers else None
        for label, r in chosen.items():
            what = "step" if r["bench"] == "train" else "call"
            low, high = 1e3 * r[f"{what}_time_min_s"], 1e3 * r[f"{what}_time_max_s"]
            ms = f"{1e3 * r[f'{what}_time_s']:.0f} ({low:.0f}-{high:.0f})"
            cpu = r.get(f"cpu_time_per_{what}_s")
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
            comp = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
            ratio = f"{r['tokens_per_second'] / best_peer:.2f}x" if best_peer else "-"
            loss = f"{r['first_loss']:.4f}" if r.get("first_loss") is not None else "-"
            n = len(cases[label])
            rows.append(
                f"| {group} | {label}{f' (best of {n})' if n > 1 else ''} | {r['tokens_per_second']:,.0f} | "
                f"{ms} | {f'{cpu:.2f}' if cpu is not None else '-'} | {fmt_gib(r)} | {mfu} | {comp} | {loss} "
                f"| {ratio} |"
            )
    return "\n".join(rows)


UNIT = {"train": "step", "generate": "call"}  # what a bench times; "compile" results time only the compile


def port_table(results: list[dict]) -> str:
    """Per case, the current code against its `@REF` run (the fastest of each when rounds repeat): step (or
    generate call) time where there is one, compile time for all."""

    def seconds(r: dict) -> float:
        return r.get(f"{UNIT.get(r['bench'], '')}_time_s", r["compile_s"])

    by_case: dict[tuple[str, str], dict] = {}
    for r in results:
        key = (r["group"], r["label"])
        if key not in by_case or seconds(r) < seconds(by_case[key]):
            by_case[key] = r
    rows = [
        "| case | run | step or call ms (min-max) | CPU s/step | compile s | tracing s | peak GiB | first loss "
        "| vs before |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (group, label), r in by_case.items():
        before = next((b for (g, lb), b in by_case.items() if g == group and "@" in lb and "@" not in label), None)
        unit = UNIT.get(r["bench"])
        step = cpu = "-"
        if unit:
            low, high = 1e3 * r[f"{unit}_time_min_s"], 1e3 * r[f"{unit}_time_max_s"]
            step = f"{1e3 * r[f'{unit}_time_s']:.0f} ({low:.0f}-{high:.0f})"
            cpu = f"{r[f'cpu_time_per_{unit}_s']:.2f}"
        loss = f"{r['first_loss']:.4f}" if r.get("first_loss") is not None else "-"
        ratios = []
        if before is not None and unit:
            ratios.append(f"{unit} {r[f'{unit}_time_s'] / before[f'{unit}_time_s']:.3f}x")
        if before is not None:
            ratios.append(f"compile {r['compile_s'] / before['compile_s']:.3f}x")
        rows.append(
            f"| {group} | {label} | {step} | {cpu} | {r['compile_s']:.1f} | "
            f"{r['lower_s']:.1f} | {fmt_gib(r)} | {loss} | {', '.join(ratios) or '-'} |"
        )
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="cpu")
    parser.add_argument("--only", action="append", default=[], help="run cases whose 'group label' contains this")
    parser.add_argument("--rounds", type=int, default=1, help="run every case this many times, interleaved")
    parser.add_argument("--out", default=None, help="append each run's JSON here")
    parser.add_argument("--table", nargs="*", default=None, help="print the table of these JSONL files and exit")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--extra", default="", help="extra arguments for every run, e.g. '--steps 12'")
    parser.add_argument("--taskset", default=None, help="pin every run to these CPUs (taskset -c), e.g. 1")
    parser.add_argument("--before", default=None, help="also run the capt_jax cases on this git commit")
    parser.add_argument("--budget-s", type=float, default=None, help="start no case after this many seconds")
    parser.add_argument("--report", default=None, help="write the device preset's report (one JSON) here")
    parser.add_argument(
        "--malloc", choices=list(MALLOC_SETTINGS), default="default",
        help="glibc malloc settings for both sides' processes (see MALLOC_SETTINGS)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    if args.table is not None:
        results = [json.loads(line) for f in args.table for line in Path(f).read_text().splitlines() if line.strip()]
        print(port_table(results) if any("@" in r["label"] for r in results) else table(results))
        return
    cases = [(*c, REPO) for c in PRESETS[args.preset]() if all(s in f"{c[0]} {c[1]}" for s in args.only)]
    if args.before:
        tree = before_tree(args.before)
        cases = [
            twin
            for group, label, cmd, here in cases
            for twin in ([(group, f"{label} @{args.before}", cmd, tree)] if label.startswith("capt_jax") else [])
            + [(group, label, cmd, here)]
        ]
    extra = args.extra.split()
    if args.dry_run:
        for group, label, cmd, tree in cases:
            print(f"[{group} | {label}] (in {tree}) {' '.join(cmd + extra)}")
        return
    peak = []
    pin = ["taskset", "-c", args.taskset] if args.taskset else []
    if args.preset == "cpu" and not args.before:
        rate, n = measure_cpu_peak(pin)
        peak = ["--peak-flops", f"{rate:.4g}"]
        print(f"CPU MFU denominator (best {n}^3 float32 matmul): {rate / 1e9:.0f} GFLOP/s", flush=True)
    results, skipped, failures, began = [], [], [], time.perf_counter()

    def measure(group: str, label: str, cmd: list[str], tree: Path, round_: int) -> CaseFailed | None:
        """Run one case within the budget and record its result; a failure is kept in `failures` and returned."""
        left = math.inf if args.budget_s is None else args.budget_s - (time.perf_counter() - began)
        if left <= 0:
            skipped.append(f"{group} | {label}: the --budget-s of {args.budget_s:.0f} s was spent")
            return None
        print(f"round {round_ + 1}/{args.rounds}: {group} | {label}", flush=True)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        env = MALLOC_SETTINGS[args.malloc]
        try:
            r = run_case(cmd + peak + extra, min(args.timeout, left), env, tree, pin)
        except CaseFailed as failure:
            print(failure, flush=True)
            failures.append({"case": f"{group} | {label}", "error": str(failure)})
            return failure
        command = " ".join([f"{k}={v}" for k, v in env.items()] + pin + ["python"] + cmd[1:] + peak + extra)
        command = command.replace(str(REPO) + "/", "")
        if args.malloc != "default":
            group = f"{group} malloc={args.malloc}"
        r.update(group=group, label=label, command=command, round=round_, load_average=load, malloc=args.malloc)
        results.append(r)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(r) + "\n")
        done = [f"{r['tokens_per_second']:,.0f} tokens/s"] if "tokens_per_second" in r else []
        done += [f"compile {r['compile_s']:.1f} s"] if "compile_s" in r else []
        print(f"  {', '.join(done)}", flush=True)
        return None

    # Once cuDNN's attention fails a capt_jax case whose attention nobody chose, that case is rerun and every later
    # one runs on XLA's, so a short loan of a GPU still fills the table.
    attention_fallback = None
    for round_ in range(args.rounds):
        for group, label, cmd, tree in cases:
            switchable = label.startswith("capt_jax") and "--attention" not in cmd + extra
            if switchable and attention_fallback:
                label, cmd = f"{label} attention=xla", cmd + XLA_ATTENTION
            failure = measure(group, label, cmd, tree, round_)
            if switchable and failure and not attention_fallback and names_cudnn_failure(failure.output):
                attention_fallback = (
                    f"cuDNN's attention failed {group} | {label}: it and every later capt_jax case ran on XLA's"
                )
                print(attention_fallback, flush=True)
                label, cmd = f"{label} attention=xla", cmd + XLA_ATTENTION
                failure = measure(group, label, cmd, tree, round_)
            if failure:
                skipped.append(f"{group} | {label}: failed or ran past the budget (its output is under failures)")
    if args.before:  # the current code against the earlier commit; then, where a peer ran too, the usual table
        print(port_table([r for r in results if r["framework"] == "capt_jax"]))
        if all(r["framework"] == "capt_jax" for r in results):
            return
    if args.report:
        report = device_report(results, skipped, failures, attention_fallback, tiny=args.preset == "device-tiny")
        Path(args.report).write_text(json.dumps(report, indent=1) + "\n")
        summary = {key: report[key] for key in ("targets", "parity", "skipped", "attention_fallback")}
        print(json.dumps(summary, indent=1))
    print(table(results))
    ratios: dict[str, dict[str, float]] = {}  # best tokens/s of each capt_jax case over the best peer case's
    for group in dict.fromkeys(r["group"] for r in results):
        best = {
            (label, framework): max(
                r["tokens_per_second"] for r in results if r["group"] == group and r["label"] == label
            )
            for label, framework in dict.fromkeys((r["label"], r["framework"]) for r in results if r["group"] == group)
        }
        best_peer = max((v for (_, fw), v in best.items() if fw != "capt_jax"), default=None)
        for (label, fw), v in best.items():
            if fw == "capt_jax" and best_peer:
                ratios.setdefault(group, {})[label] = round(v / best_peer, 3)
    print(json.dumps({"speedup_vs_best_peer": ratios}))


if __name__ == "__main__":
    main()
