"""The paper's CAPT run: Qwen2.5-3B-Instruct on prontoqa."""

from capt_jax.config import paper_config


def get_config():
    return paper_config("qwen2.5-3b", "prontoqa", "capt")
