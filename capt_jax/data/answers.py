"""Answer format: the instruction in the prompt, the target, and parsing replies."""

from __future__ import annotations

import re

from .example import LABELS

_ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.IGNORECASE | re.DOTALL)


def answer_instruction(dataset: str, with_reasoning: bool = True) -> str:
    """The instruction appended to every prompt; it matches the target format."""
    yes, no = LABELS[dataset]
    choice = f'"{yes}" or "{no}"'
    if with_reasoning:
        return (
            f"Reason step by step inside <think> </think> tags, then give the final answer, "
            f"{choice}, inside <answer> </answer> tags, for example <answer>{yes}</answer>."
        )
    return f"Give only the final answer, {choice}, inside <answer> </answer> tags, for example <answer>{yes}</answer>."


def format_target(reasoning: str, answer: str, with_reasoning: bool = True) -> str:
    """`<think>reasoning</think><answer>X</answer>`, or the answer alone."""
    if with_reasoning and reasoning:
        return f"<think>{reasoning}</think><answer>{answer}</answer>"
    return f"<answer>{answer}</answer>"


def parse_answer(text: str, dataset: str) -> str | None:
    """The label in the last <answer> tag, else the first label word; None if neither.

    Inside a tag only the tag counts, so "<answer>maybe</answer>" is unparseable.
    """
    labels = LABELS[dataset]
    words = re.compile(r"\b(" + "|".join(labels) + r")\b", re.IGNORECASE)
    tags = _ANSWER_TAG.findall(text)
    match = words.search(tags[-1] if tags else text)
    if match is None:
        return None
    return next(label for label in labels if label.lower() == match.group(1).lower())
