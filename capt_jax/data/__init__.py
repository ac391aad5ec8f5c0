"""CAPT data: CLadder and PrOntoQA examples, oracle event estimation and event intervention.

Typical use (training):

    from capt_jax.data import paper_data_config, training_data, test_examples
    config = paper_data_config("cladder", "capt")
    pairs = training_data(config)        # [{"prompt", "completion"}], 10000 // n copies
    tests = test_examples(config)        # {"id" | "anti" | "non": TestSplit}, free of training questions

Prompts and targets are plain strings; the chat template is applied when tokenizing.
"""

from .abstraction import (
    ValidityReport,
    abstract,
    is_valid,
    leftover_names,
    names_present,
    original_names,
    validity_report,
)
from .answers import answer_instruction, format_target, parse_answer
from .config import default_data_config, load_options, paper_data_config
from .example import Abstraction, DataError, Example
from .intervention import MODES, Intervened, intervene, render_examples, training_pairs
from .pipeline import questions_digest, test_examples, training_data, training_examples, training_questions
from .prontoqa_generator import generate_prontoqa
from .render import Term, render
from .sources import SPLITS, TestSplit, default_data_dir, load_examples, test_sets
from .splits import normalised_template, split, without_overlap

__all__ = [
    "MODES",
    "SPLITS",
    "Abstraction",
    "DataError",
    "Example",
    "Intervened",
    "Term",
    "TestSplit",
    "ValidityReport",
    "abstract",
    "answer_instruction",
    "default_data_config",
    "default_data_dir",
    "format_target",
    "generate_prontoqa",
    "intervene",
    "is_valid",
    "leftover_names",
    "load_examples",
    "load_options",
    "names_present",
    "normalised_template",
    "original_names",
    "paper_data_config",
    "parse_answer",
    "questions_digest",
    "render",
    "render_examples",
    "split",
    "test_examples",
    "test_sets",
    "training_data",
    "training_examples",
    "training_questions",
    "training_pairs",
    "validity_report",
    "without_overlap",
]
