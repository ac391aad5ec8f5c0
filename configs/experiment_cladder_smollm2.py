"""A CPU experiment on CLadder (docs/EXPERIMENTS.md, run 3): SmolLM2-135M-Instruct on the shared CLadder files.

    python -m capt_jax.experiment --config configs/experiment_cladder_smollm2.py \
        --methods base,sft,capt --seeds 0,1,2 --estimators oracle,self

Trained on 100 questions of the commonsense file; tested on the last tenth of the commonsense (id),
anticommonsense and nonsense files, less the questions whose template a trained one shares. The targets are the
answer alone (data.with_reasoning=False): CLadder's CausalCoT chains are arithmetic over stated probabilities,
which a 135M model is not expected to learn in 80 steps, and decoding them would take most of the budget. At
this budget no model beat the majority answer (docs/EXPERIMENTS.md, run 3). The rest is
run 2's budget: LoRA r16 on q/k/v/o, AdamW at 1e-3, 80 steps of batch 4, and every method also learns
estimation (the `map` form) on half of its rows, so CAPT can be its own first stage (`self`, the headline;
the oracle is an upper bound).
"""

from capt_jax.config import default_config


def get_config():
    c = default_config()
    c.workdir = "workdirs/experiment_cladder"
    c.model.path = "smollm2"
    c.lora.rank, c.lora.alpha, c.lora.dropout = 16, 32.0, 0.0
    c.data.kind = "capt"
    c.data.dataset = "cladder"  # ../shared/data/cladder, or data.data_dir / data.source=download
    c.data.n_train = 100
    c.data.with_reasoning = False
    c.data.estimation_weight = 1.0
    c.data.estimation_form = "map"
    c.train.max_steps = 80
    c.train.batch_size = 4
    c.train.seq_len = 640  # estimation rows reach about 570 tokens with the chat template
    c.train.learning_rate = 1e-3
    c.train.warmup_ratio = 0.1
    c.checkpoint.every_steps = 40
    c.eval.max_new_tokens = 24
    c.eval.estimator_max_new_tokens = 192  # the training maps take at most 151 tokens
    c.eval.estimator_retries = 0
    c.eval.batch_size = 32
    return c
