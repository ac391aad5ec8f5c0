"""Float32 logits match transformers on tiny random Llama and Qwen2 checkpoints, padded and not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import capt_jax

TOLERANCE = 1e-4


def relative_error(out: np.ndarray, ref: np.ndarray, where: np.ndarray | None = None) -> float:
    diff = np.abs(out - ref)
    return float((diff[where] if where is not None else diff).max() / np.abs(ref).max())


def reference_model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture(params=["tiny_llama_dir", "tiny_qwen2_dir"])
def model_dir(request):
    return request.getfixturevalue(request.param)


def test_loaded_config_reflects_architecture(tiny_llama_dir, tiny_qwen2_dir):
    llama = capt_jax.ModelConfig.from_pretrained_dir(tiny_llama_dir)
    qwen = capt_jax.ModelConfig.from_pretrained_dir(tiny_qwen2_dir)
    assert llama.rope_type == "llama3" and not llama.tie_word_embeddings and not llama.qkv_bias
    assert qwen.rope_type == "default" and qwen.tie_word_embeddings and qwen.qkv_bias
    assert (tiny_llama_dir / "model.safetensors.index.json").is_file()


def test_logits_match_transformers(model_dir):
    model = capt_jax.load_pretrained(model_dir, progress=False)
    ids = torch.randint(0, 128, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = reference_model(model_dir)(ids).logits.numpy()
    out = np.asarray(model.logits(ids.numpy()))
    assert out.shape == ref.shape
    assert relative_error(out, ref) <= TOLERANCE


def test_left_padded_logits_match_transformers(model_dir):
    model = capt_jax.load_pretrained(model_dir, progress=False)
    ids = torch.randint(0, 128, (3, 40), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    mask[2, :31] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # what transformers' generate passes for left padding
    with torch.no_grad():
        ref = reference_model(model_dir)(ids, attention_mask=mask, position_ids=positions).logits.numpy()
    out = np.asarray(model.logits(ids.numpy(), mask.numpy()))
    real = mask.numpy().astype(bool)
    assert np.isfinite(out).all()
    assert relative_error(out, ref, real) <= TOLERANCE
    # A padded row equals the same tokens run alone, unpadded.
    alone = np.asarray(model.logits(ids[2:, 31:].numpy()))
    assert relative_error(out[2, 31:], alone[0]) <= TOLERANCE


def test_bfloat16_load_runs_close_to_float32(tiny_qwen2_dir):
    f32 = capt_jax.load_pretrained(tiny_qwen2_dir, progress=False)
    bf16 = capt_jax.load_pretrained(tiny_qwen2_dir, dtype="bfloat16", progress=False)
    assert all(leaf.dtype == np.dtype("bfloat16") for leaf in __import__("jax").tree.leaves(bf16.params))
    ids = np.arange(24, dtype=np.int32)[None] % 128
    a, b = np.asarray(f32.logits(ids)), np.asarray(bf16.logits(ids)).astype(np.float32)
    assert relative_error(b, a) < 0.1
