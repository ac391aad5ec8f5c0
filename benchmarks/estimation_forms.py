"""The two estimate forms side by side: usable rate, decoded tokens and time, on the same questions and model.

    python benchmarks/estimation_forms.py --config configs/experiment_prontoqa_smollm2.py \
        [--workdir W (the `self` estimator: a model trained with the estimation term) | --lm] \
        [--split id] [--n 64] [--out forms.json]

Without --workdir the estimator is `lm`: the frozen base model prompted with eval.estimator_shots worked
examples. Each form runs in turn on the same n questions with greedy decoding and no retries, so the two
rows differ only in what the estimator has to write.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from capt_jax.config import load_config
from capt_jax.data import training_examples
from capt_jax.estimate import few_shot_conversation, parse_estimation
from capt_jax.evaluate import evaluation_sets, load_reasoner_model, model_completer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", help="a run trained with data.estimation_weight > 0 (`self`); default: `lm`")
    parser.add_argument("--split", default="id")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--forms", default="map,template")
    parser.add_argument("--out", help="write the rows as JSON here")
    args, overrides = parser.parse_known_args()
    config = load_config(args.config, [*overrides, f"--config.eval.splits=({args.split!r},)"])
    examples = evaluation_sets(config)[args.split].examples[: args.n]
    base, tuned, _ = load_reasoner_model(config, args.workdir)
    model = tuned if args.workdir else base
    shots = [] if args.workdir else training_examples(config.data)[: config.eval.estimator_shots]
    complete = model_completer(model, config.eval.estimator_max_new_tokens, config.eval.batch_size)
    reading = (config.eval.estimator_drop_unplaced, config.eval.estimator_salvage_cut_off)
    rows = []
    for form in args.forms.split(","):
        conversations = [few_shot_conversation(e, shots, form) for e in examples]
        began = time.perf_counter()
        replies = complete(conversations, 0)
        seconds = time.perf_counter() - began
        usable = sum(parse_estimation(r, e, form, *reading).abstraction is not None for r, e in zip(replies, examples))
        tokens = [len(model.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in replies]
        rows.append(
            {
                "estimator": "self" if args.workdir else f"lm ({len(shots)} shots)",
                "form": form,
                "split": args.split,
                "n": len(examples),
                "usable": usable,
                "mean_reply_tokens": sum(tokens) / len(tokens),
                "seconds": seconds,
            }
        )
        print(json.dumps(rows[-1]))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
