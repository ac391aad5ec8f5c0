"""The CPU experiment of docs/EXPERIMENTS.md: SmolLM2-135M-Instruct on the paper's PrOntoQA ID file.

    python -m capt_jax.experiment --config configs/experiment_prontoqa_smollm2.py \
        --methods base,sft,capt,order --seeds 0,1,2 --estimators oracle,self

Every trained method learns estimation too (data.estimation_weight=1, the `map` form), so SFT, CAPT and the
ablation see the same rows but for the intervention of the reasoning ones; CAPT is evaluated through the
oracle (an upper bound) and through itself (`self`, the headline); the `order` ablation through the oracle.
The budget fits about two and a half hours of two CPU cores: 80 steps of batch 4, reasoning targets (the proof
chain in <think> tags), greedy decoding, 200 test questions per split.
"""

from capt_jax.config import default_config


def get_config():
    c = default_config()
    c.workdir = "workdirs/experiment_prontoqa"
    c.model.path = "smollm2"
    c.lora.rank, c.lora.alpha, c.lora.dropout = 16, 32.0, 0.1
    c.data.kind = "capt"
    c.data.dataset = "prontoqa"  # ../shared/data/prontoqa/prontoqa.json, or set data.data_file
    c.data.n_train = 100
    c.data.estimation_weight = 1.0
    c.data.estimation_form = "map"
    c.train.max_steps = 80
    c.train.batch_size = 4
    c.train.seq_len = 384
    c.train.learning_rate = 1e-3
    c.train.warmup_ratio = 0.1
    c.checkpoint.every_steps = 40
    c.eval.max_examples = 200
    c.eval.max_new_tokens = 128
    c.eval.estimator_max_new_tokens = 192
    c.eval.estimator_retries = 0  # greedy estimates only: a re-sample would double the first stage's cost
    c.eval.batch_size = 32
    return c
