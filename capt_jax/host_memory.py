"""glibc malloc settings for a capt_jax command: keep freed memory in the process instead of returning it.

XLA:CPU allocates a step's temporaries as one block (1.85 GB for the SmolLM2-135M LoRA step at 4 x 256) and
frees it when the step ends. By default glibc serves such a block with a fresh mmap and unmaps it on free, so
every step faults half a million new pages in again (docs/PERFORMANCE.md, "--malloc retain"). One malloc
arena, no mmap and no trimming make the next step reuse the same pages: the step measured 4% faster, with half
the page faults. The cost is that the process keeps its peak footprint until it exits, which a training or
benchmark process does anyway.

The settings only reach threads that first allocate after them, so they are applied before jax starts its
backend: by `capt_jax.cli.run` for a real command line. `CAPT_JAX_KEEP_FREED_MEMORY=0` turns them off; where
libc is not glibc they are skipped.
"""

from __future__ import annotations

import ctypes
import os

# mallopt parameters (malloc.h): M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX.
_TRIM_THRESHOLD, _MMAP_MAX, _ARENA_MAX = -1, -4, -8
_SETTINGS = ((_ARENA_MAX, 1), (_MMAP_MAX, 0), (_TRIM_THRESHOLD, 2**31 - 1))


def keep_freed_memory() -> bool:
    """Apply the settings; True when glibc took all of them."""
    if os.environ.get("CAPT_JAX_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to set
        return False
    return all(mallopt(param, value) == 1 for param, value in _SETTINGS)
