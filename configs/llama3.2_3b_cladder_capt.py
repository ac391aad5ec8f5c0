"""The paper's CAPT recipe on Llama-3.2-3B-Instruct (CLadder); the same decoder with llama3 rope scaling."""

from capt_jax.config import paper_config


def get_config():
    return paper_config("llama3.2-3b", "cladder", "capt")
