"""How the first stage reads a model's estimates: strict, dropping the slots that place nothing, also salvaging
replies cut off at their token limit; with and without retries. The same estimates, read each way.

    python benchmarks/estimate_repair.py --config configs/experiment_prontoqa_generated.py \
        --workdirs W0,W1,W2 [--seeds 0,1,2] [--retries 3] [--out repair.json] [--replies replies.jsonl.gz] \
        [--config.key=value ...]

Each workdir is a model trained with the estimation term (`self`), one per seed. Per split it estimates every
question greedily and reads each reply three ways (`CHECKS`): `strict` (`eval.estimator_drop_unplaced` off),
`drop` (on), and `salvage` (on, with `eval.estimator_salvage_cut_off`: a reply cut off inside its JSON keeps its
complete entries). It answers through the usable estimates and from the raw prompt otherwise, as `evaluate` does.
With `--retries K` it then re-samples, as `evaluate` would (temperature 0.7, a new seed per attempt), every estimate
some reading still rejects, K times at most, and each reading takes the first of its attempts 0..k that it accepts
(`strict_rk`, `drop_rk`, `salvage_rk`). The readings share the samples: each accepts a superset of the previous
one's estimates (what strict accepts has nothing to drop and closes its JSON), so the questions re-sampled are
strict's rejects, and a reading takes a question's sample only while it still rejects it. `strict_rk` is exactly
what `evaluate` does; a sample that `drop_rk` or `salvage_rk` takes comes from the same distribution as the one
`evaluate` would draw, but not the same draw, since a batch's samples depend on which questions share it. So the
readings differ only in which estimates they accept: the models, replies and letters are shared, and the
accuracies are paired per question (capt_jax.stats: the sign test over questions, bootstrap intervals over
seeds and questions). Per reading it also counts the accepted estimates that still hold a gold name (an entity
left undeclared), as a metric only.
"""

from __future__ import annotations

import argparse
import gzip
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

# (eval.estimator_drop_unplaced, eval.estimator_salvage_cut_off) of each reading
CHECKS = {"strict": (False, False), "drop": (True, False), "salvage": (True, True)}


def readings(retries: int) -> list[tuple[str, str, int]]:
    """(name, check, k): each check on the greedy reply alone, then with k = 1..retries re-samples (`strict_rk`)."""
    return [(check + (f"_r{k}" if k else ""), check, k) for k in range(retries + 1) for check in CHECKS]


def accepted_by_attempt(
    examples, conversations, complete, form: str, retries: int, log: list[dict]
) -> dict[str, list[list]]:
    """Per check, per attempt 0..retries: each question's abstraction accepted at or before that attempt (None
    while rejected). Attempt k re-samples the questions a check still rejects after attempt k-1; every reply
    goes to `log`."""
    accepted = {check: [[None] * len(examples)] for check in CHECKS}
    for attempt in range(retries + 1):
        pending = [i for i in range(len(examples)) if any(accepted[c][-1][i] is None for c in CHECKS)]
        replies = dict(zip(pending, complete([conversations[i] for i in pending], attempt))) if pending else {}
        log += [{"id": examples[i].id, "attempt": attempt, "reply": reply} for i, reply in replies.items()]
        for check, (drop, salvage) in CHECKS.items():
            latest = list(accepted[check][-1])
            for i, reply in replies.items():
                if latest[i] is None:
                    latest[i] = parse_estimation(reply, examples[i], form, drop, salvage).abstraction
            accepted[check].append(latest)
    return {check: by_attempt[1:] for check, by_attempt in accepted.items()}


def one_seed(config, workdir: str, sets, retries: int, log: list[dict]) -> dict[str, dict[str, list]]:
    """Per split and reading: whether each question was answered right, and whether it went through an estimate."""
    _, tuned, _ = load_reasoner_model(config, workdir)
    complete = model_completer(tuned, config.eval.estimator_max_new_tokens, config.eval.batch_size)
    reasoner = cached_reasoner(tuned, config, {})  # an estimate several readings accept is answered once
    form, found = config.data.estimation_form, {}
    for name, split in sets.items():
        examples = split.examples
        conversations = [few_shot_conversation(e, (), form) for e in examples]
        split_log: list[dict] = []
        accepted = accepted_by_attempt(examples, conversations, complete, form, retries, split_log)
        log += [{"seed": config.eval.seed, "split": name, **r} for r in split_log]
        found[name] = {}
        for reading, check, attempts in readings(retries):
            abstractions = accepted[check][attempts]
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


def contrasts(retries: int) -> list[tuple[str, str]]:
    """(A, B) pairs to test A - B: each check against the one before it; with retries, each check against its greedy
    self, dropping and salvaging without retries against strict with them, and each check with retries against
    the one before it."""
    pairs = [("drop", "strict"), ("salvage", "drop")]
    if retries:
        last = f"_r{retries}"
        pairs += [(check + last, check) for check in CHECKS]
        pairs += [("drop", "strict" + last), ("salvage", "strict" + last), ("drop" + last, "strict" + last)]
        pairs += [("salvage" + last, "drop" + last)]
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdirs", required=True, help="comma-separated, one trained model per seed")
    parser.add_argument("--seeds", help="the seed of each workdir (default 0, 1, ...): its test-time letters")
    parser.add_argument("--retries", type=int, default=0, help="re-samples of a rejected estimate (default 0)")
    parser.add_argument("--out", help="write the table as JSON here, with every question's outcomes")
    parser.add_argument("--replies", help="write every estimate's reply here (.jsonl.gz), to read them again later")
    args, overrides = parser.parse_known_args()
    workdirs = args.workdirs.split(",")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(range(len(workdirs)))
    config = load_config(args.config, [*overrides, "--config.eval.estimator=self"])
    sets = {name: split for name, split in evaluation_sets(config).items() if not split.skipped}
    runs, log = [], []
    for seed, workdir in zip(seeds, workdirs, strict=True):
        config.eval.seed = seed
        runs.append(one_seed(config, workdir, sets, args.retries, log))
        write(args, sets, seeds[: len(runs)], runs, log)  # after each seed: a stopped run keeps the seeds it finished


def write(args, sets, seeds: list[int], runs: list[dict], log: list[dict]) -> None:
    """The table over the seeds so far (printed, and to --out with every question's outcomes), and the replies."""
    if args.replies:
        with gzip.open(args.replies, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in log)
    names = [name for name, _, _ in readings(args.retries)]
    rows = []
    for name in sets:
        outcome = {r: np.array([run[name][r] for run in runs], dtype=float) for r in names}
        rows.append(
            {
                "split": name,
                "n": len(sets[name].examples),
                "seeds": seeds,
                **{
                    f"{r}_{key}": value
                    for r in names
                    for key, value in (
                        ("accuracy", float(outcome[r].mean())),
                        ("ci95", bootstrap_interval(outcome[r])),
                        ("estimated", float(np.mean([run[name][f"{r}_estimated"] for run in runs]))),
                        ("gold_left", float(np.mean([run[name][f"{r}_gold_left"] for run in runs]))),
                    )
                },
                "contrasts": {
                    f"{a}_minus_{b}": {
                        "difference": float(outcome[a].mean() - outcome[b].mean()),
                        "ci95": bootstrap_contrast([(1.0, outcome[a], name), (-1.0, outcome[b], name)]),
                        "paired": paired_sign_test(outcome[a], outcome[b]),
                    }
                    for a, b in contrasts(args.retries)
                },
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
