"""Dropping the slots that place nothing, against the strict check: the same estimates, read both ways.

    python benchmarks/estimate_repair.py --config configs/experiment_prontoqa_generated.py \
        --workdirs W0,W1,W2 [--seeds 0,1,2] [--out repair.json] [--config.key=value ...]

Each workdir is a model trained with the estimation term (`self`), one per seed. Per split it estimates every
question once (greedy, no retries: a strict reading's rejects are not re-sampled, so the trade that dropping makes
against retries is not measured here), reads each reply with `eval.estimator_drop_unplaced` off (strict) and on,
and answers through the usable estimates and from the raw prompt otherwise, as `evaluate` does. So the two readings
differ only in which estimates they accept: the models, replies and letters are the same, and the accuracies are
paired per question (capt_jax.stats: the sign test over questions, bootstrap intervals over seeds and questions).
Per reading it also counts the accepted estimates that still hold a gold name (an entity left undeclared), as a
metric only.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from capt_jax.config import load_config
from capt_jax.data import leftover_names
from capt_jax.estimate import few_shot_conversation, parse_estimation
from capt_jax.evaluate import (
    cached_reasoner,
    evaluation_sets,
    load_reasoner_model,
    model_completer,
    reasoner_prompts,
    score_split,
)
from capt_jax.stats import bootstrap_contrast, bootstrap_interval, paired_sign_test

READINGS = {"strict": False, "drop": True}


def one_seed(config, workdir: str, sets) -> dict[str, dict[str, list]]:
    """Per split and reading: whether each question was answered right, and whether it went through an estimate."""
    _, tuned, _ = load_reasoner_model(config, workdir)
    complete = model_completer(tuned, config.eval.estimator_max_new_tokens, config.eval.batch_size)
    reasoner = cached_reasoner(tuned, config, {})  # an estimate both readings accept is answered once
    form, found = config.data.estimation_form, {}
    for name, split in sets.items():
        examples = split.examples
        replies = complete([few_shot_conversation(e, (), form) for e in examples], 0)
        found[name] = {}
        for reading, drop in READINGS.items():
            abstractions = [parse_estimation(r, e, form, drop).abstraction for r, e in zip(replies, examples)]
            prompts, _ = reasoner_prompts(
                examples, abstractions, config.data.mode, config.eval.seed, config.data.with_reasoning
            )
            _, records = score_split(examples, reasoner(prompts))
            found[name][reading] = [r["correct"] for r in records]
            found[name][f"{reading}_estimated"] = [a is not None for a in abstractions]
            found[name][f"{reading}_gold_left"] = [
                a is not None and bool(leftover_names(a, e)) for a, e in zip(abstractions, examples)
            ]
        print(json.dumps({"split": name, **{k: float(np.mean(v)) for k, v in found[name].items()}}), flush=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdirs", required=True, help="comma-separated, one trained model per seed")
    parser.add_argument("--seeds", help="the seed of each workdir (default 0, 1, ...): its test-time letters")
    parser.add_argument("--out", help="write the table as JSON here, with every question's outcomes")
    args, overrides = parser.parse_known_args()
    workdirs = args.workdirs.split(",")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(range(len(workdirs)))
    config = load_config(args.config, [*overrides, "--config.eval.estimator=self"])
    sets = {name: split for name, split in evaluation_sets(config).items() if not split.skipped}
    runs = []
    for seed, workdir in zip(seeds, workdirs, strict=True):
        config.eval.seed = seed
        runs.append(one_seed(config, workdir, sets))
    rows = []
    for name in sets:
        outcome = {r: np.array([run[name][r] for run in runs], dtype=float) for r in READINGS}
        rows.append(
            {
                "split": name,
                "n": len(sets[name].examples),
                "seeds": seeds,
                **{
                    f"{r}_{key}": value
                    for r in READINGS
                    for key, value in (
                        ("accuracy", float(outcome[r].mean())),
                        ("ci95", bootstrap_interval(outcome[r])),
                        ("estimated", float(np.mean([run[name][f"{r}_estimated"] for run in runs]))),
                        ("gold_left", float(np.mean([run[name][f"{r}_gold_left"] for run in runs]))),
                    )
                },
                "drop_minus_strict": bootstrap_contrast(
                    [(1.0, outcome["drop"], name), (-1.0, outcome["strict"], name)]
                ),
                "paired": paired_sign_test(outcome["drop"], outcome["strict"]),
                "ids": [e.id for e in sets[name].examples],
                "outcomes": {key: [run[name][key] for run in runs] for key in runs[0][name]},  # [seed][question]
            }
        )
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("ids", "outcomes")}), flush=True)
    if args.out:
        with open(args.out, "w") as f:  # one split per line: the outcome lists would take a line per question
            f.write("[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]\n")


if __name__ == "__main__":
    main()
