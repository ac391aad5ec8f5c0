"""Answer parsing and scoring."""

import pytest

from capt_jax.data import Example, format_target, parse_answer
from capt_jax.evaluate import score_split


@pytest.mark.parametrize(
    "text, dataset, expected",
    [
        ("<think>yes or no?</think><answer>No</answer>", "cladder", "No"),
        ("<answer> yes </answer>", "cladder", "Yes"),
        ("<answer>Yes</answer> ... <answer>no</answer>", "cladder", "No"),
        ("<answer>maybe</answer> yes", "cladder", None),
        ("The answer is no, because ...", "cladder", "No"),
        ("I think it is TRUE.", "prontoqa", "True"),
        ("<answer>False", "prontoqa", "False"),
        ("nothing useful", "prontoqa", None),
        ("yesterday noon", "cladder", None),
    ],
)
def test_parse_answer(text, dataset, expected):
    assert parse_answer(text, dataset) == expected


def test_target_format():
    assert format_target("step", "Yes") == "<think>step</think><answer>Yes</answer>"
    assert format_target("step", "Yes", with_reasoning=False) == "<answer>Yes</answer>"
    assert format_target("", "No") == "<answer>No</answer>"


def test_score_counts_unparseable_as_wrong():
    examples = [
        Example(str(i), "prontoqa", "id", "p", "", answer) for i, answer in enumerate(["True", "False", "True"])
    ]
    report, _ = score_split(examples, ["<answer>True</answer>", "<answer>True</answer>", "no idea"])
    assert (report["n"], report["correct"], report["unparseable_ids"]) == (3, 1, ["2"])
    assert report["accuracy"] == pytest.approx(1 / 3)
