"""CAPT vs SFT with seeds and intervals: train every (method, seed), evaluate each on every split, summarise.

    python -m capt_jax.experiment --config C --methods base,sft,capt[,order,original,symbol] --seeds 0,1,2
        [--estimators oracle,self,lm] [--workdir W] [--config.key=value ...]

Every trained method runs the config as it is but for `data.mode` (so they share model, budget and objective;
with the two-stage objective every method also learns estimation). A seed sets the LoRA init, batch order and
dropout (`seed`), the training letters (`data.intervention_seed`) and the test letters (`eval.seed`). CAPT is
evaluated once per estimator, an ablation through the first one listed; `base` and `sft` answer raw prompts.
Each (method, seed) trains in W/<method>/seed_<s>/ and evaluates into its eval_<estimator>/ folder, so a rerun
resumes training and reuses finished evaluations. The results:

* W/predictions.jsonl: one line per answered question (method, estimator, seed, split, id, prompt, reply, ...);
* W/summary.json: rows {method, estimator, split, n, seeds, accuracy_mean, ci_low, ci_high};
* W/paired.json: CAPT and each ablation (per estimator) vs SFT, and CAPT vs each ablation through the same
  estimator, on every split: {split, a, b, seeds, a_better, b_better, p_value, test, difference: {points_mean,
  ci_low, ci_high}} (A minus B accuracy, in points);
* W/gaps.json: each model's ID minus OOD accuracy, and the same pairs' differences of gaps, in points with
  intervals: {label, method, estimator, split, seeds, points_mean, ci_low, ci_high, questions: paired or independent};
* W/estimators.json: per model estimator and split, the rate of estimates passing the gold-free check;
* W/summary.md, W/accuracy.png (bars with 95% intervals) and W/loss.png (training loss per trained method);
* W/timing.json: seconds of training and of each evaluation per cell, summed over invocations, kept after each cell.

`--report` trains and evaluates nothing: it summarises the evaluations already finished (each row over the seeds
it has), to read a running experiment or one stopped before its grid was done.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags
from tqdm.auto import tqdm

from capt_jax import checkpoint as ckpt
from capt_jax import cli
from capt_jax.config import ConfigDict, ConfigError, validate, validate_attention
from capt_jax.data import TestSplit
from capt_jax.errors import MissingFileError
from capt_jax.evaluate import (
    check_estimator,
    evaluate_loaded,
    evaluation_sets,
    finished_results,
    load_reasoner_model,
    method_label,
    write_results,
)
from capt_jax.outputs import check_output_dir
from capt_jax.stats import bootstrap_contrast, bootstrap_interval, paired_sign_test

METHOD_MODES = {
    "base": None,
    "sft": "null",
    "capt": "random",
    "order": "order",
    "original": "original",
    "symbol": "symbol",
}
RAW_PROMPT_METHODS = ("base", "sft")  # the rest train on intervened abstractions and are each compared with SFT
INTERVAL = (
    "95% percentile interval of a two-level bootstrap (2000 replicates): seeds and questions each redrawn "
    "with replacement, one question draw shared by all seeds"
)
GAPS = (
    "a model's ID accuracy minus its accuracy on the split, mean over the seeds; \"A minus B\" is A's gap minus "
    "B's: CAPT's or an ablation's minus SFT's, and CAPT's minus an ablation's through the same estimator (CAPT "
    "claims negative ones), over the seeds all four evaluations have, seed s of each paired; 95% interval of the "
    'two-level bootstrap. "questions" says how it drew the split\'s questions: '
    "\"paired\" where they are the ID questions' refills, one for one with the same ids and answers (PrOntoQA's "
    'OOD sets, CLadder\'s anticommonsense file), so that each draw takes a question with its refill; "independent" '
    "otherwise"
)
PAIRED_TEST = (
    "exact two-sided sign test over questions: a question favours a method when its correct count, summed over "
    "the seeds both methods have, is higher; McNemar's test at one seed. It holds the trained models fixed, so "
    "its p-value covers the sampling of questions, not the seed-to-seed variation the intervals include"
)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One trained (or base) model of the grid."""

    method: str
    seed: int
    workdir: Path

    @property
    def trained(self) -> bool:
        return METHOD_MODES[self.method] is not None


def parse_list(text: str, allowed: Sequence[str] | None, flag: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    bad = sorted(set(items) - set(allowed)) if allowed is not None else []
    if not items or bad or len(set(items)) < len(items):
        raise ConfigError(
            f"{flag}: {text!r} must be a comma-separated list of distinct items"
            + (f" among {list(allowed)}" if allowed else "")
        )
    return items


def cell_config(config: ConfigDict, cell: Cell, estimator: str | None) -> ConfigDict:
    """The run's config for one cell: its mode, seeds and workdir (and estimator, for evaluation)."""
    c = ConfigDict(config.to_dict())
    c.data.mode = METHOD_MODES[cell.method] or "null"
    c.seed = c.data.intervention_seed = c.eval.seed = cell.seed
    c.workdir = str(cell.workdir)
    if estimator is not None:
        c.eval.estimator = estimator
    return c


def estimators_of(cell: Cell, estimators: Sequence[str]) -> list[str | None]:
    """CAPT goes through every estimator and an ablation through the first (it isolates the intervention, not the
    first stage); base and SFT answer raw prompts."""
    if cell.method in RAW_PROMPT_METHODS:
        return [None]
    return list(estimators) if cell.method == "capt" else [estimators[0]]


def eval_dir(cell: Cell, estimator: str | None) -> Path:
    return cell.workdir / f"eval_{estimator or 'raw'}"


def checkpoint_step(cell: Cell) -> int | None:
    """The step of the cell's latest checkpoint; None before its first."""
    try:
        return ckpt.read_meta(str(cell.workdir))[0]
    except ckpt.CheckpointError:
        return None


def run_cell(
    config: ConfigDict,
    cell: Cell,
    estimators: Sequence[str],
    sets: dict[str, TestSplit],
    timing: dict[str, float],
    cache: dict[str, str],
    report_only: bool = False,
) -> list[tuple[str | None, dict[str, Any], list[dict[str, Any]]]]:
    """Train the cell's model (resuming), then evaluate it through each of its estimators, reusing finished ones;
    with `report_only`, only the finished evaluations of the latest checkpoint. `timing` gains the seconds spent
    (summed with earlier invocations'); `cache` holds this model's greedy replies by prompt (`cached_reasoner`)."""
    from capt_jax.train import train

    step = checkpoint_step(cell) if cell.trained else None
    if cell.trained and not report_only:
        started, before = time.perf_counter(), step
        train(cell_config(config, cell, None))
        step = checkpoint_step(cell)
        if step != before:  # a finished cell only reloads: that is not training time
            key = f"{cell.method}/seed_{cell.seed}/train_s"
            timing[key] = timing.get(key, 0.0) + time.perf_counter() - started
    outputs, models = [], None
    for estimator in estimators_of(cell, estimators):
        out = eval_dir(cell, estimator)
        c = cell_config(config, cell, estimator)
        results = finished_results(out, c, not cell.trained, step)
        predictions = read_predictions(out / "predictions.jsonl") if results is not None else []
        if results is not None and not answers_sets(predictions, sets):
            then = "left out of the report" if report_only else "re-evaluating"
            print(f"note: {out}'s predictions do not answer the current test sets; {then}", file=sys.stderr)
            results = None
        if results is None and report_only:
            continue
        if results is None:
            began = time.perf_counter()
            models = models or load_reasoner_model(c, str(cell.workdir) if cell.trained else None)
            base, reasoner, info = models
            results, predictions = evaluate_loaded(c, sets, base, reasoner, info, not cell.trained, cache)
            write_results(results, predictions, out)
            key = f"{cell.method}/seed_{cell.seed}/eval_{estimator or 'raw'}_s"
            timing[key] = timing.get(key, 0.0) + time.perf_counter() - began
        outputs.append((estimator, results, [p for p in predictions if p["split"] in sets]))
    return outputs


def finished_base_replies(config: ConfigDict, cells: Sequence[Cell], sets: dict[str, TestSplit]) -> dict[str, str]:
    """prompt -> reply of every finished base evaluation made under today's settings for today's test sets.
    `cached_reasoner` reads them only when decoding is greedy, where a reply is a function of its prompt."""
    replies: dict[str, str] = {}
    for cell in cells:
        out = eval_dir(cell, None)
        results = None if cell.trained else finished_results(out, cell_config(config, cell, None), True, None)
        if results is None or "settings_key" not in results:  # older results do not say how they were decoded
            continue
        predictions = read_predictions(out / "predictions.jsonl")
        if answers_sets(predictions, sets):
            replies.update((p["prompt"], p["reply"]) for p in predictions)
    return replies


def read_predictions(file: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in file.read_text().splitlines()] if file.exists() else []


def answers_sets(predictions: list[dict[str, Any]], sets: dict[str, TestSplit]) -> bool:
    """Whether an earlier evaluation's predictions answer exactly the current test questions of every split.
    The settings digest cannot see a change of the data code (a guard or abstraction that now keeps other
    questions), and the summary finds each question's answer by id. Splits skipped now are ignored."""
    answered: dict[str, list[str]] = {}
    for p in predictions:
        answered.setdefault(p["split"], []).append(p["id"])
    return all(sorted(answered.get(name, [])) == sorted(e.id for e in split.examples) for name, split in sets.items())


def outcomes(rows: list[dict[str, Any]], seeds: Sequence[int], ids: Sequence[str]) -> np.ndarray:
    """[seeds, questions] of 0/1 for one (method, estimator, split), questions in test-set order."""
    table = {(r["seed"], r["id"]): r["correct"] for r in rows}
    return np.array([[int(table[(seed, i)]) for i in ids] for seed in seeds])


def summarise(
    predictions: list[dict[str, Any]], sets: dict[str, TestSplit]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(summary rows with bootstrap intervals, paired tests of every `compared_models` pair on every split, OOD
    gaps).

    Each row is over the seeds its predictions have; a paired test over the seeds both sides have, with the
    accuracy difference's own bootstrap interval (two methods' separate intervals can overlap where the interval
    of their difference excludes 0)."""
    groups: dict[tuple[str, str | None, str], list[dict[str, Any]]] = {}
    for p in predictions:
        groups.setdefault((p["method"], p["estimator"], p["split"]), []).append(p)
    ids = {name: [e.id for e in split.examples] for name, split in sets.items()}
    rows, matrices = [], {}
    for (method, estimator, split), group in groups.items():
        seeds = sorted({p["seed"] for p in group})
        matrix = outcomes(group, seeds, ids[split])
        matrices[(method, estimator, split)] = dict(zip(seeds, matrix))
        low, high = bootstrap_interval(matrix)
        rows.append(
            {
                "method": method,
                "estimator": estimator,
                "split": split,
                "n": matrix.shape[1],
                "seeds": seeds,
                "accuracy_mean": float(matrix.mean()),
                "ci_low": low,
                "ci_high": high,
            }
        )
    drawn_with = {name: question_draw(name, sets) for name in sets}
    paired = []
    for a, b in compared_models(matrices):
        for split in sets:
            first, second = matrices.get((*a, split), {}), matrices.get((*b, split), {})
            if common := sorted(set(first) & set(second)):
                test = paired_sign_test(np.array([first[s] for s in common]), np.array([second[s] for s in common]))
                difference = contrast(matrices, [(*a, split, 1.0), (*b, split, -1.0)], drawn_with)
                label_a, label_b = method_label(*a), method_label(*b)
                paired.append(
                    {"split": split, "a": label_a, "b": label_b, "seeds": common, **test, "test": PAIRED_TEST}
                    | {"difference": {k: difference[k] for k in ("points_mean", "ci_low", "ci_high")}}
                )
    return rows, paired, ood_gaps(matrices, drawn_with)


def compared_models(
    matrices: dict[tuple[str, str | None, str], dict[int, np.ndarray]],
) -> list[tuple[tuple[str, str | None], tuple[str, str | None]]]:
    """The (A, B) pairs of models that the paired tests and the gap differences compare: CAPT and every ablation
    (per estimator) against SFT, and CAPT against every ablation through the same estimator, since the paper's
    ablations claim that random letters keep the OOD gap smaller than fixed letters, names or literal symbols."""
    models = list(dict.fromkeys((method, estimator) for method, estimator, _ in matrices))
    trained = [model for model in models if model[0] not in RAW_PROMPT_METHODS]
    pairs = [(model, ("sft", None)) for model in trained if ("sft", None) in models]
    return pairs + [(("capt", e), (m, e)) for m, e in trained if m != "capt" and ("capt", e) in models]


def question_draw(name: str, sets: dict[str, TestSplit]) -> str:
    """The question set a split's bootstrap draws come from: the ID set's where the split's questions carry the ID
    questions' ids and answers in the same order, so that each is a refill of its ID twin (PrOntoQA's OOD sets,
    CLadder's anticommonsense file) and their outcomes are paired; else its own."""

    def keys(split: TestSplit) -> list[tuple[str, str]]:
        return [(e.id, e.answer) for e in split.examples]

    return "id" if "id" in sets and keys(sets[name]) == keys(sets["id"]) else name


def ood_gaps(
    matrices: dict[tuple[str, str | None, str], dict[int, np.ndarray]], drawn_with: dict[str, str]
) -> list[dict[str, Any]]:
    """Each model's ID accuracy minus its accuracy on every other split, and the difference of gaps of every
    `compared_models` pair, with the two-level bootstrap interval over the seeds they share. CAPT claims a smaller
    gap than SFT and than each ablation.
    `drawn_with` names each split's question draw (`question_draw`): a split drawn with the ID set is paired."""
    gaps = []
    for method, estimator, split in matrices:
        if split != "id" and (gap := contrast(matrices, gap_parts((method, estimator), split), drawn_with)):
            label = method_label(method, estimator)
            gaps.append({"label": label, "method": method, "estimator": estimator, "split": split, **gap})
    splits = [split for split in dict.fromkeys(split for _, _, split in matrices) if split != "id"]
    for (method, estimator), (other, other_estimator) in compared_models(matrices):
        for split in splits:
            parts = gap_parts((method, estimator), split) + gap_parts((other, other_estimator), split, -1.0)
            if difference := contrast(matrices, parts, drawn_with):
                label = f"{method_label(method, estimator)} minus {method_label(other, other_estimator)}"
                gaps.append(
                    {
                        "label": label,
                        "method": f"{method}-{other}",
                        "estimator": estimator,
                        "split": split,
                        **difference,
                    }
                )
    return gaps


def gap_parts(model: tuple[str, str | None], split: str, sign: float = 1.0) -> list[tuple[str, str | None, str, float]]:
    """`contrast` parts of `sign` times the model's ID accuracy minus its accuracy on `split`."""
    method, estimator = model
    return [(method, estimator, "id", sign), (method, estimator, split, -sign)]


def contrast(
    matrices: dict[tuple[str, str | None, str], dict[int, np.ndarray]],
    parts: list[tuple[str, str | None, str, float]],
    drawn_with: dict[str, str],
) -> dict[str, Any] | None:
    """sum(weight * accuracy) over (method, estimator, split, weight) parts, over the seeds every part has, with
    its bootstrap interval (splits drawn with one question set share its draws); None when a part is missing or
    no seed is shared."""
    if any((m, e, s) not in matrices for m, e, s, _ in parts):
        return None
    seeds = sorted(set.intersection(*(set(matrices[(m, e, s)]) for m, e, s, _ in parts)))
    if not seeds:
        return None
    blocks = [(w, np.array([matrices[(m, e, s)][seed] for seed in seeds]), drawn_with[s]) for m, e, s, w in parts]
    low, high = bootstrap_contrast(blocks)
    mean = sum(w * float(block.mean()) for w, block, _ in blocks)
    questions = "paired" if len({name for _, _, name in blocks}) == 1 else "independent"
    return {
        "seeds": seeds,
        "points_mean": 100 * mean,
        "ci_low": 100 * low,
        "ci_high": 100 * high,
        "questions": questions,
    }


def estimator_rows(evaluations: list[tuple[str, str | None, int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """How often a model's estimate passed the gold-free check, per (method, estimator, split), over the seeds;
    with how many accepted estimates had declared slots dropped, came from a reply whose JSON never closes (each
    None where an evaluation predates its count) and still hold a gold name. The oracle is exact by construction:
    left out."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for method, estimator, seed, results in evaluations:
        if estimator not in (None, "oracle"):
            for split, found in results["splits"].items():
                groups.setdefault((method, estimator, split), []).append({"seed": seed, **found})
    return [
        {
            "method": method,
            "estimator": estimator,
            "split": split,
            "seeds": sorted(f["seed"] for f in found),
            "valid_rate_mean": float(np.mean([f["estimator_valid_rate"] for f in found])),
            "gold_leftovers": int(sum(f["estimator_gold_leftovers"] for f in found)),
            "accepted_with_drops": count_over_seeds(found, "estimator_accepted_with_drops"),
            "accepted_cut_off": count_over_seeds(found, "estimator_accepted_cut_off"),
            **{key: value for path in ("estimated", "fallback") for key, value in pooled_accuracy(found, path).items()},
        }
        for (method, estimator, split), found in groups.items()
    ]


def count_over_seeds(found: list[dict[str, Any]], key: str) -> int | None:
    """`key`'s count summed over the seeds, or None when an evaluation predates it."""
    return int(sum(f[key] for f in found)) if all(key in f for f in found) else None


def pooled_accuracy(found: list[dict[str, Any]], path: str) -> dict[str, float | int | None]:
    """Accuracy over the seeds on the questions answered through an accepted estimate (`path` "estimated") or from
    the raw prompt ("fallback"); None where an evaluation predates the count (older capt_jax) or none was."""
    if any(f"n_{path}" not in f for f in found):
        return {f"n_{path}": None, f"accuracy_{path}": None}
    n = sum(f[f"n_{path}"] for f in found)
    correct = sum(f[f"n_{path}"] * (f[f"accuracy_{path}"] or 0.0) for f in found)
    return {f"n_{path}": n, f"accuracy_{path}": correct / n if n else None}


def markdown(
    rows: list[dict[str, Any]],
    paired: list[dict[str, Any]],
    gaps: list[dict[str, Any]],
    estimates: list[dict[str, Any]],
    splits: Sequence[str],
    note: str,
) -> str:
    """summary.md: accuracy with intervals per (method, estimator) and split, the paired tests, the OOD gaps,
    the estimators."""
    labels = list(dict.fromkeys((r["method"], r["estimator"]) for r in rows))
    by_key = {(r["method"], r["estimator"], r["split"]): r for r in rows}
    n = {s: next((r["n"] for r in rows if r["split"] == s), 0) for s in splits}
    cells = []
    for method, estimator in labels:
        seeds = sorted(
            {seed for r in rows if r["method"] == method and r["estimator"] == estimator for seed in r["seeds"]}
        )
        found = [by_key.get((method, estimator, s)) for s in splits]
        accuracies = [
            f"{100 * r['accuracy_mean']:.1f} [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]" if r else "-"
            for r in found
        ]
        cells.append([method_label(method, estimator), ",".join(map(str, seeds)), *accuracies])
    header = ["method", "seeds", *(f"{s} (n={n[s]})" for s in splits)]
    lines = table(header, cells, f"Accuracy in %, mean over the seeds; {INTERVAL}.")
    if paired:
        header = ["split", "A", "B", "seeds", "A minus B, points", "questions favouring A", "favouring B", "p"]
        cells = [
            [p["split"], p["a"], p["b"], seed_list(p), points(p["difference"])]
            + [p["a_better"], p["b_better"], f"{p['p_value']:.3g}"]
            for p in paired
        ]
        lines += table(header, cells, f"Paired test: {PAIRED_TEST}. A minus B: {INTERVAL}, over the seeds both have.")
    if gaps:
        header = ["method", "split", "seeds", "questions", "ID minus split accuracy, points"]
        cells = [[g["label"], g["split"], seed_list(g), g["questions"], points(g)] for g in gaps]
        lines += table(header, cells, f"OOD gaps: {GAPS}.")
    if estimates:
        header = ["method", "estimator", "split", "seeds", "valid estimates", "accepted with slots dropped"]
        header += ["accepted from a cut-off reply", "accepted with a gold name"]
        header += ["accuracy through an estimate", "accuracy from the raw prompt"]
        cells = [
            [e["method"], e["estimator"], e["split"], seed_list(e), f"{100 * e['valid_rate_mean']:.1f}%"]
            + ["-" if e[key] is None else e[key] for key in ("accepted_with_drops", "accepted_cut_off")]
            + [e["gold_leftovers"]]
            + [path_cell(e, "estimated"), path_cell(e, "fallback")]
            for e in estimates
        ]
        paths = (
            "Questions without a valid estimate are answered as raw prompts. Slots dropped: declared slots that "
            "placed nothing in the template (eval.estimator_drop_unplaced). Cut off: replies whose JSON never "
            "closes (stopped at eval.estimator_max_new_tokens), read by their complete entries "
            "(eval.estimator_salvage_cut_off). The accuracies per path are pooled "
            "over the seeds (n: question-seed pairs); the first stage decides which questions take which path, so "
            "they are not random halves of the split."
        )
        lines += table(header, cells, paths)
    return "\n".join(lines + [note])


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], note: str) -> list[str]:
    """Markdown lines of one table and the note under it."""
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return [*lines, *("| " + " | ".join(map(str, row)) + " |" for row in rows), "", note, ""]


def points(difference: dict[str, Any]) -> str:
    """A difference in points with its interval."""
    return f"{difference['points_mean']:+.1f} [{difference['ci_low']:+.1f}, {difference['ci_high']:+.1f}]"


def seed_list(row: dict[str, Any]) -> str:
    return ",".join(map(str, row["seeds"]))


def path_cell(row: dict[str, Any], path: str) -> str:
    accuracy = row[f"accuracy_{path}"]
    return "-" if accuracy is None else f"{100 * accuracy:.1f}% (n={row[f'n_{path}']})"


def plot_accuracy(rows: list[dict[str, Any]], splits: Sequence[str], file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys((r["method"], r["estimator"]) for r in rows))
    by_key = {(r["method"], r["estimator"], r["split"]): r for r in rows}
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(2 + 2 * len(splits), 3.8))
    for i, (method, estimator) in enumerate(labels):
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(splits))]
        found = [by_key.get((method, estimator, s)) for s in splits]
        ys = [100 * r["accuracy_mean"] if r else 0 for r in found]
        low = [max(0.0, y - 100 * r["ci_low"]) if r else 0 for r, y in zip(found, ys)]
        high = [max(0.0, 100 * r["ci_high"] - y) if r else 0 for r, y in zip(found, ys)]
        ax.bar(xs, ys, width, yerr=[low, high], capsize=2, label=method_label(method, estimator))
    ax.set_xticks(range(len(splits)), splits)
    ax.set_ylabel("accuracy (%), 95% bootstrap interval")
    ax.set_ylim(0, 105)
    ax.axhline(50, color="grey", linewidth=0.6, linestyle=":")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(file, dpi=120)
    plt.close(fig)


def plot_losses(cells: Sequence[Cell], file: Path) -> None:
    """Training loss per step, one line per method (mean over its seeds); no file when nothing trained."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, list[dict[int, float]]] = {}
    for cell in cells:
        log = cell.workdir / "metrics.jsonl"
        if cell.trained and log.exists():
            points = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            curves.setdefault(cell.method, []).append({p["step"]: p["loss"] for p in points if "loss" in p})
    if not curves:  # a grid of the base model alone trains nothing
        return
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for method, runs in curves.items():
        steps = sorted(set.intersection(*(set(run) for run in runs)))
        ax.plot(steps, [np.mean([run[s] for run in runs]) for s in steps], label=f"{method} ({len(runs)} seeds)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(file, dpi=120)
    plt.close(fig)


def run_experiment(
    config: ConfigDict,
    methods: Sequence[str],
    seeds: Sequence[int],
    estimators: Sequence[str],
    workdir: Path,
    report_only: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The whole grid, resumable (or, with `report_only`, its finished evaluations); returns (summary rows, paired
    tests) and writes every file under `workdir`."""
    for estimator in estimators:
        check_estimator(cell_config(config, Cell("capt", seeds[0], workdir), estimator), base_only=False)
    cells = [Cell(m, s, workdir / m / f"seed_{s}") for m in methods for s in seeds]
    trained = [cell for cell in cells if cell.trained]
    for cell in trained:  # a training setting that cannot run fails now, not after the base model's evaluation
        validate(cell_config(config, cell, None))
    if trained:
        validate_attention(config)
    sets = evaluation_sets(config)  # data errors surface before anything trains
    skipped = {name: found.skipped for name, found in sets.items() if found.skipped}
    for name, reason in skipped.items():
        print(f"note: split {name} is skipped: {reason}", file=sys.stderr)
    sets = {name: found for name, found in sets.items() if not found.skipped}
    workdir.mkdir(parents=True, exist_ok=True)
    timing_file = workdir / "timing.json"
    timing: dict[str, float] = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    predictions, evaluations = [], []
    # One reply cache per model. The base model is the same in every seed's cell, so its cache starts with the
    # replies of its evaluations that finished in earlier invocations: a grid resumed or extended seed by seed
    # answers each base prompt once, not once per invocation.
    caches: dict[str, dict[str, str]] = {"base": finished_base_replies(config, cells, sets)}
    for cell in tqdm(cells, desc="report" if report_only else "experiment", unit="model", dynamic_ncols=True):
        cache = caches.setdefault("base" if not cell.trained else str(cell.workdir), {})
        for estimator, results, cell_predictions in run_cell(
            config, cell, estimators, sets, timing, cache, report_only
        ):
            evaluations.append((cell.method, estimator, cell.seed, results))
            predictions += [
                {"method": cell.method, "estimator": estimator, "seed": cell.seed, **p} for p in cell_predictions
            ]
        if not report_only:
            timing_file.write_text(json.dumps(timing, indent=2))
    if not predictions:
        raise ConfigError(f"{workdir}: no finished evaluation of {list(methods)} x seeds {list(seeds)} to report")
    with open(workdir / "predictions.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)
    rows, paired, gaps = summarise(predictions, sets)
    (workdir / "summary.json").write_text(json.dumps(rows, indent=2))
    (workdir / "paired.json").write_text(json.dumps(paired, indent=2))
    (workdir / "gaps.json").write_text(json.dumps(gaps, indent=2))
    estimates = estimator_rows(evaluations)
    (workdir / "estimators.json").write_text(json.dumps(estimates, indent=2))
    excluded = {name: len(found.excluded_overlap) for name, found in sets.items()}
    note = f"Test questions removed by the contamination guard, per split: {excluded}."
    note += "".join(f" Split {name} is skipped: {reason}." for name, reason in skipped.items())
    (workdir / "summary.md").write_text(markdown(rows, paired, gaps, estimates, list(sets), note) + "\n")
    plot_accuracy(rows, list(sets), workdir / "accuracy.png")
    plot_losses(cells, workdir / "loss.png")
    return rows, paired


def define_flags(values: flags.FlagValues) -> None:
    flags.DEFINE_string("methods", "base,sft,capt", f"comma-separated, from {list(METHOD_MODES)}", flag_values=values)
    flags.DEFINE_string("seeds", "0,1,2", "comma-separated integers", flag_values=values)
    flags.DEFINE_string(
        "estimators", "oracle", "oracle,self,lm,openai: CAPT goes through each, ablations the first", flag_values=values
    )
    flags.DEFINE_string("workdir", None, "default: the config's workdir", flag_values=values)
    flags.DEFINE_bool(
        "report", False, "train and evaluate nothing: summarise the evaluations already finished", flag_values=values
    )


COMMAND = cli.Command(
    __doc__,
    define_flags,
    keep_freed_memory=True,
    keys=(
        "workdir",
        "model.path",
        "model.quantize",
        "model.double_quant",
        "data.dataset",
        "data.estimation_weight",
        "train.max_steps",
        "train.learning_rate",
        "eval.max_examples",
        "eval.max_new_tokens",
        "eval.temperature",
    ),
)


def run_command(config: ConfigDict, values: flags.FlagValues) -> None:
    methods = parse_list(values.methods, tuple(METHOD_MODES), "--methods")
    estimators = parse_list(values.estimators, ("oracle", "lm", "openai", "self"), "--estimators")
    seed_items = parse_list(values.seeds, None, "--seeds")
    try:
        seeds = [int(s) for s in seed_items]
    except ValueError as e:
        raise ConfigError(f"--seeds: {values.seeds!r} must be comma-separated integers") from e
    if min(seeds) < 0:
        raise ConfigError(f"--seeds: {values.seeds!r} must be integers >= 0")
    workdir = Path(values.workdir or config.workdir)
    check_output_dir(workdir, "--workdir" if values.workdir else "--config.workdir")
    if values.report and not workdir.is_dir():
        raise MissingFileError(f"{workdir}: no experiment here to report on; run it first, without --report")
    run_experiment(config, methods, seeds, estimators, workdir, values.report)
    print((workdir / "summary.md").read_text())
    names = ["summary.json", "paired.json", "gaps.json", "estimators.json", "predictions.jsonl", "accuracy.png"]
    names += ["loss.png"]
    print(f"files in {workdir}: " + ", ".join(name for name in [*names, "timing.json"] if (workdir / name).exists()))


def main(argv: list[str] | None = None) -> None:
    cli.run(COMMAND, run_command, argv)


if __name__ == "__main__":
    main()
