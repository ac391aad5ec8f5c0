"""Event estimation at test time: the first stage of CAPT's two-stage inference.

Every estimator turns a raw example into an `Abstraction` (a `{symbol_i}` template plus slot -> name), which
event intervention then letters at random. Besides the exact `oracle`, a language model can estimate: a
frozen local LM prompted few-shot (`lm`), an OpenAI-compatible endpoint (`openai`, the paper used
GPT-4o-mini), or the fine-tuned model itself (`self`, trained with the estimation term of the objective). All
of them answer with the same JSON, are held to the paper's validity check (no original name may remain), and
are re-sampled up to `retries` times when invalid.
"""

from __future__ import annotations

import dataclasses
import json
import os
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from capt_jax.config import ConfigError
from capt_jax.data import Abstraction, Example, abstract, is_valid
from capt_jax.data.render import Term, slots_in

ESTIMATION_INSTRUCTION = (
    "Event estimation: rewrite the text below with every event or entity replaced by a slot {symbol_1}, "
    "{symbol_2}, ... (the same slot each time it recurs; write {symbol_i}=1 or {symbol_i}=0 where an event "
    "happens or does not happen). Reply with JSON only: "
    '{"template": "<the text with slots>", "symbols": {"symbol_1": "<original name>", ...}}'
)

Messages = list[dict[str, str]]
# complete(conversations, attempt) -> one reply per conversation; attempt 0 is greedy, later ones sample.
Completer = Callable[[Sequence[Messages], int], list[str]]


def estimation_prompt(example: Example) -> str:
    return f"{ESTIMATION_INSTRUCTION}\n\nText:\n{example.prompt}"


def estimation_target(abstraction: Abstraction) -> str:
    """What a perfect estimator replies: the oracle abstraction as JSON."""
    return json.dumps({"template": abstraction.prompt, "symbols": abstraction.symbols}, ensure_ascii=False)


def parse_estimation(reply: str, example: Example) -> Abstraction | None:
    """The abstraction in a reply, or None when it is not valid JSON of the right shape or fails the check."""
    start = reply.find("{")
    if start < 0:
        return None
    try:
        data, _ = json.JSONDecoder().raw_decode(reply[start:])
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("template"), str):
        return None
    symbols = data.get("symbols")
    if not isinstance(symbols, dict) or not all(isinstance(v, str) and v.strip() for v in symbols.values()):
        return None
    template = data["template"]
    slots = slots_in(template)
    if not slots or any(slot not in symbols for slot in slots):
        return None
    abstraction = Abstraction(
        example=example,
        prompt=template,
        reasoning="",
        terms={slot: Term(symbols[slot].strip()) for slot in slots},
        kinds=dict.fromkeys(slots, "event"),
    )
    return abstraction if is_valid(abstraction, example) else None


@dataclasses.dataclass
class Estimates:
    """Per example: the abstraction (None when every attempt was invalid) and how many attempts it took."""

    abstractions: list[Abstraction | None]
    attempts: list[int]

    @property
    def valid(self) -> int:
        return sum(a is not None for a in self.abstractions)

    @property
    def valid_rate(self) -> float:
        return self.valid / len(self.abstractions) if self.abstractions else 1.0


def oracle_estimates(examples: Sequence[Example]) -> Estimates:
    abstractions = [abstract(e) for e in examples]
    return Estimates([a if is_valid(a, e) else None for a, e in zip(abstractions, examples)], [1] * len(examples))


def few_shot_conversation(example: Example, shots: Sequence[Example]) -> Messages:
    """Worked examples (oracle abstractions) as earlier chat turns, then the example to estimate."""
    messages: Messages = []
    for shot in shots:
        messages += [
            {"role": "user", "content": estimation_prompt(shot)},
            {"role": "assistant", "content": estimation_target(abstract(shot))},
        ]
    return messages + [{"role": "user", "content": estimation_prompt(example)}]


def model_estimates(
    examples: Sequence[Example], complete: Completer, shots: Sequence[Example] = (), retries: int = 3
) -> Estimates:
    """Ask `complete` for every example; re-ask only the invalid ones, up to `retries` more times."""
    conversations = [few_shot_conversation(e, shots) for e in examples]
    abstractions: list[Abstraction | None] = [None] * len(examples)
    attempts = [0] * len(examples)
    pending = list(range(len(examples)))
    for attempt in range(retries + 1):
        if not pending:
            break
        replies = complete([conversations[i] for i in pending], attempt)
        still = []
        for i, reply in zip(pending, replies):
            attempts[i] = attempt + 1
            abstractions[i] = parse_estimation(reply, examples[i])
            if abstractions[i] is None:
                still.append(i)
        pending = still
    return Estimates(abstractions, attempts)


def openai_completer(
    base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0
) -> Completer:
    """Chat completions from any OpenAI-compatible endpoint; the key comes from the environment."""
    key = os.environ.get(api_key_env)
    if not key:
        raise ConfigError(f"config key 'eval.estimator': openai needs an API key in ${api_key_env}")
    url = base_url.rstrip("/") + "/chat/completions"

    def one(messages: Messages, attempt: int) -> str:
        body = {"model": model, "messages": messages, "temperature": 0.0 if attempt == 0 else 0.7}
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload: dict[str, Any] = json.loads(response.read())
            return payload["choices"][0]["message"]["content"]
        except (OSError, KeyError, IndexError, json.JSONDecodeError) as e:
            return f"request failed: {e}"  # counted as an invalid estimate, and retried

    return lambda conversations, attempt: [one(m, attempt) for m in conversations]
