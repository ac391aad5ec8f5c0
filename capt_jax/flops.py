"""Model FLOPs of a LoRA training step and of generation, and the devices' datasheet peaks: the numerator and
denominator of MFU, shared by capt_jax.bench and the transformers + peft peer (framework-free: the formulas read
the fields of a ModelConfig).

FLOP formula (model FLOPs: what the maths needs, so recomputation under remat is not counted):

    N     = L * sum over the 7 projections of (in * out) + V * D          (every matmul weight; lm_head included)
    attn  = 4 * L * Hq * hd * c                                            (QK^T and PV for one query over c keys)
    LoRA training, per token of a length-T sequence:
        forward 2N + input-gradient backward 2N                            (frozen base: no weight gradients)
        + 6 * L * r * sum over adapted projections of (in + out)           (adapter fwd 2r(i+o), bwd 4r(i+o))
        + 3 * attn(c = (T + 1) / 2)                                        (causal: mean keys per query; bwd = 2x fwd)
    generation: prefill 2(N - V*D) + attn((P + 1) / 2) per prompt token, 2VD for the last position's logits,
        then per new token 2N + attn(c) with c its context length.

MFU = FLOPs per second / peak: the dense datasheet peak of the device kind for the dtype (PEAK_FLOPS), or on a CPU
the best rate of a large matmul measured in the same process (`peak_flops_source` says which); `--peak-flops`
overrides both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Dense (no sparsity) peak FLOP/s per device from the vendors' datasheets: (substring of device_kind, dtype).
# float32 on NVIDIA is the TF32 tensor-core rate (XLA's default precision for f32 dots on Ampere and later).
# The first matching substring wins, so the specific names come first.
PEAK_FLOPS: list[tuple[str, str, float]] = [
    ("H100 PCIe", "bfloat16", 756e12),
    ("H100 PCIe", "float16", 756e12),
    ("H100 PCIe", "float32", 378e12),
    ("H100 NVL", "bfloat16", 835e12),
    ("H100 NVL", "float16", 835e12),
    ("H100 NVL", "float32", 418e12),
    ("H100", "bfloat16", 989.4e12),  # H100 SXM5
    ("H100", "float16", 989.4e12),
    ("H100", "float32", 494.7e12),
    ("H200", "bfloat16", 989.4e12),
    ("H200", "float16", 989.4e12),
    ("H200", "float32", 494.7e12),
    ("A100", "bfloat16", 312e12),
    ("A100", "float16", 312e12),
    ("A100", "float32", 156e12),
    ("TPU v4", "bfloat16", 275e12),
    ("TPU v5 lite", "bfloat16", 197e12),
    ("TPU v5e", "bfloat16", 197e12),
    ("TPU v5p", "bfloat16", 459e12),
    ("TPU v5", "bfloat16", 459e12),
    ("TPU v6", "bfloat16", 918e12),
]


def datasheet_peak(device_kind: str, dtype: str) -> float | None:
    for kind, kind_dtype, peak in PEAK_FLOPS:
        if kind.lower() in device_kind.lower() and kind_dtype == dtype:
            return peak
    return None


def projection_dims(cfg: Any) -> dict[str, tuple[int, int]]:
    """(in, out) of every projection of one layer, for a ModelConfig."""
    D, F = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return {
        "q_proj": (D, q),
        "k_proj": (D, kv),
        "v_proj": (D, kv),
        "o_proj": (q, D),
        "gate_proj": (D, F),
        "up_proj": (D, F),
        "down_proj": (F, D),
    }


def matmul_params(cfg: Any) -> int:
    """N: every weight that takes part in a matmul per token (the layers' projections and the LM head)."""
    per_layer = sum(i * o for i, o in projection_dims(cfg).values())
    return cfg.num_layers * per_layer + cfg.vocab_size * cfg.hidden_size


def attention_flops(cfg: Any, context: float) -> float:
    """QK^T and PV of one query token over `context` keys, all layers (the softmax is not counted)."""
    return 4.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * context


def train_flops_per_token(cfg: Any, seq: int, rank: int, targets: Sequence[str]) -> dict[str, float]:
    """Model FLOPs per token of a LoRA step on length-`seq` rows, by part (see the module docstring)."""
    dims = projection_dims(cfg)
    base = 4.0 * matmul_params(cfg)  # forward 2N + input gradients 2N; no base-weight gradients
    lora = 6.0 * cfg.num_layers * rank * sum(sum(dims[t]) for t in targets)
    attention = 3.0 * attention_flops(cfg, (seq + 1) / 2)
    return {"base": base, "lora": lora, "attention": attention, "total": base + lora + attention}


def generate_flops(cfg: Any, batch: int, prompt_len: int, new_tokens: int) -> float:
    """Prefill of the prompt (logits of its last position only) plus new_tokens - 1 decode steps."""
    n, head = matmul_params(cfg), cfg.vocab_size * cfg.hidden_size
    prefill = prompt_len * (2.0 * (n - head) + attention_flops(cfg, (prompt_len + 1) / 2)) + 2.0 * head
    decode = sum(2.0 * n + attention_flops(cfg, prompt_len + i + 1) for i in range(1, new_tokens))
    return batch * (prefill + decode)
