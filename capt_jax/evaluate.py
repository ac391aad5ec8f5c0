"""Two-stage CAPT evaluation on the ID and OOD test sets.

    python -m capt_jax.evaluate --config configs/NAME.py [--workdir W | --base-only] [--out DIR] [--config.k=v ...]

Per split: estimate each question's abstraction (eval.estimator), intervene with the training config's
data.mode (raw prompts for `null` and for the base model, and for questions without a usable estimate), answer
with the reasoner in large jit-compiled KV-cache batches, parse, and score. Writes results.json (accuracy with
its n and 95% Wilson interval, estimator metrics, and how many test questions the contamination guard
removed), predictions.jsonl (one line per question), a PNG chart, and prints a markdown table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from absl import flags

from capt_jax import checkpoint as ckpt
from capt_jax import cli
from capt_jax.config import ConfigDict, ConfigError, validate_eval
from capt_jax.data import (
    Abstraction,
    Example,
    TestSplit,
    intervene,
    leftover_names,
    parse_answer,
    questions_digest,
    test_examples,
    training_examples,
    training_questions,
)
from capt_jax.data.intervention import example_rng
from capt_jax.errors import CaptError
from capt_jax.estimate import Estimates, model_estimates, openai_completer, oracle_estimates
from capt_jax.generate import Sampling, generate
from capt_jax.lora import check_adapters, lora_scale
from capt_jax.model import ModelConfig
from capt_jax.outputs import check_output_dir
from capt_jax.pretrained import Pretrained, load_pretrained, resolve_model_dir
from capt_jax.stats import wilson_interval
from capt_jax.train import dotted, saved_settings

Reasoner = Callable[[list[str]], list[str]]  # prompts -> replies
Estimator = Callable[[list[Example]], Estimates]
METHOD_NAMES = {"null": "SFT", "random": "CAPT"}


# What an adapter's label and the `self` estimator's check read from the settings it was trained with.
TRAINED_KEYS = ("data.kind", "data.path", "data.dataset", "data.mode", "data.estimation_weight")


def mode_name(mode: str) -> str:
    return METHOD_NAMES.get(mode, f"ablation:{mode}")


# The data keys that select a run's training questions, and of them those that only say where the files are.
SPLIT_KEYS = (
    "data.variant",
    "data.n_train",
    "data.split_seed",
    "data.test_fraction",
    "data.prontoqa_num_examples",
    "data.prontoqa_hops",
    "data.prontoqa_ontology",
    "data.prontoqa_distractors",
    "data.prontoqa_seed",
    "data.source",
    "data.data_dir",
    "data.data_file",
)
LOCATION_KEYS = ("data.source", "data.data_dir", "data.data_file")


def trained_questions(config: ConfigDict, workdir: str) -> list[Example]:
    """The questions the workdir trained on, when `config` selects another training split (another file, seed or
    size): the test sets must lose those as well as the config's own. Rebuilt from the workdir's config.json and
    checked against the digest its checkpoint recorded. Empty when the config selects the workdir's own split, or
    when there is none to compare (the base model, another dataset, JSONL training data)."""
    saved = saved_settings(workdir)
    if saved is None or saved.get("data.kind") != "capt" or saved.get("data.dataset") != config.data.dataset:
        return []
    now = dotted(json.loads(config.to_json_best_effort()))
    differ = [key for key in SPLIT_KEYS if key in saved and key in now and saved[key] != now[key]]
    recorded = ckpt.read_meta(workdir)[1].get("training_questions")
    if recorded is None:  # a checkpoint from before the digest: the selecting keys decide, file locations aside
        differ = [key for key in differ if key not in LOCATION_KEYS]
        if differ:
            raise ConfigError(
                f"{workdir}: trained on other questions than the training split this config selects "
                f"({_differences(differ, saved, now)}), and its checkpoint predates the record of which, so its "
                "questions cannot be removed from the test sets. Evaluate it with its own data settings (its "
                "config.json)"
            )
        return []
    if recorded == training_questions(config.data):
        return []
    own = ConfigDict(config.data.to_dict(), type_safe=False)  # JSON gave lists for tuples, ints for floats
    for key, value in saved.items():
        name = key.removeprefix("data.")
        if key.startswith("data.") and name in own and key in SPLIT_KEYS:
            own[name] = tuple(value) if isinstance(value, list) else value
    try:
        examples = training_examples(own)
    except (CaptError, OSError, ValueError) as err:
        examples, why = [], f"its data settings fail here: {err}"
    else:
        why = "its data settings give other questions here (moved or changed files)"
    if not examples or questions_digest(examples) != recorded:
        shown = _differences(differ, saved, now) or "the files' contents"
        raise ConfigError(
            f"{workdir}: trained on other questions than the training split this config selects ({shown}), and "
            f"{why}, so they cannot be removed from the test sets. Evaluate it where its config.json's data "
            "settings find its training files"
        )
    print(
        f"note: {workdir} trained on other questions ({recorded}) than this config's training split; the test sets "
        "lose both",
        file=sys.stderr,
    )
    return examples


def _differences(keys: Sequence[str], saved: dict[str, Any], now: dict[str, Any]) -> str:
    return "; ".join(f"{k}: {saved[k]!r} there, {now[k]!r} here" for k in keys[:4])


def method_label(method: str, estimator: str | None) -> str:
    """A table row's name: the method and, when test prompts were abstracted, by whom. The oracle reads the data's
    own structure, so its rows say they are an upper bound wherever they are shown."""
    if not estimator:
        return method
    return f"{method} ({'oracle: upper bound' if estimator == 'oracle' else estimator})"


def trained_settings(workdir: str | None) -> dict[str, Any] | None:
    """TRAINED_KEYS of the workdir's config.json: how its adapter was trained, which the evaluating config need
    not repeat. None for the base model and for a workdir without config.json."""
    saved = None if workdir is None else saved_settings(workdir)
    return None if saved is None else {key: saved[key] for key in TRAINED_KEYS if key in saved}


def method_name(config: ConfigDict, base_only: bool, trained: dict[str, Any] | None = None) -> str:
    """The label's method: "SFT", "CAPT", "ablation:<mode>" (the test-time `config.data.mode`) or "base". An adapter
    trained otherwise than it is tested says how ("SFT, tested as CAPT", "CAPT, trained on prontoqa", "trained on
    pairs.jsonl, tested as CAPT"), so a table never credits a method with a model it did not train."""
    if base_only:
        return "base"
    tested = mode_name(config.data.mode)
    if not trained:
        return tested
    if trained.get("data.kind") == "jsonl":
        return f"trained on {Path(trained.get('data.path') or '?').name}, tested as {tested}"
    origin = mode_name(trained.get("data.mode", config.data.mode))
    name = tested if origin == tested else f"{origin}, tested as {tested}"
    dataset = trained.get("data.dataset", config.data.dataset)
    return name if dataset == config.data.dataset else f"{name}, trained on {dataset}"


def evaluation_sets(config: ConfigDict, trained_on: Sequence[Example] = ()) -> dict[str, TestSplit]:
    """The configured splits (only those are built), cleaned of `trained_on` too (a workdir's training questions,
    when the config selects others), each cut to eval.max_examples (0: all). A ConfigError when every one is
    skipped."""
    sets = test_examples(config.data, tuple(config.eval.splits))
    if trained_on and not config.data.keep_overlap:
        sets = {name: split.without(trained_on) for name, split in sets.items()}
    if all(split.skipped for split in sets.values()):  # nothing to score: said before a model loads or trains
        reasons = "; ".join(split.skipped for split in sets.values())
        raise ConfigError(f"config key 'eval.splits': no requested test split can be evaluated ({reasons})")
    for name, split in sets.items():
        # Said only when whole query types are gone, which changes what is scored; the counts are in results.json.
        if split.query_types_gone() and not split.skipped:
            print(split.guard_note(name), file=sys.stderr)
    cap = config.eval.max_examples or None
    return {name: dataclasses.replace(split, examples=split.examples[:cap]) for name, split in sets.items()}


def reasoner_prompts(
    examples: Sequence[Example], abstractions: Sequence[Abstraction | None], mode: str, seed: int, with_reasoning: bool
) -> tuple[list[str], int]:
    """The prompt each example is answered from, and how many fell back to the raw prompt (no usable estimate)."""
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


def score_split(examples: Sequence[Example], replies: Sequence[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(accuracy with n, 95% Wilson interval and parse failures, plus per-rung and per-query-type breakdowns
    where the data has them; one record per question: id, reply, parsed answer, correct)."""
    groups: dict[str, dict[str, list[bool]]] = {"rung": defaultdict(list), "query_type": defaultdict(list)}
    records = []
    for example, reply in zip(examples, replies, strict=True):
        parsed = parse_answer(reply, example.dataset)
        records.append({"id": example.id, "reply": reply, "parsed": parsed, "correct": parsed == example.answer})
        for key, group in groups.items():
            if example.meta.get(key) is not None:
                group[str(example.meta[key])].append(records[-1]["correct"])
    correct = sum(r["correct"] for r in records)
    unparseable = [r["id"] for r in records if r["parsed"] is None]
    low, high = wilson_interval(correct, len(records))
    result: dict[str, Any] = {
        "accuracy": correct / len(records) if records else 0.0,
        "n": len(records),
        "correct": correct,
        "ci95": [low, high],
        "parse_failures": len(unparseable),
        "unparseable_ids": unparseable,
    }
    for key, group in groups.items():
        if group:
            result[f"by_{key}"] = {k: {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in sorted(group.items())}
    return result, records


def estimator_metrics(examples: Sequence[Example], estimates: Estimates, fallbacks: int) -> dict[str, Any]:
    """How the first stage did: usable rate, fallbacks to the raw prompt, why estimates were unusable, how many
    usable ones had declared slots dropped or came from a reply whose JSON never closes, and, as a metric only,
    how many usable estimates still hold a gold name (never used to select or reject)."""
    reasons = Counter(p[0].split(":")[0] for p in estimates.problems if p)
    accepted_with_drops = sum(a is not None and bool(d) for a, d in zip(estimates.abstractions, estimates.dropped))
    accepted_cut_off = sum(a is not None and s for a, s in zip(estimates.abstractions, estimates.salvaged))
    gold_leftovers = sum(bool(leftover_names(a, e)) for a, e in zip(estimates.abstractions, examples) if a is not None)
    return {
        "estimator_valid_rate": estimates.valid_rate,
        "estimator_fallbacks": fallbacks,
        "estimator_attempts": sum(estimates.attempts),
        "estimator_problems": dict(reasons.most_common()),
        "estimator_accepted_with_drops": accepted_with_drops,
        "estimator_accepted_cut_off": accepted_cut_off,
        "estimator_gold_leftovers": gold_leftovers,
    }


def accuracy_by_path(records: Sequence[dict[str, Any]]) -> dict[str, float | int | None]:
    """Accuracy on the questions answered through an accepted estimate and on those answered from the raw prompt.
    The first stage chooses which is which, so the two are not random halves of the split."""
    split: dict[str, float | int | None] = {}
    for path, estimated in (("estimated", True), ("fallback", False)):
        correct = [r["correct"] for r in records if r["estimated"] == estimated]
        split[f"n_{path}"] = len(correct)
        split[f"accuracy_{path}"] = sum(correct) / len(correct) if correct else None
    return split


def evaluate_sets(
    sets: dict[str, TestSplit],
    estimate: Estimator,
    reasoner: Reasoner,
    mode: str,
    seed: int = 0,
    with_reasoning: bool = True,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Estimation -> intervention -> reasoning -> scores, for every split: (scores per split, one record per
    answered question with its split and prompt)."""
    results, predictions = {}, []
    for name, split in sets.items():
        if split.skipped:
            results[name] = {"skipped": split.skipped, "n": 0, "excluded_overlap": len(split.excluded_overlap)}
            continue
        examples = split.examples
        estimates = estimate(examples) if mode != "null" else Estimates.none(len(examples))
        prompts, fallbacks = reasoner_prompts(examples, estimates.abstractions, mode, seed, with_reasoning)
        results[name], records = score_split(examples, reasoner(prompts))
        results[name]["excluded_overlap"] = len(split.excluded_overlap)
        if split.excluded_by_query_type:
            results[name]["excluded_by_query_type"] = split.excluded_by_query_type
        if mode != "null":
            results[name].update(estimator_metrics(examples, estimates, fallbacks))
            for record, abstraction in zip(records, estimates.abstractions):
                record["estimated"] = abstraction is not None  # False: answered from the raw prompt
            results[name].update(accuracy_by_path(records))
        predictions += [{"split": name, "prompt": p, **r} for p, r in zip(prompts, records)]
    return results, predictions


def sampling(config: ConfigDict) -> Sampling:
    e = config.eval
    return Sampling(e.temperature, e.top_p, e.repetition_penalty)


def model_completer(model: Pretrained, max_new_tokens: int, batch_size: int):
    """A Completer over a local model: greedy first, then temperature-0.7 samples with a new seed per retry."""

    def complete(conversations, attempt: int) -> list[str]:
        sampling = Sampling() if attempt == 0 else Sampling(temperature=0.7, top_p=0.95)
        replies = generate(
            model, list(conversations), max_new_tokens, sampling, chat=True, batch_size=batch_size, seed=attempt
        )
        if note := replies.note("eval.estimator_max_new_tokens", max_new_tokens, "estimates"):
            print(note, file=sys.stderr)
        return replies

    return complete


def make_estimator(config: ConfigDict, base: Pretrained, tuned: Pretrained) -> Estimator:
    """eval.estimator -> a function from examples to their estimated abstractions."""
    e, form = config.eval, config.data.estimation_form
    if e.estimator == "oracle":
        return oracle_estimates
    shots: list[Example] = []
    if e.estimator in ("lm", "openai") and e.estimator_shots:
        shots = training_examples(config.data)[: e.estimator_shots]
    if e.estimator == "openai":
        complete = openai_completer(e.openai_base_url, e.openai_model, e.openai_api_key_env)
    else:
        model = tuned if e.estimator == "self" else (load_pretrained(e.estimator_model) if e.estimator_model else base)
        complete = model_completer(model, e.estimator_max_new_tokens, e.batch_size)
    return lambda examples: model_estimates(
        examples, complete, form, shots, e.estimator_retries, e.estimator_drop_unplaced, e.estimator_salvage_cut_off
    )


def load_reasoner_model(config: ConfigDict, workdir: str | None) -> tuple[Pretrained, Pretrained, dict[str, Any]]:
    """(base, reasoner, info): the reasoner has the workdir's latest adapter applied (none for --base-only):
    merged into a full-precision base, beside a quantized one (`Pretrained.with_adapters`). The adapters are
    checked against model.path's shapes before the base loads."""
    if workdir is not None:
        step, meta = ckpt.read_meta(workdir)
        adapters, _ = ckpt.restore_adapters(workdir, step)
        folder = resolve_model_dir(config.model.path)
        source = f"{ckpt.checkpoint_dir(workdir)}/{step} (trained on {meta['base_model']})"
        check_adapters(adapters, ModelConfig.from_pretrained_dir(folder), meta["lora"]["rank"], source, str(folder))
    base = load_pretrained(
        config.model.path,
        dtype=config.model.dtype,
        compute_dtype=config.model.compute_dtype,
        quantize=config.model.quantize,
        double_quant=config.model.double_quant,
    )
    if workdir is None:
        return base, base, {}
    tuned = base.with_adapters(adapters, lora_scale(meta["lora"]["rank"], meta["lora"]["alpha"]))
    return base, tuned, {"workdir": str(workdir), "step": step, "trained": trained_settings(workdir)}


def check_estimator(config: ConfigDict, base_only: bool, trained: dict[str, Any] | None = None) -> None:
    """`trained`: the adapter's own settings (`trained_settings`), which decide over the config's."""
    validate_eval(config)
    weight = (trained or {}).get("data.estimation_weight", config.data.estimation_weight)
    if config.eval.estimator == "self" and not base_only and weight <= 0:
        where = (
            "its workdir's config.json says" if trained and "data.estimation_weight" in trained else "the config says"
        )
        raise ConfigError(
            "config key 'eval.estimator': 'self' needs a model trained with data.estimation_weight > 0 "
            f"(the two-stage objective; {where} {weight}); use oracle, lm or openai otherwise"
        )


def cached_reasoner(model: Pretrained, config: ConfigDict, cache: dict[str, str] | None = None) -> Reasoner:
    """Answers prompts with `model`. With greedy decoding a reply is a function of its prompt, so `cache`
    (prompt -> reply) lets evaluations of one model through several estimators answer a repeated prompt once;
    with sampling every call decodes."""
    e = config.eval
    cache = cache if cache is not None and e.temperature == 0 else {}

    def reasoner(prompts: list[str]) -> list[str]:
        todo = list(dict.fromkeys(p for p in prompts if p not in cache))
        if todo:
            replies = generate(
                model, todo, e.max_new_tokens, sampling(config), chat=True, batch_size=e.batch_size, seed=e.seed
            )
            if note := replies.note("eval.max_new_tokens", e.max_new_tokens):
                print(note, file=sys.stderr)
            cache.update(zip(todo, replies))
        return [cache[p] for p in prompts]

    return reasoner


def evaluate_loaded(
    config: ConfigDict,
    sets: dict[str, TestSplit],
    base: Pretrained,
    reasoner_model: Pretrained,
    info: dict[str, Any],
    base_only: bool = False,
    cache: dict[str, str] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`evaluate` on test sets and models already in memory: (results, predictions)."""
    trained = info.get("trained")
    check_estimator(config, base_only, trained)
    mode = "null" if base_only else config.data.mode
    splits, predictions = evaluate_sets(
        sets,
        make_estimator(config, base, reasoner_model),
        cached_reasoner(reasoner_model, config, cache),
        mode,
        config.eval.seed,
        config.data.with_reasoning,
    )
    estimator = config.eval.estimator if mode != "null" else None
    method = method_name(config, base_only, trained)
    results = {
        "method": method,
        "label": method_label(method, estimator),
        "model": str(config.model.path),
        "dataset": config.data.dataset,
        "mode": mode,
        "estimator": estimator,
        "decoding": {k: config.eval[k] for k in ("temperature", "top_p", "repetition_penalty", "max_new_tokens")},
        "settings_key": settings_key(config, base_only),
        **info,
        "splits": splits,
    }
    return results, predictions


# Keys of those sections that cannot change a result: memory use, and where an API key is read from.
NOT_RESULT_KEYS = (("model", "remat"), ("eval", "openai_api_key_env"))


def settings_key(config: ConfigDict, base_only: bool) -> str:
    """A digest of all an evaluation's results depend on besides the checkpoint: the model, data and eval sections."""
    settings = {section: config[section].to_dict() for section in ("model", "data", "eval")}
    for section, key in NOT_RESULT_KEYS:
        settings[section].pop(key, None)
    settings["base_only"] = base_only
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finished_results(out: Path, config: ConfigDict, base_only: bool, step: int | None) -> dict[str, Any] | None:
    """The results already in `out` for this checkpoint step (None: the base model) and these settings; None when
    there are none, so that a changed setting (eval.max_examples, model.path, ...) is evaluated afresh. Results
    written before the settings were recorded are reused for their step, with a note."""
    file = out / "results.json"
    if not file.exists():
        return None
    results = json.loads(file.read_text())
    if results.get("step") != step:
        return None
    if "settings_key" not in results:
        print(f"note: {file} does not record its settings (older capt_jax); reused as it is, delete it to re-evaluate")
    elif results["settings_key"] != settings_key(config, base_only):
        return None
    if "method" in results:  # labels, unlike scores, follow the current code (older ones lacked the upper bound)
        results["label"] = method_label(results["method"], results.get("estimator"))
    return results


def evaluate(config: ConfigDict, workdir: str | None, base_only: bool = False) -> tuple[dict[str, Any], list[dict]]:
    """Everything `python -m capt_jax.evaluate` computes: (JSON-ready results, one record per question)."""
    check_estimator(config, base_only, None if base_only else trained_settings(workdir))
    trained_on = [] if base_only or workdir is None else trained_questions(config, workdir)
    sets = evaluation_sets(config, trained_on)  # data errors surface before any model loads
    base, reasoner_model, info = load_reasoner_model(config, None if base_only else workdir)
    return evaluate_loaded(config, sets, base, reasoner_model, info, base_only)


def cell(split: dict[str, Any] | None) -> str:
    """One table cell: accuracy with its 95% Wilson interval and n."""
    if split is None:
        return "-"
    if split.get("skipped"):
        return "skipped"
    low, high = split["ci95"]
    return f"{100 * split['accuracy']:.1f}% [{100 * low:.0f}, {100 * high:.0f}] (n={split['n']})"


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """Methods as rows (named with their estimator), splits as columns."""
    splits = list(dict.fromkeys(s for r in results for s in r["splits"]))
    lines = ["| method | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    for r in results:
        lines.append(f"| {r['label']} | " + " | ".join(cell(r["splits"].get(s)) for s in splits) + " |")
    return "\n".join(lines)


def plot(results: Sequence[dict[str, Any]], file: Path) -> Path:
    """Grouped bars with 95% Wilson intervals: accuracy per split, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(dict.fromkeys(s for r in results for s in r["splits"]))
    width = 0.8 / max(len(results), 1)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(splits), 3.6))
    for i, r in enumerate(results):
        xs = [j + (i - (len(results) - 1) / 2) * width for j in range(len(splits))]
        shown = [r["splits"].get(s, {}) for s in splits]
        ys = [100 * s["accuracy"] if "accuracy" in s else 0 for s in shown]
        errors = [  # clipped at 0: an interval that touches its estimate leaves a rounding-sized negative bar
            [max(0.0, y - 100 * s["ci95"][0]) if "ci95" in s else 0 for s, y in zip(shown, ys)],
            [max(0.0, 100 * s["ci95"][1] - y) if "ci95" in s else 0 for s, y in zip(shown, ys)],
        ]
        bars = ax.bar(xs, ys, width, yerr=errors, capsize=2, label=r["label"])
        ax.bar_label(bars, fmt="%.0f", fontsize=8, label_type="center")
    ax.set_xticks(range(len(splits)), splits)
    ax.set_ylabel("accuracy (%), 95% interval")
    ax.set_ylim(0, 105)
    ax.axhline(50, color="grey", linewidth=0.6, linestyle=":")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{results[0]['dataset']}: accuracy by test split" if results else "")
    fig.tight_layout()
    file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(file, dpi=120)
    plt.close(fig)
    return file


def write_results(results: dict[str, Any], predictions: Sequence[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """results.json, predictions.jsonl and accuracy.png in out_dir; returns the JSON and PNG paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_file = out_dir / "results.json"
    with open(out_dir / "predictions.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)
    json_file.write_text(json.dumps(results, indent=2))  # last: its presence marks a finished evaluation
    return json_file, plot([results], out_dir / "accuracy.png")


def define_flags(values: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "workdir", None, "training workdir whose latest checkpoint to evaluate (default: config's)", flag_values=values
    )
    flags.DEFINE_bool("base-only", False, "evaluate the base model on raw prompts", flag_values=values)
    flags.DEFINE_string("out", None, "output folder (default: WORKDIR/eval, or WORKDIR/eval_base)", flag_values=values)


COMMAND = cli.Command(
    __doc__,
    define_flags,
    keys=(
        "workdir",
        "model.path",
        "model.quantize",
        "model.double_quant",
        "data.dataset",
        "data.mode",
        "data.keep_overlap",
        "eval.estimator",
        "eval.splits",
        "eval.max_examples",
        "eval.max_new_tokens",
        "eval.temperature",
        "eval.top_p",
        "eval.repetition_penalty",
        "eval.batch_size",
    ),
)


def run_command(config: ConfigDict, values: flags.FlagValues) -> None:
    base_only = values["base-only"].value
    if base_only and values.workdir:
        raise ConfigError("--workdir and --base-only exclude each other: the base model has no checkpoint")
    workdir = values.workdir or config.workdir
    out = Path(values.out or Path(workdir) / ("eval_base" if base_only else "eval"))
    check_output_dir(out, "--out" if values.out else "--out (by default the workdir's eval folder)")
    results, predictions = evaluate(config, None if base_only else workdir, base_only)
    json_file, png = write_results(results, predictions, out)
    print(markdown_table([results]))
    print(f"\nresults: {json_file}\nplot:    {png}")


def main(argv: list[str] | None = None) -> None:
    cli.run(COMMAND, run_command, argv)


if __name__ == "__main__":
    main()
