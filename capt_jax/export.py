"""Export a trained LoRA checkpoint for the Hugging Face stack.

    python -m capt_jax.export --workdir W --out DIR --format merged|peft [--step N] [--overwrite] [--base-model M]

merged: a plain transformers folder (config, model.safetensors, tokenizer, generation config) whose weights are
        W + scale * B @ A, so `AutoModelForCausalLM.from_pretrained(DIR)` needs neither peft nor capt_jax. After
        training on a quantized base (model.quantize), W is that base dequantized, the model as trained, written
        in bfloat16 unless --dtype says otherwise.
peft:   adapter_model.safetensors + adapter_config.json (and the tokenizer) for
        `peft.PeftModel.from_pretrained(base_model, DIR)`: small, and the base stays shared. The base is the
        original folder; after QLoRA training, load it with bitsandbytes' nf4 (or int8) for the trained setting.

The folder is written under a hidden sibling name and renamed into place at the end, so an interrupted export
never leaves a half-written model that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import flags

from capt_jax import checkpoint as ckpt
from capt_jax import cli
from capt_jax.config import ConfigDict, ConfigError
from capt_jax.convert import SMOLLM2_ALIAS
from capt_jax.errors import CaptError
from capt_jax.lora import check_adapters, flat, lora_scale, merge_lora, split_trainable
from capt_jax.model import ModelConfig, Params
from capt_jax.model.decoder import dequantized
from capt_jax.outputs import check_output_dir
from capt_jax.pretrained import resolve_model_dir
from capt_jax.weights import hf_state_dict, hf_tensor_name, load_params, save_safetensors

FORMATS = ("merged", "peft")
DTYPES = ("auto", "float32", "bfloat16", "float16")
_TOKENIZER_PREFIXES = ("tokenizer", "special_tokens_map", "added_tokens", "chat_template")


class ExportError(CaptError, ValueError):
    """An export that cannot run: unknown step, base model not found, output folder in the way, shape mismatch."""


def peft_state_dict(adapters: Params) -> dict[str, np.ndarray]:
    """Adapters under peft's names: base_model.model.<module>.lora_A.weight [r, in] and lora_B.weight [out, r].

    Our a/b already use peft's [out, in] convention, so each is just the layer's slice.
    """
    tensors = {}
    for name, adapter in adapters["layers"].items():
        a, b = np.asarray(adapter["a"]), np.asarray(adapter["b"])
        for layer in range(a.shape[0]):
            module = hf_tensor_name(("layers", name, "weight"), layer).removesuffix(".weight")
            tensors[f"base_model.model.{module}.lora_A.weight"] = a[layer]
            tensors[f"base_model.model.{module}.lora_B.weight"] = b[layer]
    return tensors


def peft_config(lora: dict[str, Any], base_name: str) -> dict[str, Any]:
    """adapter_config.json for plain LoRA: peft's scale lora_alpha / r equals our `lora_scale`."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": lora["rank"],
        "lora_alpha": lora["alpha"],
        "lora_dropout": lora["dropout"],
        "target_modules": sorted(lora["targets"]),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }


def peft_base_name(base_model: str, folder: Path) -> str:
    """A hub id as recorded; otherwise the resolved folder, since transformers cannot load aliases or .gguf files."""
    local = Path(base_model).expanduser().exists() or base_model == SMOLLM2_ALIAS
    return str(folder.resolve()) if local else base_model


def declared_dtype(hf_config: dict[str, Any]) -> str:
    """The dtype the base's config.json declares (v5 `dtype`, v4 `torch_dtype`); float32 when absent or exotic."""
    declared = hf_config.get("dtype") or hf_config.get("torch_dtype")
    return declared if declared in DTYPES[1:] else "float32"


def tokenizer_files(folder: Path) -> list[Path]:
    """The base folder's tokenizer files, copied verbatim so the export tokenizes exactly as training did."""
    return [
        f
        for f in sorted(folder.iterdir())
        if f.is_file()
        and (f.name.startswith(_TOKENIZER_PREFIXES) or f.name in ("vocab.json", "merges.txt") or f.suffix == ".model")
    ]


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to clobber anything but an empty folder unless asked: an export may land on a previous model. A file
    is never replaced (an export is a folder), and a folder that cannot be written fails here, before any work."""
    try:
        check_output_dir(out, "--out")
        check_output_dir(out.parent, "--out's folder")  # the export is staged there, then renamed to `out`
    except ConfigError as e:  # export's own error class, for callers that catch it
        raise ExportError(str(e)) from None
    if out.exists() and not overwrite and not (out.is_dir() and not any(out.iterdir())):
        raise ExportError(f"{out}: already exists and is not empty; pass --overwrite to replace it")


def check_step(workdir: str, step: int) -> None:
    """An explicit --step must exist; list the ones that do (read_meta alone would only say 'metadata missing')."""
    steps = sorted(ckpt.manager(workdir, read_only=True).all_steps())
    if step not in steps:
        raise ExportError(
            f"{ckpt.checkpoint_dir(workdir)}: no checkpoint at step {step}; available steps: {steps or 'none'}"
        )


def find_base(base_model: str, source: str) -> Path:
    """The base folder; a checkpoint records the path it was trained from, which may since have moved."""
    try:
        return resolve_model_dir(base_model)
    except FileNotFoundError as e:
        raise ExportError(
            f"base model {base_model!r} (from {source}) cannot be found: {e}. Pass --base-model PATH if it has moved"
        ) from e


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A hidden sibling folder to write into, renamed to `out` (replacing what is there) once all is written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    staging.mkdir()  # not mkdtemp: that would leave the export readable only by its owner
    try:
        yield staging
        old = staging.with_name(staging.name + "-old")
        if out.exists():
            out.rename(old)
        staging.rename(out)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif os.path.lexists(old):
            old.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_merged(
    staging: Path, folder: Path, config: ModelConfig, trainable: Params, scale: float, dtype: str, progress: bool
) -> None:
    """W + scale * B @ A rounded once to `dtype` ('auto': the base's, bfloat16 for a quantized base), and a
    config.json declaring that dtype.

    The base is read in its own dtype when that is the output's, else in float32, so a float32 base exported
    as bfloat16 is not rounded before the merge and a bfloat16 base exported as float32 keeps the full delta.
    A quantized `config` reads it quantized, exactly as training did, and dequantizes it in float32.
    """
    hf_config = json.loads((folder / "config.json").read_text())
    stored = declared_dtype(hf_config)
    if config.quantization is not None:
        dtype = "bfloat16" if dtype == "auto" else dtype
        base = dequantized(load_params(folder, config, dtype="float32", progress=False), config)
        merge_dtype = "float32"
    else:
        dtype = stored if dtype == "auto" else dtype
        merge_dtype = dtype if dtype == stored else "float32"
        base = load_params(folder, config, dtype=merge_dtype, progress=False)
    merged = merge_lora(base, trainable, scale)
    if merge_dtype != dtype:
        merged = jax.tree.map(lambda x: x.astype(dtype), merged)
    full = config.replace(quantize="none", double_quant=False)
    save_safetensors(staging / "model.safetensors", hf_state_dict(merged, full), progress=progress)
    dtype_keys = [k for k in ("dtype", "torch_dtype") if k in hf_config] or ["dtype"]
    hf_config.update(dict.fromkeys(dtype_keys, dtype))
    (staging / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    if (folder / "generation_config.json").is_file():
        shutil.copyfile(folder / "generation_config.json", staging / "generation_config.json")


def write_peft(staging: Path, adapters: Params, lora: dict[str, Any], base_name: str, progress: bool) -> None:
    """The two files peft reads; adapters stay float32, as trained."""
    save_safetensors(staging / "adapter_model.safetensors", peft_state_dict(adapters), progress=progress)
    (staging / "adapter_config.json").write_text(json.dumps(peft_config(lora, base_name), indent=2) + "\n")


def export(
    workdir: str | Path,
    out: str | Path,
    kind: str,
    step: int | None = None,
    overwrite: bool = False,
    base_model: str | None = None,
    dtype: str = "auto",
    progress: bool = True,
) -> Path:
    """Export the latest (or given) checkpoint of `workdir` to `out` as `kind` ('merged' or 'peft').

    Every check that needs no base weights (format, output folder, step, base model, adapter shapes) runs first.
    `dtype` applies to merged weights; 'auto' keeps the base checkpoint's.
    """
    if kind not in FORMATS:
        raise ExportError(f"format {kind!r} is not one of {list(FORMATS)}")
    if dtype not in DTYPES:
        raise ExportError(f"dtype {dtype!r} is not one of {list(DTYPES)}")
    workdir, out = str(workdir), Path(os.path.abspath(out))
    check_out_dir(out, overwrite)
    if step is not None:
        check_step(workdir, step)
    step, meta = ckpt.read_meta(workdir, step)
    source = f"{ckpt.checkpoint_dir(workdir)}/{step}"
    base = base_model or meta["base_model"]
    folder = find_base(base, "--base-model" if base_model else f"{source}/meta")
    config = ModelConfig.from_pretrained_dir(folder)
    lora = meta["lora"]
    trainable, _ = ckpt.restore_adapters(workdir, step)
    try:
        check_adapters(trainable, config, lora["rank"], source, str(folder))
    except ConfigError as e:  # export's own error class, for callers that catch it
        raise ExportError(str(e)) from None
    adapters, extras = split_trainable(trainable)
    trained_on = config.replace(**ckpt.base_quantization(meta))  # the base as the adapters were trained on it
    if kind == "peft" and extras:
        raise ExportError(
            f"{source}: also trains {sorted('.'.join(p) for p in flat(extras))} in full (lora.extra_trainable); a "
            "peft adapter folder holds LoRA factors only, so export it with --format merged"
        )
    with staged(out) as staging:
        if kind == "merged":
            scale = lora_scale(lora["rank"], lora["alpha"])
            write_merged(staging, folder, trained_on, trainable, scale, dtype, progress)
        else:
            write_peft(staging, adapters, lora, peft_base_name(base, folder), progress)
        for file in tokenizer_files(folder):
            shutil.copyfile(file, staging / file.name)
    return out


def define_flags(values: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "workdir", None, "training workdir holding checkpoints/ (default: config's)", flag_values=values
    )
    flags.DEFINE_string("out", None, "output folder; must be absent or empty unless --overwrite", flag_values=values)
    flags.DEFINE_enum("format", None, FORMATS, "merged: a transformers folder; peft: an adapter", flag_values=values)
    flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)", flag_values=values)
    flags.DEFINE_bool("overwrite", False, "replace a non-empty --out", flag_values=values)
    flags.DEFINE_string(
        "base-model",
        None,
        "base folder / hub id / .gguf instead of the one the checkpoint recorded",
        flag_values=values,
    )
    flags.DEFINE_enum(
        "dtype",
        "auto",
        DTYPES,
        "dtype of merged weights (default: the base's; bfloat16 after QLoRA)",
        flag_values=values,
    )


COMMAND = cli.Command(__doc__, define_flags, keys=("workdir",))


def run_command(config: ConfigDict, values: flags.FlagValues) -> None:
    for name in ("out", "format"):
        if values[name].value is None:
            raise ExportError(f"--{name} is required (see --help)")
    if values.format == "peft" and values.dtype != "auto":
        raise ExportError("--dtype applies to --format merged only (peft adapters are saved as trained)")
    out = export(
        values.workdir or config.workdir,
        values.out,
        values.format,
        step=values.step,
        overwrite=values.overwrite,
        base_model=values["base-model"].value,
        dtype=values.dtype,
    )
    print(out)


def main(argv: list[str] | None = None) -> None:
    cli.run(COMMAND, run_command, argv)


if __name__ == "__main__":
    main()
