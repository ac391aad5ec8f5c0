"""Inspect the data as the model sees it, and report abstraction validity.

python -m capt_jax.data show --dataset cladder|prontoqa --split train|id|anti|non
    [--data-dir DIR | --data-file FILE] --mode M --n N [--seed S] [--json] [--keep-overlap]
python -m capt_jax.data export --dataset D --mode M --out FILE [--copies C] [...]
python -m capt_jax.data report [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import cladder, prontoqa
from .abstraction import validity_report
from .example import DataError
from .intervention import MODES, render_examples, training_pairs
from .prontoqa_generator import ONTOLOGIES, generate_prontoqa
from .sources import SOURCES, SPLITS, default_data_dir, load_examples, test_sets
from .splits import split

# Generator settings the report checks besides the files.
REPORT_GENERATOR_SETTINGS = [
    (ontology, hops, seed) for ontology in ONTOLOGIES for hops in (1, 3, (3, 5), 6) for seed in (0, 1)
]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m capt_jax.data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(required=True)
    show = commands.add_parser("show", help="print prompts and targets exactly as trained on or tested")
    _add_source_arguments(show)
    show.add_argument(
        "--split",
        choices=("train",) + SPLITS,
        default="train",
        help="the training examples, or a test split after the contamination guard",
    )
    show.add_argument("--n", type=int, required=True, help="how many examples (0: all)")
    show.add_argument("--seed", type=int, default=0, help="seed of the random letters")
    show.add_argument("--json", action="store_true", help="one JSON object per line, with its id and split")
    show.add_argument(
        "--keep-overlap", action="store_true", help="keep test questions whose question or template is trained on"
    )
    show.set_defaults(run=_show)
    export = commands.add_parser("export", help="write the replicated training pairs as JSONL")
    _add_source_arguments(export)
    export.add_argument("--variant", help="the CLadder variant to train on (default commonsense)")
    export.add_argument("--copies", type=int, help="default 10000 // n-train")
    export.add_argument("--seed", type=int, default=0, help="seed of the random letters")
    export.add_argument("--out", required=True, help="JSONL file of {prompt, completion}")
    export.set_defaults(run=_export)
    report = commands.add_parser("report", help="abstraction invalid rate per file and generator setting")
    report.add_argument("--data-dir", help="default: $CAPT_DATA_DIR or <repo>/../shared/data")
    report.set_defaults(run=_report)
    return parser


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=("cladder", "prontoqa"))
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--data-dir")
    where.add_argument("--data-file")
    parser.add_argument("--mode", required=True, choices=MODES)
    parser.add_argument("--n-train", type=int, default=100, help="training examples in the split")
    parser.add_argument("--answer-only", action="store_true", help="targets without reasoning")
    parser.add_argument("--source", choices=SOURCES, default="auto")
    parser.add_argument("--hops", type=int, nargs="+", default=[3, 5], help="generator: count or low high")
    parser.add_argument("--ontology", choices=ONTOLOGIES, default="true", help="generator ontology")


def _load_options(args: argparse.Namespace) -> dict:
    return {
        "source": args.source,
        "hops": args.hops[0] if len(args.hops) == 1 else tuple(args.hops),
        "ontology": args.ontology,
    }


def _export(args: argparse.Namespace) -> int:
    loaded = load_examples(args.dataset, args.variant, args.data_dir, args.data_file, **_load_options(args))
    train, _ = split(loaded, args.n_train)
    pairs = training_pairs(train, args.mode, args.copies, args.seed, not args.answer_only)
    with open(args.out, "w", encoding="utf-8") as out:
        out.writelines(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs)
    print(f"wrote {len(pairs)} pairs ({len(train)} examples) to {args.out}")
    return 0


def _show(args: argparse.Namespace) -> int:
    options = _load_options(args)
    if args.split == "train":
        loaded = load_examples(args.dataset, None, args.data_dir, args.data_file, **options)
        examples, _ = split(loaded, args.n_train)
    else:
        found = test_sets(
            args.dataset,
            args.data_dir,
            args.data_file,
            splits=(args.split,),
            n_train=args.n_train,
            keep_overlap=args.keep_overlap,
            **options,
        )[args.split]
        if found.skipped:
            raise DataError(args.data_file or args.data_dir or "<default data>", None, None, found.skipped)
        examples = found.examples
    shown = examples[: args.n or None]
    for example, item in zip(shown, render_examples(shown, args.mode, args.seed, not args.answer_only)):
        if args.json:
            line = {"id": item.example_id, "split": args.split, "variant": example.variant}
            line.update(prompt=item.prompt, target=item.target, answer=item.answer, symbols=item.symbols)
            print(json.dumps(line, ensure_ascii=False))
        else:
            symbols = ", ".join(f"{k} = {v}" for k, v in item.symbols.items()) or "(none)"
            print(
                f"=== {item.example_id} ({args.split}, {example.variant}) ===\n--- prompt ---\n{item.prompt}\n"
                f"--- target ---\n{item.target}\n--- symbols ---\n{symbols}\n"
            )
    return 0


def _report(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    reports = []
    if data_dir is not None:
        folder = cladder.cladder_dir(data_dir)
        for variant in cladder.VARIANTS:
            try:
                path = cladder.question_file(folder, variant)
            except FileNotFoundError:
                continue
            reports.append(validity_report(cladder.load_cladder_file(path, variant), str(path)))
        for path in sorted(prontoqa.prontoqa_dir(data_dir).glob("*.json")):
            reports.append(validity_report(prontoqa.load_prontoqa_file(path), str(path)))
    for ontology, hops, seed in REPORT_GENERATOR_SETTINGS:
        records = generate_prontoqa(500, hops, ontology, True, seed)
        name = f"generator ontology={ontology} hops={hops} seed={seed}"
        reports.append(validity_report(prontoqa.examples_from_capt_records(records, name), name))
    for report in reports:
        print(report.line())
    return 0 if all(r.invalid_rate <= 0.02 for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
