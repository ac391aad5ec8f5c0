"""glibc malloc settings for a capt_jax training or benchmark command: keep freed memory in the process.

XLA:CPU allocates a step's temporaries as one block (1.85 GB for the SmolLM2-135M LoRA step at 4 x 256) and
frees it when the step ends. By default glibc serves such a block with a fresh mmap and unmaps it on free, so
every step faults its pages in again (docs/PERFORMANCE.md, "What each optimisation bought on CPU"). One malloc
arena, no mmap and no trimming make the next step reuse the same pages: on one CPU core the step measured 3.6%
faster, with half the page faults. The cost is that the process keeps its peak footprint until it exits, which
a training process does anyway. Decoding did not gain, so evaluation and generation leave malloc alone.

The settings only reach threads that first allocate after them, so `capt_jax.cli.run` applies them before jax
starts its backend, for the commands that ask (`cli.Command.keep_freed_memory`). They are skipped where libc is
not glibc, on hosts with a jax GPU or TPU plugin (only XLA:CPU was measured, and one arena would serialise the
host threads of an accelerator run), and with `CAPT_JAX_KEEP_FREED_MEMORY=0`.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os

# mallopt parameters (malloc.h); a trim threshold of -1 turns trimming off.
_TRIM_THRESHOLD, _MMAP_MAX, _ARENA_MAX = -1, -4, -8
_SETTINGS = ((_ARENA_MAX, 1), (_MMAP_MAX, 0), (_TRIM_THRESHOLD, -1))
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "libtpu")


def keep_freed_memory() -> bool:
    """Apply the settings; True when glibc took all of them."""
    if os.environ.get("CAPT_JAX_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if any(importlib.util.find_spec(name) is not None for name in ACCELERATOR_PLUGINS):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to set
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    taken = [mallopt(param, value) == 1 for param, value in _SETTINGS]  # a list: every setting is tried
    return all(taken)
