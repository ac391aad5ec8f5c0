"""PrOntoQA loading and grammar: the CAPT format and the official generator's format.

Both become the same parts: the facts, the given premise (the first proof
claim, not among the facts), the queried statement, the proof's claims and
the rule used at each step. Prompt and reasoning are built from those parts
by `prontoqa_prompt` and `prontoqa_reasoning`, which the abstraction reuses on
template parts.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .example import DataError, Example, require, require_str
from .files import read_json

QUERY_PREFIX = "True or false: "
_ENTRY_KEY = re.compile(r"example\d+", re.IGNORECASE)
_QUERY = re.compile(r"\s*true\s+or\s+false\s*[:?]\s*(.+?)\s*", re.IGNORECASE)
_PROVE = re.compile(r"\s*prove\b", re.IGNORECASE)  # the generator's --proofs-only queries
_RULE = re.compile(r"(Every|Each) (.+?) is (not )?(.+)\.")
_PLURAL_RULE = re.compile(r"(.+?) are (not )?(.+)\.")
_FACT = re.compile(r"(.+?) is (not )?(.+)\.")
_ARTICLE = re.compile(r"(an?) (.+)")
FINISH = "Finish."
CAPT_FILE = "prontoqa.json"
CAPT_FIELDS = ("Facts", "Query", "claims", "next_steps")  # a CAPT-format record's, as the authors' file spells them
_SENTENCE_END = re.compile(r"(?<=\.)\s+")
_SYMBOL = re.compile(r"[A-Z]{1,2}s?")  # an intervention's letters, singular or plural: "Is are Rs." is a statement
# Words that join or quantify statements. The lazy patterns above would take them into a term, as
# "Everything that" or "yumpus or a zumpus" from PrOntoQA-OOD's richer grammar; a term holding one is refused.
_CONNECTIVES = frozenset("is are a an not and or every each everything that if then".split())


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One parsed statement.

    subject_kind: 'entity', 'concept' (after Every/Each) or 'concepts' (plural);
    predicate_kind: 'concept' (with article), or 'bare' (after "is": a property;
    after "are": a plural concept or a property, decided per example).
    """

    quantifier: str
    subject: str
    subject_kind: str
    negated: bool
    predicate: str
    predicate_kind: str
    article: str = ""


@functools.lru_cache(maxsize=65536)  # an ontology's few hundred statements recur across all its questions
def parse_sentence(text: str) -> Sentence:
    """Parse one statement; ValueError if it is not in PrOntoQA's grammar, which has three forms:

    Every|Each <concept> is [not] (a|an <concept> | <property>).
    <concepts> are [not] (<concepts> | <property>).
    <entity> is [not] (a|an <concept> | <property>).
    """
    sentence = _parsed(text)
    words = (sentence.subject + " " + sentence.predicate).split()
    joined = sorted({w.lower() for w in words if not _SYMBOL.fullmatch(w)} & _CONNECTIVES)
    if joined:
        raise ValueError(f"not a PrOntoQA statement: {text!r} (a term would hold {joined})")
    return sentence


def _parsed(text: str) -> Sentence:
    if match := _RULE.fullmatch(text):
        quantifier, subject, negated, rest = match.groups()
        return _with_predicate(quantifier, subject, "concept", bool(negated), rest)
    if match := _PLURAL_RULE.fullmatch(text):
        subject, negated, rest = match.groups()
        return Sentence("", subject, "concepts", bool(negated), rest, "bare")
    if match := _FACT.fullmatch(text):
        subject, negated, rest = match.groups()
        return _with_predicate("", subject, "entity", bool(negated), rest)
    raise ValueError(f"not a PrOntoQA statement: {text!r}")


def _with_predicate(quantifier: str, subject: str, subject_kind: str, negated: bool, rest: str) -> Sentence:
    if match := _ARTICLE.fullmatch(rest):
        return Sentence(quantifier, subject, subject_kind, negated, match.group(2), "concept", match.group(1))
    return Sentence(quantifier, subject, subject_kind, negated, rest, "bare")


def prontoqa_dir(data_dir: str | Path) -> Path:
    """Accept both the data root (holding `prontoqa/`) and the PrOntoQA folder itself."""
    root = Path(data_dir)
    return root / "prontoqa" if (root / "prontoqa").is_dir() else root


def prontoqa_prompt(facts: Sequence[str], given: str, query: str) -> str:
    return f"Given facts: {' '.join(facts)} Given {given.removesuffix('.')}, answer the question: {QUERY_PREFIX}{query}"


def prontoqa_reasoning(claims: Sequence[str], steps: Sequence[str]) -> str:
    """The proof as alternating claims and rules, ending with the derived claim."""
    chain = [claims[0]]
    for rule, claim in zip(steps, claims[1:]):
        chain += [rule, claim]
    return " ".join(chain)


def derive_answer(last_claim: str, query: str) -> str | None:
    """'True' if the proof ends in the query, 'False' if in its negation, else None."""
    if last_claim == query:
        return "True"
    negations = {last_claim.replace(" is not ", " is ", 1), last_claim.replace(" is ", " is not ", 1)}
    return "False" if query in negations - {last_claim} else None


def make_example(
    example_id: str,
    variant: str,
    facts: Sequence[str],
    given: str,
    query: str,
    claims: Sequence[str],
    steps: Sequence[str],
    answer: str,
    extra_meta: Mapping[str, Any] | None = None,
) -> Example:
    """An Example from PrOntoQA parts; the parts stay in meta for the abstraction."""
    return Example(
        id=example_id,
        dataset="prontoqa",
        variant=variant,
        prompt=prontoqa_prompt(facts, given, query),
        reasoning=prontoqa_reasoning(claims, steps),
        answer=answer,
        meta={
            "facts": tuple(facts),
            "given": given,
            "query": query,
            "claims": tuple(claims),
            "steps": tuple(steps),
            "hops": len(steps),
            **(extra_meta or {}),
        },
    )


def split_sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def capt_record_example(record: Any, index: int, file: str, variant: str = "id") -> Example:
    """One CAPT-format record (Facts, Query, claims, next_steps, read in any case and with "-" or "_", as the
    generator's fields are); its id is the index."""
    if isinstance(record, Mapping):
        entry = _entry(record, file, index)
        record = {name: entry[_field_name(name)] for name in CAPT_FIELDS if _field_name(name) in entry}
    facts = split_sentences(require_str(record, "Facts", file, index))
    query = _query_statement(require_str(record, "Query", file, index), file, index, "Query")
    claims = _string_list(require(record, "claims", file, index), file, index, "claims")
    next_steps = _string_list(require(record, "next_steps", file, index), file, index, "next_steps")
    if not next_steps or next_steps[-1] != FINISH:
        raise DataError(file, index, "next_steps", f"expected the last step to be {FINISH!r}")
    steps = next_steps[:-1]
    if len(steps) != len(claims) - 1 or not claims:
        raise DataError(file, index, "claims", f"{len(claims)} claims do not fit {len(steps)} proof steps")
    _check_grammar({"Facts": facts, "Query": [query], "claims": claims, "next_steps": steps}, file, index)
    _check_proof(claims, steps, file, index, ("claims", "next_steps"))
    answer = derive_answer(claims[-1], query)
    if answer is None:
        raise DataError(file, index, "Query", "neither the last claim nor its negation")
    return make_example(
        str(index), variant, facts, claims[0], query, claims, steps, answer, {"source_file": file, "format": "capt"}
    )


def official_record_example(key: str, record: Any, file: str, variant: str = "id") -> Example:
    """The test_example of one official-generator entry; its id is the entry key. Field names are read in any case
    and with "-" or "_" ("chain-of-thought"), the answer in any case or as a boolean."""
    test = require(record, "test_example", file, key)
    record_id = f"{key}.test_example"
    if isinstance(test, Mapping):
        test = _entry(test, file, record_id)
        if isinstance(test.get("answer"), bool):
            test["answer"] = str(test["answer"])
    question = require_str(test, "question", file, record_id)
    query = _query_statement(require_str(test, "query", file, record_id), file, record_id, "query")
    chain = _string_list(require(test, "chain_of_thought", file, record_id), file, record_id, "chain_of_thought")
    if len(chain) % 2 != 1:
        raise DataError(file, record_id, "chain_of_thought", "expected claim, rule, claim, ... , claim")
    claims, steps = chain[0::2], chain[1::2]
    facts = split_sentences(question)
    _check_grammar({"question": facts, "query": [query], "chain_of_thought": chain}, file, record_id)
    _check_proof(claims, steps, file, record_id, ("chain_of_thought", "chain_of_thought"))
    answer = require_str(test, "answer", file, record_id).strip().capitalize()
    if answer != derive_answer(claims[-1], query):
        raise DataError(file, record_id, "answer", f"{answer!r} contradicts the proof's last claim")
    if claims[0] in facts:
        facts.remove(claims[0])
    return make_example(
        key, variant, facts, claims[0], query, claims, steps, answer, {"source_file": file, "format": "official"}
    )


def examples_from_capt_records(records: Any, file: str, variant: str = "id") -> list[Example]:
    """A CAPT-format file's content: {"next_steps": [records]} or the bare list."""
    field = None
    if isinstance(records, Mapping):
        field, records = "next_steps", require(_entry(records, file, None), "next_steps", file, None)
    if not isinstance(records, list) or not records:
        raise DataError(file, None, field, "expected a non-empty list of records")
    return [capt_record_example(record, index, file, variant) for index, record in enumerate(records)]


def load_prontoqa_file(path: str | Path, variant: str = "id") -> list[Example]:
    """Load either format, recognised by its shape. The official generator's entries may sit in an object (keyed
    "example0", ...; other top-level values, such as settings, are ignored) or in a list."""
    path = Path(path)
    content = read_json(path)
    if isinstance(content, list) and content and all(_is_official_entry(value) for value in content):
        content = {f"example{index}": value for index, value in enumerate(content)}
    if isinstance(content, Mapping) and "next_steps" not in _entry(content, str(path), None):
        keys = [key for key, value in content.items() if _is_official_entry(value) or _ENTRY_KEY.fullmatch(str(key))]
        if keys:
            return [
                official_record_example(key, _entry(content[key], str(path), key), str(path), variant) for key in keys
            ]
    return examples_from_capt_records(content, str(path), variant)


def _entry(value: Any, file: str, record_id: str | int | None) -> Any:
    """An object with its keys spelled as the generator does ("Test_Example" -> "test_example"). Two keys that
    spell one field ("Facts" and "facts") are refused: keeping either would drop the other unseen."""
    if not isinstance(value, Mapping):
        return value
    spelled: dict[str, Any] = {}
    for key in value:
        name = _field_name(key)
        if name in spelled:
            raise DataError(file, record_id, name, f"given twice, as {spelled[name]!r} and {key!r}; keep one")
        spelled[name] = key
    return {name: value[key] for name, key in spelled.items()}


def _is_official_entry(value: Any) -> bool:
    """Whether an object is a generator entry: it holds a test_example, in any spelling."""
    return isinstance(value, Mapping) and any(_field_name(key) == "test_example" for key in value)


def _field_name(key: Any) -> str:
    return re.sub(r"[-\s]+", "_", str(key).strip().lower())


def _check_grammar(fields: Mapping[str, Sequence[str]], file: str, record_id: Any) -> None:
    """Every statement must parse, or the abstraction could not be exact."""
    for field, sentences in fields.items():
        for sentence in sentences:
            try:
                parse_sentence(sentence)
            except ValueError as err:
                raise DataError(file, record_id, field, str(err)) from err


def _check_proof(
    claims: Sequence[str], steps: Sequence[str], file: str, record_id: Any, fields: tuple[str, str]
) -> None:
    """A proof the abstraction can mirror: claims about one entity, each step a rule (Every/Each/plural subject).

    Proofs of the generator's other deduction rules (AndIntro's "Alex is happy." as a step, say) parse statement by
    statement, but their refills would be unprovable from their facts under the same answer, so they are refused.
    """
    first = parse_sentence(claims[0])
    if first.subject_kind != "entity":
        raise DataError(file, record_id, fields[0], f"the first claim, {claims[0]!r}, is not about an entity")
    entity = first.subject
    for claim in claims[1:]:
        parsed = parse_sentence(claim)
        if parsed.subject_kind != "entity" or parsed.subject != entity:
            raise DataError(
                file, record_id, fields[0], f"{claim!r} is not a claim about {entity!r}, the proof's entity"
            )
    for step in steps:
        if parse_sentence(step).subject_kind == "entity":
            raise DataError(file, record_id, fields[1], f"{step!r} is a step but not a rule (Every/Each ... or plural)")


def _query_statement(query: str, file: str, record_id: Any, field: str) -> str:
    """The statement a query asks about, after "True or false:" in any case, spacing, or with "?" for ":"."""
    match = _QUERY.fullmatch(query)
    if not match:
        problem = f"expected it to start with {QUERY_PREFIX!r}"
        if _PROVE.match(query):
            problem += " (a proofs-only file's 'Prove:' queries have no answer to learn)"
        raise DataError(file, record_id, field, problem)
    return match.group(1)


def _string_list(value: Any, file: str, record_id: Any, field: str) -> list[str]:
    """Statements without surrounding whitespace, which is not part of them (the generator puts blank lines around
    some proof lines of its other deduction rules)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(file, record_id, field, "expected a list of strings")
    return [v.strip() for v in value]
