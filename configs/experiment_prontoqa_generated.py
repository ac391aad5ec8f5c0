"""The second CPU experiment of docs/EXPERIMENTS.md: a budget that SmolLM2-135M learns in distribution.

    python -m capt_jax.experiment --config configs/experiment_prontoqa_generated.py \
        --methods base,sft,capt,order --seeds 0,1,2 --estimators oracle,self

The first experiment (`experiment_prontoqa_smollm2.py`, the paper's 3-5 hop file) left every model at chance, so
it could not test CAPT's claim, which is about the OOD robustness of a model that answers in distribution. This
one uses the demo's setting, where 40 steps lift SmolLM2-135M well above chance: PrOntoQA from capt_jax's own
generator (true ontology with distractors, 1-3 hops), the demo's LoRA and learning rate, and twice its steps,
since every method also learns estimation (data.estimation_weight=1, the `map` form) on half of its rows.
3,000 generated questions give 300 test questions per split before the contamination guard, of which the first
200 it keeps are used. CAPT runs through the oracle (an upper bound) and through itself (`self`, the headline).
"""

from capt_jax.config import default_config


def get_config():
    c = default_config()
    c.workdir = "workdirs/experiment_generated"
    c.model.path = "smollm2"
    c.lora.rank, c.lora.alpha, c.lora.dropout = 16, 32.0, 0.0
    c.data.kind = "capt"
    c.data.dataset = "prontoqa"
    c.data.source = "generate"
    c.data.prontoqa_num_examples = 3000
    c.data.prontoqa_hops = (1, 3)
    c.data.n_train = 100
    c.data.estimation_weight = 1.0
    c.data.estimation_form = "map"
    c.train.max_steps = 80
    c.train.batch_size = 4
    c.train.seq_len = 320  # estimation rows reach 305 tokens
    c.train.learning_rate = 1e-3
    c.train.warmup_ratio = 0.1
    c.checkpoint.every_steps = 40
    c.eval.max_examples = 200
    c.eval.max_new_tokens = 64
    c.eval.estimator_max_new_tokens = 128  # maps take at most 97 tokens here
    c.eval.estimator_retries = 0
    c.eval.batch_size = 32
    return c
