"""Float32 projections on an AVX-512 CPU through our own kernel (panel_matmul.cc, called with `jax.ffi`), on
weights packed once into [ceil(out / 48), in, 48] panels: what `generate.decoding_layout` gives `decode` there.

Why our own: at a decode step's 32 rows XLA:CPU's dot reads each weight and then multiplies it, one after the
other; the kernel prefetches the next panel while it multiplies the current one. One decode step's 211 products
took 92.4 ms against XLA's 107.6 on an AMD EPYC Zen 4 core (`benchmarks/panel_matmul.py`). It also writes its
output [rows, out] in row order, where XLA's faster weight-first product leaves a transpose for RoPE, SwiGLU
and the cache writes to read. The decode call at batch 32 took 0.92x as long (docs/PERFORMANCE.md, "Decoding
with packed panels").

The kernel is compiled on first use with the system C++ compiler into `outputs.cache_root()`. `available()` is
False, and decoding keeps XLA's products, on another backend, on a CPU without AVX-512, or without a compiler.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import math
import os
import pathlib
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp

PANEL = 48  # outputs per panel: three AVX-512 registers of float32
TARGET = "capt_jax_panel_matmul"
SOURCE = pathlib.Path(__file__).with_name("panel_matmul.cc")
FLAGS = ("-O3", "-std=c++17", "-mavx512f", "-mfma", "-shared", "-fPIC")
BUILD_TIMEOUT_S = 300

log = logging.getLogger(__name__)


def _has_avx512() -> bool:
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    return cpuinfo.exists() and "avx512f" in cpuinfo.read_text().split()


def _build(folder: pathlib.Path, compiler: str) -> None:
    """The shared library into `folder`, written under a unique name first so no reader sees half of it. The
    timeout bounds how long other processes wait on the build's lock if the compiler hangs."""
    folder.mkdir(parents=True, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(dir=folder, prefix="panel_matmul.so.")
    os.close(descriptor)
    try:
        command = [compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", partial]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        os.replace(partial, folder / "panel_matmul.so")
    finally:
        pathlib.Path(partial).unlink(missing_ok=True)


@functools.cache
def available() -> bool:
    """Whether the kernel runs here: a CPU backend with AVX-512, and the library built (once per source and jax
    version) and registered with XLA. Any failure is logged once and leaves XLA's products in place."""
    if jax.default_backend() != "cpu" or not _has_avx512():
        return False
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if compiler is None:
        log.info("panel_matmul: no C++ compiler on PATH; decoding keeps XLA's products")
        return False
    from capt_jax.outputs import built_once, cache_root

    try:
        key = hashlib.sha256(SOURCE.read_bytes() + " ".join((*FLAGS, jax.__version__)).encode()).hexdigest()[:16]
        folder = built_once(
            cache_root() / "panel_matmul" / key,
            lambda f: (f / "panel_matmul.so").exists(),
            lambda f: _build(f, compiler),
        )
        library = ctypes.cdll.LoadLibrary(str(folder / "panel_matmul.so"))
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.PanelMatmul), platform="cpu")
    except Exception as error:  # any failure to build, load or register leaves XLA's products, which always work
        detail = getattr(error, "stderr", "") or error
        log.warning("panel_matmul: the kernel could not be built or loaded (%s); decoding keeps XLA's products", detail)
        return False
    return True


@jax.jit
def pack(weight: jax.Array) -> jax.Array:
    """weight [out, in] -> panels [ceil(out / 48), in, 48], the last one zero-padded."""
    out, size = weight.shape
    padded = jnp.pad(weight, ((0, -out % PANEL), (0, 0)))
    return padded.reshape(-1, PANEL, size).transpose(0, 2, 1)


def matmul(x: jax.Array, panels: jax.Array, features: int) -> jax.Array:
    """x [..., in] @ W.T -> [..., features] for W packed by `pack` (float32 only; needs `available()`)."""
    if not available():
        raise RuntimeError("panels.matmul: the panel kernel does not run here (panels.available() is False)")
    rows = math.prod(x.shape[:-1])
    product = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((rows, features), jnp.float32))
    return product(x.reshape(rows, x.shape[-1]), panels).reshape(*x.shape[:-1], features)
