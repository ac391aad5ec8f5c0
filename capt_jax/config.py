"""Run configs: ml_collections files in configs/, `--config.key=value` overrides, and checks before any compile.

A config file defines `get_config()` and usually starts from `default_config()` here, so every run has the
same keys and an unknown or mistyped key is caught with its name.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from capt_jax.data.config import default_data_config
from capt_jax.model.decoder import PROJECTIONS, REMAT_POLICIES
from capt_jax.model.layers import LOGICAL_AXES
from capt_jax.sharding import AXES

ConfigDict = ml_collections.ConfigDict


class ConfigError(ValueError):
    """A config value that cannot run: the message names the key (and the file when there is one)."""


def default_config() -> ConfigDict:
    """Every key a run may set, with the paper's LoRA / optimizer settings as defaults."""
    c = ConfigDict()
    c.workdir = "workdirs/run"
    c.seed = 0

    c.model = ConfigDict()
    c.model.path = "smollm2"  # folder, .gguf, hub id, or the alias 'smollm2'
    c.model.dtype = "float32"  # storage dtype of the frozen base (bfloat16 on accelerators)
    c.model.compute_dtype = "float32"  # activations (bfloat16 on accelerators)
    c.model.remat = "none"  # one of capt_jax.model.decoder.REMAT_POLICIES
    c.model.attention_impl = "auto"  # auto | xla | cudnn

    c.lora = ConfigDict()
    c.lora.rank = 64
    c.lora.alpha = 128.0
    c.lora.dropout = 0.1
    c.lora.targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    c.lora.b_lr_ratio = 1.0  # LoRA+: B's learning rate over A's (1.0: plain LoRA, as in the paper)
    # Base leaves trained in full next to the adapters, e.g. ("layers.input_norm", "layers.q_proj.bias"); norms and
    # biases only (capt_jax.lora.EXTRA_CANDIDATES). Empty: the paper's adapters-only training.
    c.lora.extra_trainable = ()

    # CLadder / PrOntoQA fields (dataset, mode, n_train, copies, ...) are documented in capt_jax.data.config.
    c.data = default_data_config()
    c.data.kind = "jsonl"  # jsonl: {"prompt", "completion"} lines at data.path; capt: CLadder / PrOntoQA
    c.data.path = ""  # the JSONL file for kind=jsonl
    c.data.holdout_fraction = 0.0  # last fraction of the JSONL kept out of training, for eval loss
    c.data.chat_template = True  # wrap prompt/completion as a user/assistant turn
    c.data.loss_on = "completion"  # completion | all (the paper's code trains on the whole conversation)
    # w_est of the two-stage objective w_est * L(raw prompt -> abstraction) + L(intervened prompt -> reasoning);
    # 0 reproduces the paper, > 0 trains the model to be its own estimator (eval.estimator = self).
    c.data.estimation_weight = 0.0

    c.train = ConfigDict()
    c.train.max_steps = 3200
    c.train.batch_size = 4  # global batch, in sequences
    c.train.grad_accum = 1  # micro-batches per step (batch_size must divide by it)
    c.train.seq_len = 1024  # longest sequence; shorter batches pad only to their length bucket
    c.train.learning_rate = 3e-4
    c.train.warmup_ratio = 0.03
    c.train.weight_decay = 0.01
    c.train.grad_clip = 1.0
    c.train.log_every = 1
    c.train.eval_every = 0  # 0: evaluate held-out loss only at the end

    c.eval = ConfigDict()
    c.eval.estimator = "oracle"  # oracle | lm | openai | self: who abstracts test questions (stage 1)
    c.eval.estimator_model = ""  # lm: any model load_pretrained accepts; "" = the base model without adapter
    c.eval.estimator_shots = 2  # worked examples in the lm / openai estimation prompt
    c.eval.estimator_retries = 3  # re-samples of an invalid estimate before falling back to the raw prompt
    c.eval.estimator_max_new_tokens = 512
    c.eval.openai_base_url = "https://api.openai.com/v1"
    c.eval.openai_model = "gpt-4o-mini"
    c.eval.openai_api_key_env = "OPENAI_API_KEY"
    c.eval.splits = ("id", "anti", "non")
    c.eval.max_examples = 0  # per split; 0 = the whole test set
    c.eval.max_new_tokens = 512
    c.eval.batch_size = 32
    c.eval.seed = 0

    c.checkpoint = ConfigDict()
    c.checkpoint.every_steps = 500
    c.checkpoint.keep = 3
    c.checkpoint.async_save = True

    c.mesh = ConfigDict()
    c.mesh.data = -1  # -1: every device not used by fsdp/tensor
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    # Logical axis -> mesh axes, in order of precedence (an array uses each mesh axis once): weights split their
    # embed dimension over fsdp and their heads/MLP/vocabulary dimension over tensor (column-parallel q/k/v/gate/up,
    # row-parallel o/down); activations split rows over data x fsdp and heads/MLP over tensor. See capt_jax.sharding.
    c.mesh.rules = (
        ("batch", ("data", "fsdp")),
        ("vocab", "tensor"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("mlp", "tensor"),
        ("embed", "fsdp"),
        ("length", None),
        ("head_dim", None),
        ("layers", None),
        ("norm", None),
        ("lora_rank", None),
    )

    c.distributed = ConfigDict()
    c.distributed.initialize = "auto"  # auto (when a cluster environment is detected) | always | never
    c.distributed.coordinator_address = ""
    c.distributed.num_processes = 0
    c.distributed.process_id = -1
    return c


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ConfigDict:
    """`get_config()` from a config file, with `--config.a.b=value` overrides applied in order."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    spec = importlib.util.spec_from_file_location(f"capt_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise ConfigError(f"{path}: could not be executed: {type(e).__name__}: {e}") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: defines no get_config()")
    config = module.get_config()
    for item in overrides:
        apply_override(config, item, source=str(path))
    return config


def apply_override(config: ConfigDict, item: str, source: str = "command line") -> None:
    """Apply one `--config.a.b=value` (or `a.b=value`), parsed to the type the key already has."""
    text = item[2:] if item.startswith("--") else item
    if not text.startswith("config.") or "=" not in text:
        raise ConfigError(f"{item!r}: overrides look like --config.train.max_steps=100")
    key, raw = text[len("config.") :].split("=", 1)
    parent, leaf = _parent(config, key, source)
    if parent[leaf] is None:  # a placeholder: its declared type says how to parse
        kind = parent.get_type(leaf)
        parent[leaf] = (
            None if raw.lower() == "none" else _parse_like(kind() if kind is not type(None) else raw, raw, key)
        )
    else:
        parent[leaf] = _parse_like(parent[leaf], raw, key)


def _parent(config: ConfigDict, key: str, source: str) -> tuple[ConfigDict, str]:
    node, parts = config, key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, ConfigDict) or part not in node:
            siblings = list(node.keys()) if isinstance(node, ConfigDict) else []
            close = difflib.get_close_matches(part, siblings, n=1)
            hint = f" (did you mean {'.'.join(parts[:depth] + close)!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown config key {key!r}{hint}")
        if depth < len(parts) - 1:
            node = node[part]
    return node, parts[-1]


def _parse_like(current: Any, raw: str, key: str) -> Any:
    """Parse `raw` as the type of `current`; a wrong type is an error naming the key."""
    try:
        if isinstance(current, bool):
            lowered = raw.lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return lowered in ("true", "1")
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, str):
            return raw
        if isinstance(current, (tuple, list)):
            value = ast.literal_eval(raw) if raw.strip().startswith(("(", "[")) else raw.split(",")
            return type(current)(value)
    except (ValueError, SyntaxError) as e:
        raise ConfigError(f"config key {key!r}: {raw!r} is not a valid {type(current).__name__}") from e
    raise ConfigError(f"config key {key!r}: cannot override a {type(current).__name__} from the command line")


def _choice(config: ConfigDict, key: str, options: Sequence[str]) -> None:
    value = _get(config, key)
    if value not in options:
        raise ConfigError(f"config key {key!r}: {value!r} is not one of {list(options)}")


def _positive(config: ConfigDict, key: str, allow_zero: bool = False) -> None:
    value = _get(config, key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"config key {key!r}: {value!r} must be {'>= 0' if allow_zero else '> 0'}")


def _get(config: ConfigDict, key: str) -> Any:
    parent, leaf = _parent(config, key, "config")
    return parent[leaf]


def mesh_shape(config: ConfigDict, device_count: int) -> dict[str, int]:
    """Resolve mesh.data = -1 and check that data * fsdp * tensor equals the device count."""
    fsdp, tensor, data = config.mesh.fsdp, config.mesh.tensor, config.mesh.data
    for key in ("mesh.fsdp", "mesh.tensor"):
        _positive(config, key)
    if data == -1:
        if device_count % (fsdp * tensor):
            raise ConfigError(
                f"config keys 'mesh.fsdp'={fsdp} x 'mesh.tensor'={tensor} do not divide the "
                f"{device_count} available devices"
            )
        data = device_count // (fsdp * tensor)
    if data < 1 or data * fsdp * tensor != device_count:
        raise ConfigError(
            f"config key 'mesh': data={data} x fsdp={fsdp} x tensor={tensor} = {data * fsdp * tensor} "
            f"devices, but {device_count} are available"
        )
    return {"data": data, "fsdp": fsdp, "tensor": tensor}


def check_rules(rules: Any) -> None:
    """mesh.rules: pairs (logical axis, mesh axis | tuple of mesh axes | None), with names known on both sides."""
    for rule in rules:
        ok = isinstance(rule, (tuple, list)) and len(rule) == 2 and rule[0] in LOGICAL_AXES
        if ok:
            mesh_axes = (rule[1],) if isinstance(rule[1], str) else (rule[1] or ())
            ok = isinstance(mesh_axes, (tuple, list)) and all(a in AXES for a in mesh_axes)
        if not ok:
            raise ConfigError(
                f"config key 'mesh.rules': {rule!r} is not a (logical axis, mesh axes) pair; logical axes are "
                f"{list(LOGICAL_AXES)}, mesh axes {list(AXES)} (one, a tuple of them, or None)"
            )


def validate(config: ConfigDict, device_count: int) -> None:
    """Every check that needs no model: run before loading weights or compiling anything."""
    validate_eval(config)
    _choice(config, "model.remat", tuple(REMAT_POLICIES))
    _choice(config, "model.attention_impl", ("auto", "xla", "cudnn"))
    _choice(config, "data.kind", ("jsonl", "capt"))
    _choice(config, "data.loss_on", ("completion", "all"))
    _choice(config, "distributed.initialize", ("auto", "always", "never"))
    for key in (
        "lora.rank",
        "lora.alpha",
        "train.max_steps",
        "train.batch_size",
        "train.grad_accum",
        "train.seq_len",
        "train.learning_rate",
        "train.log_every",
        "checkpoint.every_steps",
        "checkpoint.keep",
    ):
        _positive(config, key)
    for key in (
        "train.weight_decay",
        "train.grad_clip",
        "train.eval_every",
        "train.warmup_ratio",
        "data.estimation_weight",
    ):
        _positive(config, key, allow_zero=True)
    _positive(config, "lora.b_lr_ratio")
    check_rules(config.mesh.rules)
    from capt_jax.lora import extra_trainable_paths  # lora imports this module for ConfigError

    extra_trainable_paths(config.lora.extra_trainable)
    if not 0 <= config.lora.dropout < 1:
        raise ConfigError(f"config key 'lora.dropout': {config.lora.dropout} must be in [0, 1)")
    if not 0 <= config.data.holdout_fraction < 1:
        raise ConfigError(f"config key 'data.holdout_fraction': {config.data.holdout_fraction} must be in [0, 1)")
    bad = sorted(set(config.lora.targets) - set(PROJECTIONS))
    if bad or not config.lora.targets:
        raise ConfigError(
            f"config key 'lora.targets': {list(config.lora.targets)} must be a non-empty subset of {list(PROJECTIONS)}"
        )
    if config.data.kind == "jsonl" and not Path(config.data.path).is_file():
        raise ConfigError(f"config key 'data.path': JSONL file {config.data.path!r} not found")
    mesh = mesh_shape(config, device_count)
    if config.train.batch_size % config.train.grad_accum:
        raise ConfigError(
            f"config key 'train.batch_size'={config.train.batch_size} is not divisible by "
            f"'train.grad_accum'={config.train.grad_accum}"
        )
    micro = config.train.batch_size // config.train.grad_accum
    if micro % (mesh["data"] * mesh["fsdp"]):
        raise ConfigError(
            f"config key 'train.batch_size': micro-batch {micro} does not split over "
            f"mesh.data x mesh.fsdp = {mesh['data'] * mesh['fsdp']} devices"
        )


PAPER_MODELS = {"qwen2.5-3b": "Qwen/Qwen2.5-3B-Instruct", "llama3.2-3b": "meta-llama/Llama-3.2-3B-Instruct"}


def paper_config(model: str, dataset: str, method: str) -> ConfigDict:
    """The paper's setup (Gui & Ji 2025): LoRA r=64 alpha=128 dropout 0.1 on q/k/v/o, AdamW 3e-4 (1.5e-4 on
    PrOntoQA), cosine with 3% warm-up, weight decay 0.01, batch 4, 3200 steps, 100 ID training examples;
    `method` is capt (random letters) or sft (raw prompts)."""
    from capt_jax.data.config import paper_data_config

    c = default_config()
    c.workdir = f"workdirs/{model}_{dataset}_{method}"
    c.model.path = PAPER_MODELS[model]
    c.model.dtype = c.model.compute_dtype = "bfloat16"
    data = paper_data_config(dataset, method)
    for key in data:
        c.data[key] = data[key]
    c.data.kind = "capt"
    c.data.loss_on = "all"  # the authors' code trains on the whole conversation
    c.train.learning_rate = 1.5e-4 if dataset == "prontoqa" else 3e-4
    c.train.seq_len = 1024
    c.checkpoint.every_steps = 400
    return c


def validate_eval(config: ConfigDict) -> None:
    """The checks evaluation needs (it trains nothing, so no data file or mesh is required)."""
    _choice(config, "eval.estimator", ("oracle", "lm", "openai", "self"))
    _choice(config, "model.dtype", ("float32", "bfloat16", "float16"))
    _choice(config, "model.compute_dtype", ("float32", "bfloat16", "float16"))
    for key in ("eval.max_new_tokens", "eval.batch_size", "eval.estimator_max_new_tokens"):
        _positive(config, key)
    for key in ("eval.max_examples", "eval.estimator_retries", "eval.estimator_shots"):
        _positive(config, key, allow_zero=True)
