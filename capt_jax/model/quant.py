"""Quantized frozen projections (QLoRA): NF4 or int8 codes with blockwise absmax scales, dequantized inside the
matmul of the layer that uses them.

Why our own code rather than qwix: qwix (0.1.8) quantizes by intercepting the einsum calls of a Flax model and
keeps its weights as `WithAux`/`QArray` objects, while our base is a plain dict of arrays that the safetensors
loader, `param_shapes`/`param_axes`, the placer, orbax and export exchange, and its LoRA provider would duplicate
our adapter collection. It has no double quantisation of the scales (the QLoRA paper's setting), and it stores
nf4 as `jnp.uint4`, whose arrays count one byte per value (`jnp.zeros(10, jnp.uint4).nbytes == 10`), not two
values per byte. What is needed here is small: a code book, a blockwise quantiser run once per tensor at load,
a dequantiser, and a matmul whose backward pass dequantizes again.

A weight W [out, in] is cut along `in` into blocks of BLOCK = 64 (rows are zero-padded to a whole block, which
never happens for real models), each scaled by its absmax, as bitsandbytes does; for in % 64 == 0 the blocks are
bitsandbytes' blocks of the flattened tensor, and the bytes are the same:

    nf4   codes uint8 [out, in/2]: the index of the nearest NF4 value, two per byte, high nibble first
    int8  codes int8  [out, in]: round(127 * w / absmax)
          scales f32 [out, in/64]: the blocks' absmax

With double quantisation the scales are stored as int8 codes of (absmax - their mean) in blocks of
SCALE_BLOCK = 256 (of the flattened [out, in/64] scales), each with its own float32 absmax: 8.1 bits per 64 weights
instead of 32. bitsandbytes keeps the same layout but uses its 8-bit dynamic code for the second level; a linear
int8 code is simpler and, for values near a block's maximum, finer (steps of 1/127 of it against 0.9/64).

`quantized_matmul` is x @ dequantize(W).T with a custom VJP whose residuals are the codes themselves: autodiff of
the plain expression would keep each layer's dequantized weight for the backward pass, stacked over the scanned
layers into a full-precision copy of the model. So a layer's weight exists in compute precision only inside its
step of the scan, in training, prefill and decode alike. (That is why a quantized base decodes on the scanned
layers: unscanned, XLA hoists every dequantized weight out of the token loop; `generate.scans_when_decoding`.)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from capt_jax.model.kernels import matmul_weight_t

QUANTIZE_KINDS = ("none", "int8", "nf4")
BLOCK = 64
SCALE_BLOCK = 256
INT8_MAX = 127

# The 16 NormalFloat values of the QLoRA paper (Dettmers et al. 2023, appendix E), as bitsandbytes stores them:
# quantiles of N(0, 1) normalised to [-1, 1], with an exact zero.
NF4_CODE = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    np.float32,
)
_NF4_MIDPOINTS = (NF4_CODE[1:] + NF4_CODE[:-1]) / 2

# Leaf name -> which of the weight's logical axes (out, in) it keeps; the rest are replicated. Scales do not
# keep `in`: its block count (in / 64) rarely divides a mesh axis, and they are 1/16 of the codes or less.
LEAF_AXES = {
    "codes": ("out", "in"),
    "scales": ("out", None),
    "scale_codes": ("out", None),
    "scale_scales": (None,),
    "scale_offset": (),
}


@dataclasses.dataclass(frozen=True)
class Quantization:
    """How the frozen projections are stored: kind "int8" or "nf4", and whether their scales are quantized too."""

    kind: str
    double_quant: bool = False

    def leaf_names(self) -> tuple[str, ...]:
        scales = ("scale_codes", "scale_scales", "scale_offset") if self.double_quant else ("scales",)
        return ("codes", *scales)


def leaf_axes(quant: Quantization, axes: tuple[str, str]) -> dict[str, tuple[str | None, ...]]:
    """Logical axis names of each stored leaf of a weight whose own axes are `axes` = (out, in)."""
    names = dict(zip(("out", "in"), axes))
    return {leaf: tuple(names.get(a) for a in LEAF_AXES[leaf]) for leaf in quant.leaf_names()}


def _blocks(weight: jax.Array) -> jax.Array:
    """[out, in] -> float32 [out, ceil(in / 64), 64], zero-padded."""
    out, width = weight.shape
    padded = jnp.pad(weight.astype(jnp.float32), ((0, 0), (0, -width % BLOCK)))
    return padded.reshape(out, -1, BLOCK)


def _safe(absmax: jax.Array) -> jax.Array:
    """An all-zero block keeps scale 0 but is divided by 1: its codes are those of 0."""
    return jnp.where(absmax > 0, absmax, 1.0)


def quantize(weight: jax.Array, quant: Quantization) -> dict[str, jax.Array]:
    """The stored leaves of one weight [out, in] (any float dtype), as described in the module docstring."""
    blocks = _blocks(weight)
    absmax = jnp.max(jnp.abs(blocks), axis=-1)
    normed = blocks / _safe(absmax)[..., None]
    out = weight.shape[0]
    if quant.kind == "nf4":
        index = jnp.searchsorted(jnp.asarray(_NF4_MIDPOINTS), normed).astype(jnp.uint8)
        codes = ((index[..., 0::2] << 4) | index[..., 1::2]).reshape(out, -1)
    else:
        codes = jnp.round(normed * INT8_MAX).astype(jnp.int8).reshape(out, -1)
    return {"codes": codes, **_scale_leaves(absmax, quant)}


def _scale_leaves(absmax: jax.Array, quant: Quantization) -> dict[str, jax.Array]:
    if not quant.double_quant:
        return {"scales": absmax}
    flat = absmax.reshape(-1)
    offset = jnp.mean(flat)
    centred = jnp.pad(flat - offset, (0, -flat.size % SCALE_BLOCK)).reshape(-1, SCALE_BLOCK)
    top = jnp.max(jnp.abs(centred), axis=-1)
    codes = jnp.round(centred / _safe(top)[:, None] * INT8_MAX).astype(jnp.int8)
    return {
        "scale_codes": codes.reshape(-1)[: flat.size].reshape(absmax.shape),
        "scale_scales": top,
        "scale_offset": offset,
    }


def block_scales(leaves: dict[str, jax.Array], quant: Quantization) -> jax.Array:
    """float32 absmax of every block [out, ceil(in / 64)], decoded from the second level under double_quant."""
    if not quant.double_quant:
        return leaves["scales"]
    codes = leaves["scale_codes"]
    flat = jnp.pad(codes.reshape(-1).astype(jnp.float32), (0, -codes.size % SCALE_BLOCK)).reshape(-1, SCALE_BLOCK)
    flat = flat * (leaves["scale_scales"] / INT8_MAX)[:, None]
    return flat.reshape(-1)[: codes.size].reshape(codes.shape) + leaves["scale_offset"]


def dequantize(leaves: dict[str, jax.Array], quant: Quantization, in_features: int, dtype: jnp.dtype) -> jax.Array:
    """The weight [out, in] in `dtype`, computed in float32 and rounded once."""
    codes = leaves["codes"]
    out = codes.shape[0]
    if quant.kind == "nf4":
        table = jnp.asarray(NF4_CODE)
        values = jnp.stack([table[codes >> 4], table[codes & 15]], axis=-1).reshape(out, -1, BLOCK)
    else:
        values = codes.astype(jnp.float32).reshape(out, -1, BLOCK) / INT8_MAX
    weight = values * block_scales(leaves, quant)[..., None]
    return weight.reshape(out, -1)[:, :in_features].astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def quantized_matmul(x: jax.Array, leaves: dict[str, jax.Array], quant: Quantization, in_features: int) -> jax.Array:
    """x [..., in] @ W.T -> [..., out] in x's dtype, W dequantized from `leaves`; gradients flow to x only (the
    base is frozen), and the backward pass dequantizes W again instead of keeping it."""
    return matmul_weight_t(x, dequantize(leaves, quant, in_features, x.dtype))


def _matmul_fwd(x, leaves, quant, in_features):
    return quantized_matmul(x, leaves, quant, in_features), leaves


def _matmul_bwd(quant, in_features, leaves, d_out):
    return jnp.einsum("...o,oi->...i", d_out, dequantize(leaves, quant, in_features, d_out.dtype)), None


quantized_matmul.defvjp(_matmul_fwd, _matmul_bwd)
