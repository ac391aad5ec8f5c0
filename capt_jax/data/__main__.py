"""Inspect the data exactly as a config trains and tests on it, and report abstraction validity.

    python -m capt_jax.data show --split train|id|anti|non [--n N] [--json] [--config FILE] [--config.data.k=v ...]
    python -m capt_jax.data export --out FILE [--config FILE] [--config.data.k=v ...]
    python -m capt_jax.data report [--config.data.data_dir=DIR]

`show` prints the training examples (their first intervened copy, lettered by data.intervention_seed) or a test
split after the contamination guard (lettered by eval.seed, as evaluation letters it); with --json every line
carries its `id` and `split`, so anyone can audit the split. `export` writes the replicated training pairs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import flags

from capt_jax import cli
from capt_jax.config import ConfigDict, validate_data
from capt_jax.errors import MissingFileError
from capt_jax.outputs import check_output_file

from . import cladder, prontoqa
from .abstraction import validity_report
from .example import DataError
from .intervention import render_examples
from .pipeline import test_examples, training_data, training_examples
from .prontoqa_generator import ONTOLOGIES, generate_prontoqa
from .sources import SPLITS, default_data_dir

# Generator settings the report checks besides the files.
REPORT_GENERATOR_SETTINGS = [
    (ontology, hops, seed) for ontology in ONTOLOGIES for hops in (1, 3, (3, 5), 6) for seed in (0, 1)
]
DATA_KEYS = (
    "data.dataset",
    "data.source",
    "data.data_dir",
    "data.data_file",
    "data.mode",
    "data.n_train",
    "data.with_reasoning",
    "data.keep_overlap",
)


def _show_flags(values: flags.FlagValues) -> None:
    flags.DEFINE_enum("split", "train", ("train", *SPLITS), "training examples, or a test split", flag_values=values)
    flags.DEFINE_integer("n", 0, "how many examples (0: all)", lower_bound=0, flag_values=values)
    flags.DEFINE_bool("json", False, "one JSON object per line, with its id and split", flag_values=values)


def _export_flags(values: flags.FlagValues) -> None:
    flags.DEFINE_string("out", None, "JSONL file of {prompt, completion}", flag_values=values)


def show(config: ConfigDict, values: flags.FlagValues) -> None:
    validate_data(config)
    data = config.data
    if values.split == "train":
        examples, seed = training_examples(data), data.intervention_seed
    else:
        found = test_examples(data, (values.split,))[values.split]
        if found.skipped:
            made = f"<generated {data.prontoqa_ontology} ontology, seed {data.prontoqa_seed}>"
            where = data.data_file or data.data_dir or (made if data.source == "generate" else "<default data>")
            raise DataError(where, None, None, found.skipped)
        examples, seed = found.examples, config.eval.seed
        if note := found.guard_note(values.split):
            print(f"{note}; data.keep_overlap=True keeps them", file=sys.stderr)
    shown = examples[: values.n or None]
    for example, item in zip(shown, render_examples(shown, data.mode, seed, data.with_reasoning)):
        if values.json:
            line = {"id": item.example_id, "split": values.split, "variant": example.variant}
            line.update(prompt=item.prompt, target=item.target, answer=item.answer, symbols=item.symbols)
            print(json.dumps(line, ensure_ascii=False))
        else:
            symbols = ", ".join(f"{k} = {v}" for k, v in item.symbols.items()) or "(none)"
            print(
                f"=== {item.example_id} ({values.split}, {example.variant}) ===\n--- prompt ---\n{item.prompt}\n"
                f"--- target ---\n{item.target}\n--- symbols ---\n{symbols}\n"
            )


def export(config: ConfigDict, values: flags.FlagValues) -> None:
    validate_data(config)
    if values.out is None:
        raise DataError("--out", None, None, "a JSONL file to write is required (see --help)")
    check_output_file(values.out, "--out")
    pairs = training_data(config.data)
    Path(values.out).parent.mkdir(parents=True, exist_ok=True)
    with open(values.out, "w", encoding="utf-8") as out:
        out.writelines(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs)
    print(f"wrote {len(pairs)} pairs ({config.data.n_train} examples) to {values.out}")


def report(config: ConfigDict, values: flags.FlagValues) -> None:
    """Exits 1 when any file or generator setting has more than 2% invalid oracle abstractions."""
    del values
    data_dir = Path(config.data.data_dir) if config.data.data_dir else default_data_dir()
    reports = []
    if data_dir is not None:
        folder = cladder.cladder_dir(data_dir)
        for variant in cladder.VARIANTS:
            try:
                path = cladder.question_file(folder, variant)
            except FileNotFoundError:
                continue
            reports.append(validity_report(cladder.load_cladder_file(path, variant), str(path)))
        pronto = prontoqa.prontoqa_dir(data_dir)
        if pronto != folder or not reports:  # a CLadder folder given directly holds no PrOntoQA files
            for path in sorted(pronto.glob("*.json")):
                reports.append(validity_report(prontoqa.load_prontoqa_file(path), str(path)))
    if config.data.data_dir and not reports:  # a folder the user named must hold something to report on
        if data_dir.is_dir():
            what = "holds no CLadder question file and no PrOntoQA .json"
        else:
            what = "is a file, not a folder" if data_dir.exists() else "not found"
        raise MissingFileError(f"config key 'data.data_dir': {str(data_dir)!r} {what}")
    for ontology, hops, seed in REPORT_GENERATOR_SETTINGS:
        records = generate_prontoqa(500, hops, ontology, True, seed)
        name = f"generator ontology={ontology} hops={hops} seed={seed}"
        reports.append(validity_report(prontoqa.examples_from_capt_records(records, name), name))
    for line in reports:
        print(line.line())
    if not all(r.invalid_rate <= 0.02 for r in reports):
        raise SystemExit(1)


COMMANDS = {
    "show": (cli.Command(__doc__, _show_flags, keys=(*DATA_KEYS, "data.intervention_seed", "eval.seed")), show),
    "export": (cli.Command(__doc__, _export_flags, keys=(*DATA_KEYS, "data.copies", "data.intervention_seed")), export),
    "report": (cli.Command(__doc__, keys=("data.data_dir",)), report),
}


def main(argv: list[str] | None = None) -> None:
    cli.run_group(__doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
