"""Event estimation at test time: the first stage of CAPT's two-stage inference.

Every estimator turns a raw example into an `Abstraction` (a `{symbol_i}` template plus slot -> name), which
event intervention then letters at random. Besides the exact `oracle` (an upper bound: it reads the data's
own structure), a language model can estimate: a frozen local LM prompted few-shot (`lm`), an
OpenAI-compatible endpoint (`openai`, the paper used GPT-4o-mini), or the fine-tuned model itself (`self`,
trained with the estimation term of the objective). A model replies in one of the forms of
`capt_jax.data.estimates` (the slot map alone, or the map plus the rewritten prompt); a reply is usable only
if it passes `estimate_problems`, which sees the reply and the raw prompt and nothing of the gold answer, and
is re-sampled up to `retries` times when it does not. Declared slots that the template never places (a repeated
name, a name the text lacks) are dropped before the check (`without_unplaced`) unless the caller keeps them; a
reply whose JSON never closes (cut off at its token limit) is rejected, or, when the caller salvages, keeps its
complete entries (`closed_at_last_entry`) and faces the same check.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from capt_jax.config import ConfigError
from capt_jax.data import Abstraction, Example, abstract
from capt_jax.data.estimates import (
    FORMS,
    estimate_problems,
    estimated_abstraction,
    read_symbols,
    symbol_map,
    without_unplaced,
)

_SLOTS = (
    "every event or entity of the text is a slot symbol_1, symbol_2, ... in order of first appearance, named by "
    "its phrase in the text (a noun in its singular); an event that does or does not happen also lists the "
    'exact phrases for each case under "symbol_i=1" and "symbol_i=0"'
)
INSTRUCTIONS = {
    "map": f'Event estimation: {_SLOTS}. Reply with JSON only: {{"symbol_1": "<phrase>", "symbol_2": "<phrase>", ...}}',
    "template": f"Event estimation: {_SLOTS}. Rewrite the text with each phrase replaced by its slot "
    "({symbol_1}, or {symbol_1}=1 / {symbol_1}=0 for an event happening or not). Reply with JSON only: "
    '{"template": "<the text with slots>", "symbols": {"symbol_1": "<phrase>", ...}}',
}

Messages = list[dict[str, str]]
# complete(conversations, attempt) -> one reply per conversation; attempt 0 is greedy, later ones sample.
Completer = Callable[[Sequence[Messages], int], list[str]]


def check_form(form: str) -> str:
    if form not in FORMS:
        raise ConfigError(f"config key 'data.estimation_form': {form!r} is not one of {list(FORMS)}")
    return form


def estimation_prompt(example: Example, form: str) -> str:
    return f"{INSTRUCTIONS[check_form(form)]}\n\nText:\n{example.prompt}"


def estimation_target(abstraction: Abstraction, form: str) -> str:
    """What a perfect estimator replies: the oracle abstraction in `form`."""
    symbols = symbol_map(abstraction)
    reply = symbols if check_form(form) == "map" else {"template": abstraction.prompt, "symbols": symbols}
    return json.dumps(reply, ensure_ascii=False)


class Parsed(NamedTuple):
    """One reply read: its usable abstraction (None when it is not), why not, the declared slots dropped, and
    whether it was read from a reply whose JSON never closes (cut off, most often at the token limit)."""

    abstraction: Abstraction | None
    problems: list[str]
    dropped: list[str]
    salvaged: bool = False


def _json_object(text: str) -> Any:
    """The JSON value that `text` starts with, or None."""
    try:
        return json.JSONDecoder().raw_decode(text)[0]
    except json.JSONDecodeError:
        return None


def closed_at_last_entry(text: str) -> str | None:
    """`text`, starting at a JSON object's `{` that never closes (a reply stopped at its token limit), closed
    after the last entry that a comma follows; None when the object closes or no entry is followed by a comma.
    The entry before the cut may itself be cut off (a number), so it goes. Cuts fall between the entries of
    objects outside every list, so each entry kept is whole; malformed text stays malformed (the caller's parse
    fails)."""
    stack: list[str] = []
    in_string = escaped = False
    cut: tuple[int, int] | None = None  # (where, how many objects are open there)
    for i, char in enumerate(text):
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "{[":
            stack.append(char)
        elif char in "}]":
            if len(stack) <= 1:
                return None
            stack.pop()
        elif char == "," and stack and "[" not in stack:
            cut = (i, len(stack))
    return text[: cut[0]] + "}" * cut[1] if cut else None


def parse_estimation(
    reply: str, example: Example, form: str, drop_unplaced: bool = True, salvage_cut_off: bool = False
) -> Parsed:
    """A reply in `form`, read and checked; with `drop_unplaced`, declared slots that its template never places
    are dropped first instead of failing the check (they change nothing the reasoner sees). With
    `salvage_cut_off`, a reply whose JSON never closes (cut off at the token limit, most often by a loop) keeps
    its complete entries (`closed_at_last_entry`)."""
    start = reply.find("{")
    body = reply[start:] if start >= 0 else ""
    data, salvaged = _json_object(body), False
    if data is None and salvage_cut_off and (closed := closed_at_last_entry(body)):
        data, salvaged = _json_object(closed), True
    template = None
    if check_form(form) == "template":
        template = data.get("template") if isinstance(data, dict) else None
        data = data.get("symbols") if isinstance(template, str) else None
    symbols = read_symbols(data)
    if symbols is None:
        return Parsed(None, [f"not a JSON reply of the {form} form"], [])
    abstraction, dropped = estimated_abstraction(example, *symbols, template=template), []
    if drop_unplaced:
        abstraction, dropped = without_unplaced(abstraction)
    problems = estimate_problems(abstraction, example.prompt)
    return Parsed(None if problems else abstraction, problems, dropped, salvaged)


@dataclasses.dataclass
class Estimates:
    """Per example: the usable abstraction (None when every attempt failed), the attempts it took, why the
    last attempt failed (empty when it did not), the declared slots its last attempt dropped, and whether that
    attempt's reply was salvaged from JSON that never closes."""

    abstractions: list[Abstraction | None]
    attempts: list[int]
    problems: list[list[str]]
    dropped: list[list[str]]
    salvaged: list[bool]

    @classmethod
    def none(cls, count: int) -> Estimates:
        """No estimation at all (raw-prompt methods)."""
        return cls([None] * count, [0] * count, [[] for _ in range(count)], [[] for _ in range(count)], [False] * count)

    @property
    def valid(self) -> int:
        return sum(a is not None for a in self.abstractions)

    @property
    def valid_rate(self) -> float:
        return self.valid / len(self.abstractions) if self.abstractions else 1.0


def oracle_estimates(examples: Sequence[Example]) -> Estimates:
    """The exact abstractions, held to the same gold-free check as every model's estimate."""
    abstractions = [abstract(e) for e in examples]
    problems = [estimate_problems(a, e.prompt) for a, e in zip(abstractions, examples)]
    usable = [None if p else a for a, p in zip(abstractions, problems)]
    return Estimates(usable, [1] * len(examples), problems, [[] for _ in examples], [False] * len(examples))


def few_shot_conversation(example: Example, shots: Sequence[Example], form: str) -> Messages:
    """Worked examples (oracle abstractions) as earlier chat turns, then the example to estimate."""
    messages: Messages = []
    for shot in shots:
        messages += [
            {"role": "user", "content": estimation_prompt(shot, form)},
            {"role": "assistant", "content": estimation_target(abstract(shot), form)},
        ]
    return messages + [{"role": "user", "content": estimation_prompt(example, form)}]


def model_estimates(
    examples: Sequence[Example],
    complete: Completer,
    form: str,
    shots: Sequence[Example] = (),
    retries: int = 3,
    drop_unplaced: bool = True,
    salvage_cut_off: bool = False,
) -> Estimates:
    """Ask `complete` for every example; re-ask only the unusable ones, up to `retries` more times."""
    conversations = [few_shot_conversation(e, shots, form) for e in examples]
    estimates = Estimates.none(len(examples))
    pending = list(range(len(examples)))
    for attempt in range(retries + 1):
        if not pending:
            break
        replies = complete([conversations[i] for i in pending], attempt)
        still = []
        for i, reply in zip(pending, replies):
            estimates.attempts[i] = attempt + 1
            parsed = parse_estimation(reply, examples[i], form, drop_unplaced, salvage_cut_off)
            estimates.abstractions[i], estimates.problems[i], estimates.dropped[i], estimates.salvaged[i] = parsed
            if estimates.abstractions[i] is None:
                still.append(i)
        pending = still
    return estimates


def openai_completer(
    base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0, max_retries: int = 3
) -> Completer:
    """Chat completions from any OpenAI-compatible endpoint through the `openai` client, which retries rate
    limits, timeouts and server errors itself. A wrong key, model or URL would fail on every question alike, so
    it fails at once as a config error; a reply that still fails after the retries counts as an unusable
    estimate of that one question."""
    import openai

    key = os.environ.get(api_key_env)
    if not key:
        raise ConfigError(f"config key 'eval.openai_api_key_env': openai needs an API key in ${api_key_env}")
    client = openai.OpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries)
    fatal = {
        openai.AuthenticationError: f"the key in ${api_key_env} was refused",
        openai.PermissionDeniedError: f"the key in ${api_key_env} may not use model {model!r}",
        openai.NotFoundError: f"no model {model!r} at {base_url} (or not an OpenAI-compatible URL)",
    }

    answered = False  # until a first reply, a connection error means a wrong URL rather than a flaky network

    def one(messages: Messages, attempt: int) -> str:
        nonlocal answered
        try:
            response = client.chat.completions.create(
                model=model, messages=messages, temperature=0.0 if attempt == 0 else 0.7
            )
        except tuple(fatal) as e:
            why = next(text for kind, text in fatal.items() if isinstance(e, kind))
            raise ConfigError(f"config keys 'eval.openai_*' ({base_url}, model {model!r}): {why}: {e}") from None
        except openai.APIConnectionError as e:
            if not answered:
                raise ConfigError(f"config key 'eval.openai_base_url': cannot reach {base_url}: {e}") from None
            return f"request failed: {e}"
        except openai.APIError as e:
            return f"request failed: {e}"  # counted as an unusable estimate, and retried
        answered = True
        return response.choices[0].message.content or ""

    return lambda conversations, attempt: [one(m, attempt) for m in conversations]
