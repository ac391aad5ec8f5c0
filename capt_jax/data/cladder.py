"""CLadder loading: question files joined with causal models and story phrase tables.

Every CLadder prompt is generated from phrase tables (one per story) that list
every wording of every variable value. The loader keeps, per question, the
wordings that can occur in its text, so the oracle abstraction can substitute
them exactly. Anti-commonsense questions replace one variable's wordings with
an entry of `anticommonsense.yml`; the loader applies that replacement the way
the CLadder generator does (only for wordings the story defines, with the
story's subject noun and its plural).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from capt_jax.errors import MissingFileError

from .example import DataError, Example, ListIndex, require, require_str
from .files import read_json, read_yaml_mapping

VARIANTS = ("commonsense", "anticommonsense", "nonsense")
VARIANT_ALIASES = {
    "commonsense": "commonsense",
    "easy": "commonsense",
    "id": "commonsense",
    "anticommonsense": "anticommonsense",
    "anti": "anticommonsense",
    "nonsense": "nonsense",
    "noncommonsense": "nonsense",
    "non": "nonsense",
}
# Question files per variant: the v1 release names first, then the shared-data layout.
QUESTION_FILES = {
    "commonsense": ("cladder-v1-q-commonsense.json", "test-generate-easy.json"),
    "anticommonsense": ("cladder-v1-q-anticommonsense.json", "test-generate-anti.json"),
    "nonsense": ("cladder-v1-q-noncommonsense.json", "cladder-v1-q-nonsense.json", "test-generate-non.json"),
}
MODEL_FILES = ("cladder-v1-meta-models.json", "test-model-meta.json")

QUERY_TYPE_NAMES = {
    "correlation": "correlation",
    "marginal": "marginal distribution",
    "exp_away": "explaining away effect",
    "ate": "average treatment effect",
    "backadj": "backdoor adjustment set",
    "collider_bias": "collider bias",
    "ett": "effect of the treatment on the treated",
    "nde": "natural direct effect",
    "nie": "natural indirect effect",
    "det-counterfactual": "deterministic counterfactual",
}
# "det_counterfactual", "Exp-Away": a query type without its separators, to its name in the release.
_QUERY_TYPE_SPELLINGS = {re.sub(r"[-_]", "", name): name for name in QUERY_TYPE_NAMES}
REASONING_STEPS = ("step0", "step1", "step2", "step3", "step4", "step5", "end")
_STORY_NAME_KEY = re.compile(r"[A-Z]name")  # a story's variable names sit under Xname, Yname, ...


def canonical_variant(variant: str | None) -> str:
    """Map the accepted spellings of a variant to one of VARIANTS."""
    key = (variant or "commonsense").lower()
    if key not in VARIANT_ALIASES:
        raise ValueError(f"unknown CLadder variant {variant!r}; expected one of {sorted(VARIANT_ALIASES)}")
    return VARIANT_ALIASES[key]


def cladder_dir(data_dir: str | Path) -> Path:
    """Accept both the data root (holding `cladder/`) and the CLadder folder itself."""
    root = Path(data_dir)
    return root / "cladder" if (root / "cladder").is_dir() else root


def question_file(folder: Path, variant: str) -> Path:
    """The question file of `variant` in `folder`, whichever layout it follows."""
    for name in QUESTION_FILES[canonical_variant(variant)]:
        if (folder / name).is_file():
            return folder / name
    raise MissingFileError(
        f"no CLadder {variant} question file in {folder}; looked for {QUESTION_FILES[canonical_variant(variant)]}"
    )


def variant_file(path: Path, variant: str | None) -> Path:
    """`path`, or, when it is the release's file of another variant than the one asked for, that variant's file
    beside it: with data.data_file set, the commonsense test set and an anticommonsense training set each come
    from their own file. An unknown file name, or no variant, takes the file as it is."""
    named = next((v for v, names in QUESTION_FILES.items() if path.name in names), None)
    if variant is None or named is None or named == canonical_variant(variant):
        return path
    return question_file(path.parent, variant)


def load_models(path: Path) -> dict[int, Mapping[str, Any]]:
    """Causal models keyed by model_id."""
    models = read_json(path)
    if not isinstance(models, list):
        raise DataError(str(path), None, None, "expected a JSON list of causal models")
    by_id = {}
    for index, model in enumerate(models):
        by_id[require(model, "model_id", str(path), ListIndex(index))] = model
    return by_id


def load_stories(folder: Path) -> dict[str, Mapping[str, Any]]:
    """Story phrase tables keyed by story_id (the file stem)."""
    return {path.stem: read_yaml_mapping(path, "phrase keys to phrases") for path in sorted(folder.glob("*.yml"))}


def load_cladder_file(
    path: str | Path,
    variant: str | None = None,
    *,
    models: Mapping[int, Mapping[str, Any]] | None = None,
    stories: Mapping[str, Mapping[str, Any]] | None = None,
    anticommonsense: Mapping[str, Any] | None = None,
) -> list[Example]:
    """Load one question file; causal models and stories default to its own folder.

    A question that carries its own `background` and `variable_mapping` needs
    no causal-model file. Without a stories folder, only the variable
    mapping's names and value nouns are known to the abstraction.
    """
    path = Path(path)
    folder = path.parent
    if variant is None:
        variant = next((v for v, names in QUESTION_FILES.items() if path.name in names), "commonsense")
    variant = canonical_variant(variant)
    if models is None:
        model_path = next((folder / n for n in MODEL_FILES if (folder / n).is_file()), None)
        models = load_models(model_path) if model_path else {}
    if stories is None and (folder / "stories").is_dir():
        stories = load_stories(folder / "stories")
    records = read_json(path)
    if not isinstance(records, list) or not records:
        got = "an empty list" if isinstance(records, list) else f"a JSON {type(records).__name__}"
        raise DataError(str(path), None, None, f"expected a JSON list of questions, got {got}")
    if stories is None:
        warnings.warn(
            f"{path}: no stories/ folder beside it, so the oracle abstraction knows only the causal models' "
            "variable names, and story phrases stay in many templates (in about half of the generator's "
            "commonsense questions). For the exact abstraction put the release's stories (assets/stories of "
            "github.com/causalNLP/cladder) beside it as stories/, or use data.source=download",
            stacklevel=2,
        )
    if anticommonsense is None and (folder / "anticommonsense.yml").is_file():
        anticommonsense = read_yaml_mapping(folder / "anticommonsense.yml", "anti-commonsense replacements")
    gaps = _OracleGaps()
    examples = [
        _example(record, index, str(path), variant, models, stories, anticommonsense, gaps)
        for index, record in enumerate(records)
    ]
    gaps.warn(path)
    return examples


@dataclasses.dataclass
class _OracleGaps:
    """What the story tables (or the known query types) could not tell about one file's questions, said once per
    file: each gap leaves story phrases in (or makes ambiguous) the oracle templates of the questions it counts."""

    # kind -> (what is missing -> the questions it touches)
    found: dict[str, dict[str, set[Any]]] = dataclasses.field(default_factory=dict)

    def add(self, kind: str, what: str, record_id: Any) -> None:
        self.found.setdefault(kind, {}).setdefault(what, set()).add(record_id)

    def warn(self, path: Path) -> None:
        for kind, by_what in self.found.items():
            questions = len(set().union(*by_what.values()))
            listed = sorted(by_what.items(), key=lambda item: (-len(item[1]), item[0]))
            shown = ", ".join(f"{what} ({len(ids)})" for what, ids in listed[:6]) + (", ..." if len(listed) > 6 else "")
            counted = f"{questions} question{'s' if questions != 1 else ''}"
            warnings.warn(f"{path}: {counted} {_GAP_TEXT[kind].format(shown)}", stacklevel=3)


_GAP_TEXT = {
    "missing story": "of a story with no yml in stories/: {}; their oracle templates know only the causal "
    "models' variable names, so story phrases stay in them",
    "unmatched variable": "with a variable whose name their story's yml does not define: {}; that variable's "
    "story phrases stay in their oracle templates (an anti-commonsense variable's phrases come from "
    "anticommonsense.yml beside the question file)",
    "missing replacements": "of an anti-commonsense causal model, with no anticommonsense.yml beside the stories: "
    "{}; their oracle templates know only the causal models' variable names, so the replaced phrases stay in them",
    "unknown query type": "of a query type the oracle does not know: {}; their questions are abstracted as "
    "value-first ones (as for ate or correlation), so a variable they name may be written as a value's slot",
    "two-valued phrase": "with a story phrase that their story lists for both values of its variable: {}; the text "
    "cannot say which value it means, so the oracle writes it as the variable's slot without a value",
}


def load_cladder(
    variant: str | None = None, data_dir: str | Path | None = None, data_file: str | Path | None = None
) -> list[Example]:
    """Load a variant from a data folder (v1 release or shared layout) or one file."""
    if data_file is not None:
        return load_cladder_file(variant_file(Path(data_file), variant), variant)
    if data_dir is None:
        raise ValueError("CLadder needs data_dir or data_file (or source='download')")
    return load_cladder_file(question_file(cladder_dir(data_dir), canonical_variant(variant)), variant)


def _example(
    record: Any,
    index: int,
    file: str,
    variant: str,
    models: Mapping[int, Mapping[str, Any]],
    stories: Mapping[str, Mapping[str, Any]] | None,
    anticommonsense: Mapping[str, Any] | None,
    gaps: _OracleGaps,
) -> Example:
    question_id = record.get("question_id") if isinstance(record, Mapping) else None
    record_id = ListIndex(index) if question_id is None else question_id
    require(record, "question_id", file, record_id)
    meta = require(record, "meta", file, record_id)
    model_id = meta.get("model_id") if isinstance(meta, Mapping) else None
    known_model = models.get(model_id, {}) if isinstance(model_id, (int, str)) else {}
    if "background" in record and "variable_mapping" in record:
        model: Mapping[str, Any] = record
        within = ""
    else:
        model_id = require(meta, "model_id", file, record_id, "meta")
        if not known_model:
            where = "" if models else f" (no causal-model file, {' or '.join(MODEL_FILES)}, was found beside it)"
            raise DataError(file, record_id, "meta.model_id", f"unknown causal model {model_id!r}{where}")
        model = known_model
        within = f"causal model {model_id}"
    # A question carrying its own mapping still takes the anti-commonsense change from its causal model.
    change = model.get("anticommonsense") or known_model.get("anticommonsense")
    background = require_str(model, "background", file, record_id, within)
    mapping = require(model, "variable_mapping", file, record_id, within)
    answer = require_str(record, "answer", file, record_id).strip().lower()
    if answer not in ("yes", "no"):
        raise DataError(file, record_id, "answer", f"expected yes or no, got {answer!r}")
    story_id = require_str(meta, "story_id", file, record_id, "meta")
    story: Mapping[str, Any] = {}
    if stories is not None and story_id not in stories:
        gaps.add("missing story", repr(story_id), record_id)
    elif change and stories is not None and anticommonsense is None:
        gaps.add("missing replacements", repr(story_id), record_id)
    else:
        if not change and stories is not None and anticommonsense is not None and isinstance(mapping, Mapping):
            change = _anticommonsense_change(mapping, stories[story_id], anticommonsense)
        story = _story(story_id, stories, change, anticommonsense, file, record_id)
    segments = {
        "background": background,
        "given_info": require_str(record, "given_info", file, record_id),
        "question": require_str(record, "question", file, record_id),
    }
    steps = _reasoning_steps(record.get("reasoning"), file, record_id)
    query_type = require_str(meta, "query_type", file, record_id, "meta").strip().lower()
    query_type = _QUERY_TYPE_SPELLINGS.get(re.sub(r"[-_\s]", "", query_type), query_type)
    if query_type not in QUERY_TYPE_NAMES:
        gaps.add("unknown query type", repr(query_type), record_id)
    variables = _variables(mapping, story, file, record_id, story_id, segments_text(segments).lower(), gaps)
    return Example(
        id=str(record["question_id"]),
        dataset="cladder",
        variant=variant,
        prompt=segments_text(segments),
        reasoning=causal_cot(steps, query_type, answer) if steps else "",
        answer=answer.capitalize(),
        meta={
            "rung": meta.get("rung"),
            "query_type": query_type,
            "story_id": story_id,
            "story_known": bool(story),  # else the oracle knows no story phrase
            "graph_id": meta.get("graph_id"),
            "model_id": meta.get("model_id"),
            "desc_id": record.get("desc_id"),
            "source_file": file,
            "segments": segments,
            "steps": steps,
            "variables": variables,
            "variable_mapping": dict(mapping),
        },
    )


def _story(
    story_id: str,
    stories: Mapping[str, Mapping[str, Any]] | None,
    change: Any,
    anticommonsense: Mapping[str, Any] | None,
    file: str,
    record_id: Any,
) -> Mapping[str, Any]:
    """The story's phrase table, with the anti-commonsense replacement applied."""
    if stories is None:
        return {}
    story = dict(stories[story_id])
    if not change:
        return story
    try:
        letter, choice = change["variable"], change["change"]
        replacement = anticommonsense["variables"][letter][choice]
    except (KeyError, TypeError) as err:
        raise DataError(
            file, record_id, "causal model anticommonsense", f"no replacement {change!r} in anticommonsense.yml"
        ) from err
    subject = story.get(f"{letter}subject", "")
    plural = anticommonsense.get("plurals", {}).get(subject, f"{subject}s")
    story.update(
        {
            key: text.replace("{subject}", subject).replace("{plural}", plural)
            for key, text in replacement.items()
            if key in story
        }
    )
    return story


def _anticommonsense_change(
    mapping: Mapping[str, Any], story: Mapping[str, Any], anticommonsense: Mapping[str, Any]
) -> dict[str, str] | None:
    """The anti-commonsense change of a question whose causal model does not say it (or that has none, carrying its
    own variable mapping): the replacement in anticommonsense.yml named like a variable the story does not know."""
    for key, name in mapping.items():
        if not key.endswith("name") or not isinstance(name, str) or _story_letter(story, name):
            continue
        for letter, choices in (anticommonsense.get("variables") or {}).items():
            for choice, replacement in (choices or {}).items():
                if (
                    isinstance(replacement, Mapping)
                    and str(replacement.get(f"{letter}name", "")).lower() == name.lower()
                ):
                    return {"variable": letter, "change": choice}
    return None


def _variables(
    mapping: Any,
    story: Mapping[str, Any],
    file: str,
    record_id: Any,
    story_id: str,
    prompt: str,
    gaps: _OracleGaps,
) -> list[dict[str, Any]]:
    """Per causal variable: its letter, name and every wording of each value.

    A story phrase listed for both values (a typo in some CLadder stories) says nothing about the value, so it
    counts as a wording of the name."""
    if not isinstance(mapping, Mapping):
        raise DataError(file, record_id, "variable_mapping", "expected an object")
    letters = [key[: -len("name")] for key in mapping if key.endswith("name")]
    variables = []
    for letter in letters:
        wordings: dict[str, set[str]] = {"name": {mapping[f"{letter}name"]}}
        for value in ("1", "0"):
            wordings[value] = {require_str(mapping, f"{letter}{value}", file, record_id, "variable_mapping")}
        story_letter = _story_letter(story, mapping[f"{letter}name"])
        if story_letter:
            wordings["name"].add(story[f"{story_letter}name"])
            value_key = re.compile(rf"{story_letter}([01])_\w+")  # compiled once: a story has ~100 keys
            for key, text in story.items():
                match = value_key.fullmatch(key)
                if match and isinstance(text, str):
                    wordings[match.group(1)].update(_wording_variants(text))
            for phrase in wordings["1"] & wordings["0"]:
                if phrase.lower() in prompt:
                    gaps.add("two-valued phrase", f"{story_id}: {phrase!r}", record_id)
                wordings["name"].add(phrase)
            wordings["1"], wordings["0"] = wordings["1"] - wordings["0"], wordings["0"] - wordings["1"]
        elif story:
            gaps.add("unmatched variable", f"{story_id}: {mapping[f'{letter}name']!r}", record_id)
        variables.append(
            {
                "letter": letter,
                "name": mapping[f"{letter}name"],
                "wordings": {kind: sorted(texts) for kind, texts in wordings.items()},
            }
        )
    return variables


def _story_letter(story: Mapping[str, Any], name: str) -> str | None:
    """The story's letter for a variable; stories and models letter variables differently."""
    name = name.lower()
    for key, text in story.items():
        if isinstance(text, str) and text.lower() == name and _STORY_NAME_KEY.fullmatch(key):
            return key[0]
    return None


def _wording_variants(text: str) -> set[str]:
    """A wording plus the shortened form questions quote from it.

    Counterfactual conditions ("if the husband had set the alarm instead of
    not setting it") also appear without their "instead of ..." tail; the
    leading "if" is grammar and stays out of the slot.
    """
    text = text.removeprefix("if ")
    return {text, text.split(" instead of ")[0]}


def _reasoning_steps(reasoning: Any, file: str, record_id: Any) -> dict[str, str] | None:
    """The CausalCoT steps, or None where the data has no reasoning."""
    if reasoning is None:
        return None
    steps = {}
    for key in REASONING_STEPS:
        value = require(reasoning, key, file, record_id, "reasoning")
        steps[key] = value if isinstance(value, str) else str(value)
    return steps


def causal_cot(steps: Mapping[str, str], query_type: str, answer: str, with_variables: bool = True) -> str:
    """The CausalCoT chain as target text, one step per line.

    `with_variables=False` drops the "Let X = ..." line; an abstracted chain
    has no names to introduce.
    """
    data = "; ".join(line for line in steps["step4"].split("\n") if line) or "none"
    lines = [steps["step0"]] if with_variables else []
    lines += [
        f"Step 1) Causal graph: {steps['step1']}",
        f"Step 2) Query type: {QUERY_TYPE_NAMES.get(query_type, query_type)}",
        f"Step 3) Formal query: {steps['step2']}",
        f"Step 4) Available data: {data}",
        f"Step 5) Estimand: {steps['step3']}",
        f"Step 6) Estimate: {steps['step5']}",
        f"Step 7) Result: {steps['end']}, so the answer is {answer.lower()}.",
    ]
    return "\n".join(lines)


def segments_text(segments: Mapping[str, str]) -> str:
    """The prompt text from its background, given_info and question."""
    return " ".join(text for text in segments.values() if text)
