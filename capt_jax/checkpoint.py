"""Orbax checkpoints of the trainable state under {workdir}/checkpoints/<step>/.

A checkpoint holds the trainable tree (LoRA params and any extra trained leaves), optimizer state, step and RNG
(the `state` item) plus JSON metadata: the data position, what export needs (LoRA rank/alpha/targets, base
model path and `base_quantization`) and `state_layout`. The frozen base is never saved: it is re-read from
model.path. Saves are async; the manager keeps the last `keep`.

State layouts: 1 (no `state_layout` key) was written before the Flax port, with one AdamW over all adapters
inside multi_transform({"lora", "frozen"}); 2 clips first, then keeps one AdamW per optax label (lora_a, lora_b,
extra). The adapters themselves are stored identically in both, so export and evaluation read either.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from capt_jax.errors import CaptError

STATE_LAYOUT = 2
# What a checkpoint's `base_quantization` meta defaults to: before QLoRA every base was full precision.
FULL_PRECISION_BASE = {"quantize": "none", "double_quant": False}


class _ReadOnlyNotices(logging.Filter):
    """Drops the two warnings orbax logs for every read-only manager: reading is all capt_jax asks of it there."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(
            ("CheckpointManagerOptions.read_only=True", "Given directory is read only")
        )


logging.getLogger("absl").addFilter(_ReadOnlyNotices())


class CheckpointError(CaptError, ValueError):
    """A checkpoint folder that cannot be restored into this run."""


def checkpoint_dir(workdir: str) -> epath.Path:
    """{workdir}/checkpoints, absolute (orbax refuses relative paths); URLs such as gs:// are kept as given."""
    return epath.Path(workdir if "://" in str(workdir) else os.path.abspath(workdir)) / "checkpoints"


def manager(workdir: str, keep: int = 3, async_save: bool = True, read_only: bool = False) -> ocp.CheckpointManager:
    """read_only: open an existing folder for restoring (creates nothing, deletes nothing).

    A writing manager first removes the half-written temporary folders a hard kill leaves mid-save."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep,
        enable_async_checkpointing=async_save,
        create=not read_only,
        cleanup_tmp_directories=not read_only,
    )
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(mgr: ocp.CheckpointManager, step: int, state: Any, meta: dict[str, Any]) -> None:
    meta = {**meta, "state_layout": STATE_LAYOUT}
    mgr.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True
    )


def restore(mgr: ocp.CheckpointManager, like: Any, step: int | None = None) -> tuple[Any, dict[str, Any]] | None:
    """The latest (or given) checkpoint restored onto the shardings of `like`; None when there is none."""
    step = mgr.latest_step() if step is None else step
    if step is None:
        return None
    where = f"{mgr.directory}/{step}"
    layout = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta.get("state_layout", 1)
    if layout != STATE_LAYOUT:
        raise CheckpointError(
            f"{where}: written by capt_jax before the Flax port (state layout {layout}, this version writes "
            f"{STATE_LAYOUT}): its optimizer state is one AdamW over all adapters, while training now keeps one "
            "AdamW per optax label (lora_a, lora_b, extra), so it cannot be resumed. Its adapters still export "
            "and evaluate (python -m capt_jax.export / capt_jax.evaluate); to resume it, use capt_jax at commit "
            "bccce74, or start a new workdir"
        )
    check_trainable_shapes(mgr.directory, step, like["lora"], where)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
    try:
        restored = mgr.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
    except Exception as e:  # a checkpoint from another model, rank, targets or extras: say where and what
        raise CheckpointError(
            f"{where}: cannot be restored into this run (different model, lora.rank, lora.targets or "
            f"lora.extra_trainable?): {type(e).__name__}: {e}"
        ) from e
    return restored.state, dict(restored.meta)


def check_trainable_shapes(directory: epath.Path, step: int, like: Any, where: str) -> None:
    """The stored trainable tree has `like`'s leaves and shapes, read from the metadata alone. A failed restore
    would say only the first leaf that differs, and leave orbax's other reads to fail again at exit."""
    try:
        stored = _metadata_reader(directory).item_metadata(step).state.tree["lora"]
    except Exception:  # unreadable metadata: the restore that follows says what is wrong with the folder
        return

    def shapes(tree: Any) -> dict[str, tuple[int, ...]]:
        return {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}

    have, want = shapes(stored), shapes(like)
    differ = sorted(k for k in have.keys() | want.keys() if have.get(k) != want.get(k))
    if differ:
        shown = "; ".join(f"{k}: stored {have.get(k, 'absent')}, this run {want.get(k, 'absent')}" for k in differ[:3])
        raise CheckpointError(
            f"{where}: cannot be restored into this run (different model, lora.rank, lora.targets or "
            f"lora.extra_trainable?): {len(differ)} trainable leaves differ, {shown}"
        )


def _metadata_reader(directory: epath.Path) -> ocp.CheckpointManager:
    """A read-only manager that knows the items' handlers, so `item_metadata` gives the stored tree's shapes."""
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(
        directory, item_handlers=handlers, options=ocp.CheckpointManagerOptions(read_only=True, create=False)
    )


def read_meta(workdir: str, step: int | None = None) -> tuple[int, dict[str, Any]]:
    """(step, metadata) of the latest or given checkpoint: orbax restores the JSON item alone, no array."""
    mgr = manager(workdir, read_only=True)
    step = mgr.latest_step() if step is None else step
    if step is None:
        if os.path.isfile(workdir):
            raise CheckpointError(f"{workdir}: is a file, not a workdir")
        raise CheckpointError(f"{checkpoint_dir(workdir)}: no checkpoint found")
    try:
        meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception as e:  # a damaged or foreign folder: say which
        raise CheckpointError(
            f"{checkpoint_dir(workdir)}/{step}: metadata cannot be read: {type(e).__name__}: {e}"
        ) from e
    return step, dict(meta)


def base_quantization(meta: dict[str, Any]) -> dict[str, Any]:
    """{"quantize", "double_quant"} of the base a checkpoint's adapters were trained on."""
    return {**FULL_PRECISION_BASE, **meta.get("base_quantization", {})}


def check_base_quantization(workdir: str, quantization: dict[str, Any]) -> None:
    """Adapters resume on the base they were trained on: checkpoints of another model.quantize or
    model.double_quant are refused before the model loads."""
    try:
        _, meta = read_meta(workdir)
    except CheckpointError:  # nothing to resume; a damaged checkpoint is reported by `restore`
        return
    if base_quantization(meta) != quantization:
        raise CheckpointError(
            f"config keys 'model.quantize' and 'model.double_quant' ({quantization}): the checkpoints in "
            f"{checkpoint_dir(workdir)} were trained on a base with {base_quantization(meta)}; resume with those "
            "settings, or start a new workdir"
        )


def restore_adapters(workdir: str, step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trainable tree (adapters, plus any extra trained leaves; on the default device) and metadata from a
    checkpoint of either state layout, for export and evaluation: an orbax partial restore reads the "lora"
    subtree alone, never the optimizer moments."""
    step, meta = read_meta(workdir, step)
    mgr = _metadata_reader(checkpoint_dir(workdir))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    try:
        stored = mgr.item_metadata(step).state.tree["lora"]
        like = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), stored)
        restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), stored)
        args = ocp.args.PyTreeRestore(item={"lora": like}, restore_args={"lora": restore_args}, partial_restore=True)
        restored = mgr.restore(step, args=ocp.args.Composite(state=args))
    except Exception as e:  # a damaged or foreign folder: say which
        raise CheckpointError(f"{checkpoint_dir(workdir)}/{step}: cannot be read: {type(e).__name__}: {e}") from e
    return restored.state["lora"], meta
