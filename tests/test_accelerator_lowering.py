"""What a CPU can prove of the accelerator paths: jax lowers them for CUDA and TPU without either.

The LoRA step (of a tiny Qwen2, and of Qwen2.5-3B at the device check's 8 x 1024) and greedy generation in bf16,
through the cuDNN attention branch, are lowered for the "cuda" platform, and the step, through XLA's attention,
for "tpu"; weights are shapes only. That runs jax's Python checks of the cuDNN call (layouts, head size, the
bias's shape, the flash-kernel conditions, as for a GPU older than Hopper) and its lowering under scan, remat and
the gradient, which the CPU tests of the call site (test_kernels.py) run with implementation "xla" instead.
Whether cuDNN then builds and runs the graph is left to the device check.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from packaging.version import Version

from capt_jax.architectures import ARCHS
from capt_jax.config import default_config
from capt_jax.generate import Sampling, decode
from capt_jax.lora import init_lora, make_optimizer, warmup_cosine
from capt_jax.model import ModelConfig, init_params
from capt_jax.model import attention as attention_module
from capt_jax.train import make_train_step

FORWARD, BACKWARD = "__cudnn$fmhaScaleBiasSoftmax", "__cudnn$fmhaScaleBiasSoftmaxBackward"


@pytest.fixture
def cudnn_without_a_gpu(monkeypatch):
    """The cuDNN branch, which `attend` takes on a GPU in half precision, lowered as for a GPU. jax asks the CUDA
    plugin for cuDNN's version before it lowers the call, and a CPU has none, so 9.8 answers: in jax 0.10-0.11 the
    version gates only what this call does not use (multi-head latent attention, compute capability 10.3). jax
    checks the call as for a GPU older than Hopper here (head size at most 128), stricter than an H100."""
    try:
        from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention
    except ImportError:
        pytest.skip("this jax keeps its cuDNN attention elsewhere")
    if not hasattr(cudnn_attention, "check_cudnn_version"):
        pytest.skip("this jax checks cuDNN's version elsewhere")
    monkeypatch.setattr(cudnn_attention, "check_cudnn_version", lambda: 90800)
    monkeypatch.setattr(attention_module, "attention_implementation", lambda config: "cudnn")


def lowered_for(platform: str, fn, *args) -> str:
    """`fn` lowered for `platform` (no device of it needed), as MLIR text."""
    return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def bf16_model(arch: str, **changes) -> tuple[ModelConfig, dict]:
    """A config computing in bf16 and its weights as shapes: lowering needs no values, so even the 3B costs none."""
    model_config = ModelConfig.from_hf_dict(ARCHS[arch]).replace(dtype="bfloat16", **changes)
    return model_config, jax.eval_shape(lambda: init_params(model_config, jax.random.PRNGKey(0), "bfloat16"))


def step_module(platform: str, arch: str, batch_size: int, length: int, remat_policy: str) -> str:
    """The LoRA train step (bf16 compute, scanned layers), lowered for `platform`, as MLIR text."""
    model_config, params = bf16_model(arch, remat_policy=remat_policy)
    config = default_config()
    config.lora.rank, config.lora.dropout = 8, 0.1
    schedule = warmup_cosine(1e-3, 10, 0.0)
    optimizer = make_optimizer(schedule, 0.01, 1.0)
    lora = jax.eval_shape(lambda: init_lora(model_config, config.lora.targets, 8, jax.random.PRNGKey(0)))
    state = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "lora": lora,
        "opt": jax.eval_shape(optimizer.init, lora),
        "rng": jax.eval_shape(jax.random.PRNGKey, 0),
    }
    tokens = jax.ShapeDtypeStruct((1, batch_size, length), jnp.int32)
    batch = {
        "inputs": tokens,
        "targets": tokens,
        "weights": jax.ShapeDtypeStruct((1, batch_size, length), jnp.float32),
        "task": jax.ShapeDtypeStruct((1, batch_size), jnp.int32),
        "mask": jax.ShapeDtypeStruct((1, batch_size, length), jnp.bool_),
    }
    return lowered_for(platform, make_train_step(model_config, config, optimizer, schedule), state, params, batch)


def custom_calls(module: str, target: str) -> list[str]:
    return [line for line in module.splitlines() if f"custom_call @{target}(" in line]


@pytest.mark.parametrize(
    "arch, batch_size, length, remat_policy",
    [("tiny", 2, 32, "none"), ("tiny", 2, 32, "full"), ("qwen2.5-3b", 8, 1024, "dots")],
)
def test_the_training_step_lowers_to_cudnn_flash_attention_for_a_gpu(
    cudnn_without_a_gpu, arch, batch_size, length, remat_policy
):
    module = step_module("cuda", arch, batch_size, length, remat_policy)
    bias = f"tensor<{batch_size}x1x{length}x{length}xbf16>"
    forward, backward = custom_calls(module, FORWARD), custom_calls(module, BACKWARD)
    assert forward and backward, "no cuDNN attention in the step lowered for CUDA"
    for call in forward + backward:
        assert "mask_type\\22: \\22CAUSAL\\22" in call, "the call is not marked causal"
        assert bias in call.split("->")[0], "the mask is not its bias"
    # jax 0.11.1 (PR #39512) stopped computing the gradient of a bias that comes from a boolean mask alone.
    bias_gradient = [bias in call.split("->")[-1] for call in backward]
    assert set(bias_gradient) == {Version(jax.__version__).release < (0, 11, 1)}


def test_generation_lowers_its_prefill_to_cudnn_for_a_gpu(cudnn_without_a_gpu):
    """The prompt goes through cuDNN's forward call, with no gradient. (Traced on a CPU, generation scans its layers;
    on a GPU in bf16 it would not, which changes how many calls there are, not what each is.)"""
    model_config, params = bf16_model("tiny")
    prompts = jax.ShapeDtypeStruct((4, 16), jnp.int32)
    prompt_mask = jax.ShapeDtypeStruct((4, 16), jnp.bool_)

    def generate(params, prompts, prompt_mask, rng):
        greedy = Sampling()
        return decode(
            params,
            prompts,
            prompt_mask,
            rng,
            config=model_config,
            max_new_tokens=4,
            sampling=greedy,
            eos_ids=(0,),
            pad_id=0,
        )

    module = lowered_for("cuda", generate, params, prompts, prompt_mask, jax.eval_shape(jax.random.PRNGKey, 0))
    assert custom_calls(module, FORWARD) and not custom_calls(module, BACKWARD)


@pytest.mark.parametrize("arch, batch_size, length", [("tiny", 2, 32), ("qwen2.5-3b", 8, 1024)])
def test_the_training_step_lowers_for_a_tpu(arch, batch_size, length):
    """XLA's attention, and no custom call: nothing in the step exists only on a CPU or a GPU."""
    module = step_module("tpu", arch, batch_size, length, "dots")
    assert "custom_call @" not in module
