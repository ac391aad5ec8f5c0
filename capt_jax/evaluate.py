"""Two-stage CAPT evaluation on the ID and OOD test sets.

    python -m capt_jax.evaluate --config configs/NAME.py [--workdir W | --base-only] [--out DIR] [--config.k=v ...]

Per split: estimate each question's abstraction (eval.estimator), intervene with random letters (the training
config's data.mode; raw prompts for `null` and for the base model), answer with the reasoner in large
jit-compiled KV-cache batches, parse, and score. Writes results.json, a PNG chart, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from capt_jax import checkpoint as ckpt
from capt_jax.config import ConfigDict, ConfigError, load_config, validate_eval
from capt_jax.data import Abstraction, DataError, Example, intervene, parse_answer, test_examples
from capt_jax.data.intervention import example_rng
from capt_jax.estimate import Estimates, model_estimates, openai_completer, oracle_estimates
from capt_jax.generate import Sampling, generate
from capt_jax.lora import lora_scale, merge_lora
from capt_jax.pretrained import Pretrained, load_pretrained

Reasoner = Callable[[list[str]], list[str]]  # prompts -> replies
METHOD_NAMES = {"null": "SFT", "random": "CAPT"}


def method_name(config: ConfigDict, base_only: bool) -> str:
    return "base" if base_only else METHOD_NAMES.get(config.data.mode, f"ablation:{config.data.mode}")


def evaluation_sets(config: ConfigDict) -> dict[str, list[Example]]:
    """The configured splits of the test sets, each cut to eval.max_examples (0: all)."""
    sets = test_examples(config.data)
    unknown = sorted(set(config.eval.splits) - set(sets))
    if unknown:
        raise ConfigError(f"config key 'eval.splits': {unknown} not among the test sets {sorted(sets)}")
    cap = config.eval.max_examples or None
    return {name: sets[name][:cap] for name in config.eval.splits}


def reasoner_prompts(
    examples: Sequence[Example], abstractions: Sequence[Abstraction | None], mode: str, seed: int, with_reasoning: bool
) -> tuple[list[str], int]:
    """The prompt each example is answered from, and how many fell back to the raw prompt (no valid estimate)."""
    prompts, fallbacks = [], 0
    for example, abstraction in zip(examples, abstractions):
        if mode == "null" or abstraction is None:
            fallbacks += mode != "null"
            abstraction = Abstraction(example, example.prompt, example.reasoning, {}, {})
            mode_used = "null"
        else:
            mode_used = mode
        prompts.append(intervene(abstraction, mode_used, example_rng(seed, example), with_reasoning).prompt)
    return prompts, fallbacks


def score_split(examples: Sequence[Example], replies: Sequence[str]) -> dict[str, Any]:
    """Accuracy, n and parse failures, plus per-rung and per-query-type breakdowns where the data has them."""
    groups: dict[str, dict[str, list[bool]]] = {"rung": defaultdict(list), "query_type": defaultdict(list)}
    correct, unparseable = [], []
    for example, reply in zip(examples, replies, strict=True):
        parsed = parse_answer(reply, example.dataset)
        if parsed is None:
            unparseable.append(example.id)
        correct.append(parsed == example.answer)
        for key, group in groups.items():
            if example.meta.get(key) is not None:
                group[str(example.meta[key])].append(correct[-1])
    result: dict[str, Any] = {
        "accuracy": sum(correct) / len(correct) if correct else 0.0,
        "n": len(correct),
        "correct": sum(correct),
        "parse_failures": len(unparseable),
        "unparseable_ids": unparseable,
    }
    for key, group in groups.items():
        if group:
            result[f"by_{key}"] = {k: {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in sorted(group.items())}
    return result


def evaluate_sets(
    sets: dict[str, list[Example]],
    estimate: Callable[[list[Example]], Estimates],
    reasoner: Reasoner,
    mode: str,
    seed: int = 0,
    with_reasoning: bool = True,
) -> dict[str, dict[str, Any]]:
    """Estimation -> intervention -> reasoning -> scores, for every split."""
    results = {}
    for name, examples in sets.items():
        estimates = estimate(examples) if mode != "null" else Estimates([None] * len(examples), [0] * len(examples))
        prompts, fallbacks = reasoner_prompts(examples, estimates.abstractions, mode, seed, with_reasoning)
        results[name] = score_split(examples, reasoner(prompts))
        if mode != "null":
            results[name].update(estimator_valid_rate=estimates.valid_rate, estimator_fallbacks=fallbacks)
    return results


def model_completer(model: Pretrained, max_new_tokens: int, batch_size: int):
    """A Completer over a local model: greedy first, then temperature-0.7 samples with a new seed per retry."""

    def complete(conversations, attempt: int) -> list[str]:
        sampling = Sampling() if attempt == 0 else Sampling(temperature=0.7, top_p=0.95)
        return generate(
            model, list(conversations), max_new_tokens, sampling, chat=True, batch_size=batch_size, seed=attempt
        )

    return complete


def make_estimator(config: ConfigDict, base: Pretrained, tuned: Pretrained) -> Callable[[list[Example]], Estimates]:
    """eval.estimator -> a function from examples to their estimated abstractions."""
    e = config.eval
    if e.estimator == "oracle":
        return oracle_estimates
    shots: list[Example] = []
    if e.estimator in ("lm", "openai") and e.estimator_shots:
        from capt_jax.data import training_examples

        shots = training_examples(config.data)[: e.estimator_shots]
    if e.estimator == "openai":
        complete = openai_completer(e.openai_base_url, e.openai_model, e.openai_api_key_env)
    else:
        model = tuned if e.estimator == "self" else (load_pretrained(e.estimator_model) if e.estimator_model else base)
        complete = model_completer(model, e.estimator_max_new_tokens, e.batch_size)
    return lambda examples: model_estimates(examples, complete, shots, e.estimator_retries)


def load_reasoner_model(config: ConfigDict, workdir: str | None) -> tuple[Pretrained, Pretrained, dict[str, Any]]:
    """(base, reasoner, info): the reasoner has the workdir's latest adapter merged in (none for --base-only)."""
    base = load_pretrained(config.model.path, dtype=config.model.dtype, compute_dtype=config.model.compute_dtype)
    if workdir is None:
        return base, base, {}
    step, meta = ckpt.read_meta(workdir)
    adapters, _ = ckpt.restore_adapters(workdir, step)
    scale = lora_scale(meta["lora"]["rank"], meta["lora"]["alpha"])
    tuned = dataclasses.replace(base, params=merge_lora(base.params, adapters, scale))
    return base, tuned, {"workdir": str(workdir), "step": step}


def evaluate(config: ConfigDict, workdir: str | None, base_only: bool = False) -> dict[str, Any]:
    """Everything `python -m capt_jax.evaluate` computes, as a JSON-ready dict."""
    validate_eval(config)
    if config.eval.estimator == "self" and not base_only and config.data.estimation_weight <= 0:
        raise ConfigError(
            "config key 'eval.estimator': 'self' needs a model trained with data.estimation_weight > 0 "
            "(the two-stage objective); use oracle, lm or openai otherwise"
        )
    sets = evaluation_sets(config)
    base, reasoner_model, info = load_reasoner_model(config, None if base_only else workdir)
    mode = "null" if base_only else config.data.mode
    e = config.eval

    def reasoner(prompts: list[str]) -> list[str]:
        return generate(reasoner_model, prompts, e.max_new_tokens, chat=True, batch_size=e.batch_size)

    splits = evaluate_sets(
        sets, make_estimator(config, base, reasoner_model), reasoner, mode, e.seed, config.data.with_reasoning
    )
    return {
        "method": method_name(config, base_only),
        "model": str(config.model.path),
        "dataset": config.data.dataset,
        "mode": mode,
        "estimator": e.estimator if mode != "null" else None,
        **info,
        "splits": splits,
    }


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """Methods as rows, splits as columns: accuracy in percent with n."""
    splits = list(dict.fromkeys(s for r in results for s in r["splits"]))
    lines = ["| method | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    for r in results:
        cells = []
        for s in splits:
            split = r["splits"].get(s)
            cells.append(f"{100 * split['accuracy']:.1f}% (n={split['n']})" if split else "-")
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: Sequence[dict[str, Any]], file: Path) -> Path:
    """Grouped bars: accuracy per split, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(dict.fromkeys(s for r in results for s in r["splits"]))
    width = 0.8 / max(len(results), 1)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(splits), 3.6))
    for i, r in enumerate(results):
        xs = [j + (i - (len(results) - 1) / 2) * width for j in range(len(splits))]
        ys = [100 * r["splits"][s]["accuracy"] if s in r["splits"] else 0 for s in splits]
        bars = ax.bar(xs, ys, width, label=r["method"])
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(splits)), splits)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.axhline(50, color="grey", linewidth=0.6, linestyle=":")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{results[0]['dataset']}: accuracy by test split" if results else "")
    fig.tight_layout()
    file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(file, dpi=120)
    plt.close(fig)
    return file


def write_results(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_file = out_dir / "results.json"
    json_file.write_text(json.dumps(results, indent=2))
    return json_file, plot([results], out_dir / "accuracy.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--workdir", help="training workdir whose latest checkpoint to evaluate (default: config's)")
    target.add_argument("--base-only", action="store_true", help="evaluate the base model on raw prompts")
    parser.add_argument("--out", help="output folder (default: WORKDIR/eval, or WORKDIR/eval_base)")
    args, overrides = parser.parse_known_args(argv)
    try:
        config = load_config(args.config, overrides)
        workdir = None if args.base_only else (args.workdir or config.workdir)
        results = evaluate(config, workdir, args.base_only)
        out = Path(args.out or Path(args.workdir or config.workdir) / ("eval_base" if args.base_only else "eval"))
        json_file, png = write_results(results, out)
    except (ConfigError, DataError, ckpt.CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(markdown_table([results]))
    print(f"\nresults: {json_file}\nplot:    {png}")


if __name__ == "__main__":
    main()
