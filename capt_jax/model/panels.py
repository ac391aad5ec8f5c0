"""Float32 projections on an x86 CPU through our own kernel (panel_matmul.cc, called with `jax.ffi`), on weights
packed once into [ceil(out / P), in, P] panels: what `generate.decoding_layout` gives `decode` there. P is 48
with AVX-512 and 24 with AVX2 and FMA, three vector registers wide.

Why our own: at a decode step's 32 rows XLA:CPU's dot reads each weight and then multiplies it, one after the
other; the kernel prefetches the next panel while it multiplies the current one. One decode step's 211 products
took 84.7 ms (AVX2) and 88.1 ms (AVX-512) against XLA's 105.2 on an AMD EPYC Zen 4 core
(`benchmarks/panel_matmul.py`). It also writes its output [rows, out] in row order, where XLA's faster
weight-first product leaves a transpose for RoPE, SwiGLU and the cache writes to read. The decode call at batch
32 took 0.91x (AVX2) and 0.92x (AVX-512) as long as on XLA's products (docs/PERFORMANCE.md, "Decoding with
packed panels").

The kernel is compiled on first use with the system C++ compiler into `outputs.cache_root()`, once per
instruction set, AVX2 first (`INSTRUCTION_SETS` says why). `available()` is False, and decoding keeps XLA's
products, on another backend, on a CPU with neither instruction set, or without a compiler. `CAPT_JAX_PANELS`
set to "off" keeps XLA's products, and set to "avx2" or "avx512" takes that kernel.
"""

from __future__ import annotations

import ctypes
import dataclasses
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

TARGET = "capt_jax_panel_matmul"
SOURCE = pathlib.Path(__file__).with_name("panel_matmul.cc")
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC")
BUILD_TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class InstructionSet:
    cpu_flags: tuple[str, ...]  # as /proc/cpuinfo names them
    compiler_flags: tuple[str, ...]
    width: int  # outputs per panel: three vector registers of float32


# The default first. The two kernels give bit-identical products (each output is the same chain of FMAs over k),
# so the order changes speed only: on an AMD Zen 4, which runs a 512-bit FMA as two 256-bit halves, the AVX2
# kernel took a decode step's products in 84.7 ms against the AVX-512 kernel's 88.1 (docs/PERFORMANCE.md, "The
# AVX2 build"). CPUs where the AVX-512 kernel is faster can name it in CAPT_JAX_PANELS.
INSTRUCTION_SETS = {
    # -mno-avx512f: a compiler that targets the host by default would otherwise build the AVX-512 kernel here.
    "avx2": InstructionSet(("avx2", "fma"), ("-mavx2", "-mfma", "-mno-avx512f"), 24),
    "avx512": InstructionSet(("avx512f",), ("-mavx512f", "-mfma"), 48),
}

log = logging.getLogger(__name__)


@functools.cache
def cpu_has(name: str) -> bool:
    """Whether this CPU has instruction set `name` (an INSTRUCTION_SETS key), as /proc/cpuinfo lists it."""
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    return cpuinfo.exists() and set(INSTRUCTION_SETS[name].cpu_flags) <= set(cpuinfo.read_text().split())


def instruction_set() -> str | None:
    """The instruction set whose kernel decodes here: the one `CAPT_JAX_PANELS` names, else the first of
    INSTRUCTION_SETS this CPU has whose kernel builds and loads; None for "off", or where none runs."""
    return next(filter(runs_here, _candidates(os.environ.get("CAPT_JAX_PANELS", ""))), None)


@functools.cache  # so each warning is logged once
def _candidates(chosen: str) -> tuple[str, ...]:
    if chosen == "off":
        return ()
    if chosen not in ("", *INSTRUCTION_SETS):
        log.warning(
            "CAPT_JAX_PANELS=%s: expected off, %s; choosing as if it were unset", chosen, ", ".join(INSTRUCTION_SETS)
        )
        chosen = ""
    if chosen and not cpu_has(chosen):
        log.warning("CAPT_JAX_PANELS=%s: this CPU lacks it; decoding keeps XLA's products", chosen)
    return (chosen,) if chosen else tuple(INSTRUCTION_SETS)


def for_width(width: int) -> str | None:
    """The instruction set whose kernel multiplies panels `width` outputs wide."""
    return next((name for name, s in INSTRUCTION_SETS.items() if s.width == width), None)


def _build(folder: pathlib.Path, compiler: str, flags: tuple[str, ...]) -> None:
    """The shared library into `folder`, written under a unique name first so no reader sees half of it. The
    timeout bounds how long other processes wait on the build's lock if the compiler hangs."""
    folder.mkdir(parents=True, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(dir=folder, prefix="panel_matmul.so.")
    os.close(descriptor)
    try:
        command = [compiler, *flags, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", partial]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        os.chmod(partial, 0o755)  # mkstemp's 0600 would keep other users of a shared cache from loading it
        os.replace(partial, folder / "panel_matmul.so")
    finally:
        pathlib.Path(partial).unlink(missing_ok=True)


def available() -> bool:
    """Whether a kernel decodes here: a CPU backend, an instruction set it is written for, and its library built
    (once per source, instruction set and jax version) and registered with XLA."""
    return instruction_set() is not None


def width() -> int:
    """Outputs per panel for the kernel that decodes here."""
    name = instruction_set()
    if name is None:
        raise RuntimeError("panels.width: no panel kernel runs here (panels.available() is False)")
    return INSTRUCTION_SETS[name].width


@functools.cache
def runs_here(name: str) -> bool:
    """Whether the kernel for instruction set `name` runs here: on a CPU backend and a CPU that has `name`, built,
    loaded and registered (once). Any failure is logged once and leaves XLA's products in place."""
    if jax.default_backend() != "cpu" or not cpu_has(name):
        return False
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if compiler is None:
        log.info("panel_matmul: no C++ compiler on PATH; decoding keeps XLA's products")
        return False
    from capt_jax.outputs import built_once, cache_root

    flags = (*FLAGS, *INSTRUCTION_SETS[name].compiler_flags)
    try:
        key = hashlib.sha256(SOURCE.read_bytes() + " ".join((*flags, jax.__version__)).encode()).hexdigest()[:16]
        folder = built_once(
            cache_root() / "panel_matmul" / f"{name}-{key}",
            lambda f: (f / "panel_matmul.so").exists(),
            lambda f: _build(f, compiler, flags),
        )
        library = ctypes.cdll.LoadLibrary(str(folder / "panel_matmul.so"))
        jax.ffi.register_ffi_target(f"{TARGET}_{name}", jax.ffi.pycapsule(library.PanelMatmul), platform="cpu")
    except Exception as error:  # any failure to build, load or register leaves XLA's products, which always work
        detail = getattr(error, "stderr", "") or error
        log.warning("panel_matmul: the %s kernel could not be built or loaded (%s)", name, detail)
        return False
    return True


@functools.partial(jax.jit, static_argnums=1)
def pack(weight: jax.Array, width: int) -> jax.Array:
    """weight [out, in] -> panels [ceil(out / width), in, width], the last one zero-padded."""
    out, size = weight.shape
    padded = jnp.pad(weight, ((0, -out % width), (0, 0)))
    return padded.reshape(-1, width, size).transpose(0, 2, 1)


def matmul(x: jax.Array, panels: jax.Array, features: int) -> jax.Array:
    """x [..., in] @ W.T -> [..., features] for W packed by `pack` (float32 only), on the kernel of the panels'
    width, which must run here."""
    name = for_width(panels.shape[-1])
    if name is None or not runs_here(name):
        raise RuntimeError(f"panels.matmul: no panel kernel of width {panels.shape[-1]} runs here")
    rows = math.prod(x.shape[:-1])
    product = jax.ffi.ffi_call(f"{TARGET}_{name}", jax.ShapeDtypeStruct((rows, features), jnp.float32))
    return product(x.reshape(rows, x.shape[-1]), panels).reshape(*x.shape[:-1], features)
