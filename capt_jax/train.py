"""LoRA post-training.

    python -m capt_jax.train --config configs/NAME.py [--config.key=value ...]

`prepare(config)` checks the config and joins the runtime; `setup(config)` then builds a `Run` from one function
per concern: the mesh, the data, the base model, the optimizer state, the checkpoints and logs. `train` then
loops over steps: one jitted, donated, sharded step (loss, grads of the trainable tree only, the optax update),
with logging, held-out evaluation and checkpoints every N steps. Orbax checkpoints resume automatically;
SIGTERM/Ctrl-C save before stopping; a non-finite loss stops the run and keeps the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import operator
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from capt_jax import checkpoint as ckpt
from capt_jax import cli, tokenization
from capt_jax.batches import (
    BatchStream,
    TokenizedSet,
    batch_length,
    loss_width,
    make_batch,
    pack,
    read_jsonl_pairs,
    tokenize_pairs,
)
from capt_jax.config import ConfigDict, ConfigError, training_mesh, validate, validate_attention
from capt_jax.data import abstract, training_data, training_examples, training_questions
from capt_jax.data.config import default_data_config
from capt_jax.distributed import maybe_initialize_distributed
from capt_jax.errors import CaptError, Interrupted, MissingFileError
from capt_jax.estimate import estimation_prompt, estimation_target
from capt_jax.lora import (
    extra_trainable_paths,
    flat,
    init_extras,
    init_lora,
    lora_scale,
    make_optimizer,
    nest,
    overlay,
    warmup_cosine,
)
from capt_jax.metrics import MetricsWriter
from capt_jax.model import ModelConfig, Params
from capt_jax.model.decoder import axis_sizes, lora_axes, param_axes, param_shapes
from capt_jax.objective import loss_sums, position_nll, row_coefficients
from capt_jax.outputs import check_output_dir
from capt_jax.pretrained import Pretrained, has_tokenizer, load_pretrained, resolve_model_dir
from capt_jax.sharding import Layout, batch_sharding, make_layout, make_mesh, mirrored_axes, placer, replicated

# {"step", "lora", "opt", "rng"}: everything a checkpoint restores. "lora" is the trainable tree: the adapters
# plus any lora.extra_trainable leaves (capt_jax.lora).
State = dict[str, Any]


class TrainingDiverged(CaptError, RuntimeError):
    pass


def training_pairs(config: ConfigDict) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, held-out) prompt/completion pairs: a JSONL file, or CAPT-intervened CLadder / PrOntoQA copies."""
    if config.data.kind == "capt":
        pairs = training_data(config.data)
        if config.data.estimation_weight > 0:  # two-stage objective: the model also learns to estimate
            copies = max(1, len(pairs) // max(1, config.data.n_train))
            pairs += [
                {
                    "prompt": estimation_prompt(e, config.data.estimation_form),
                    "completion": estimation_target(abstract(e), config.data.estimation_form),
                    "task": "estimation",
                }
                for e in training_examples(config.data)
            ] * copies
        return pairs, []  # held-out evaluation is accuracy: python -m capt_jax.evaluate
    pairs = read_jsonl_pairs(config.data.path)
    holdout = int(len(pairs) * config.data.holdout_fraction)
    return pairs[: len(pairs) - holdout], pairs[len(pairs) - holdout :]


def make_train_step(
    model_config: ModelConfig,
    config: ConfigDict,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    layout: Layout | None = None,
) -> Callable:
    """step(state, base, batch) -> (state, metrics); batch leaves are [grad_accum, micro_batch, ...].

    Only state["lora"] (the trainable tree) is differentiated. Per-row loss coefficients come from the whole
    global batch before the micro-batch loop, so summing micro-batch gradients gives exactly the gradient of
    one big batch. `layout` pins the activations to their logical axes on a mesh.
    """
    scale, dropout = lora_scale(config.lora.rank, config.lora.alpha), config.lora.dropout

    def step(state: State, base: Params, batch: dict[str, jax.Array]) -> tuple[State, dict[str, jax.Array]]:
        rng, step_rng = jax.random.split(state["rng"])
        coefficients = row_coefficients(batch, config.data.estimation_weight)  # [grad_accum, micro_batch]

        def micro_loss(adapters, micro_batch, row_coefficient, key):
            nll = position_nll(adapters, base, micro_batch, model_config, scale, dropout, key, layout=layout)
            return jnp.sum(nll * micro_batch["weights"] * row_coefficient[:, None])

        def accumulate(carry, xs):
            grads, loss = carry
            micro_loss_value, g = jax.value_and_grad(micro_loss)(state["lora"], *xs)
            return (jax.tree.map(jnp.add, grads, g), loss + micro_loss_value), None

        zeros = jax.tree.map(jnp.zeros_like, state["lora"])
        keys = jax.random.split(step_rng, config.train.grad_accum)
        (grads, loss), _ = jax.lax.scan(accumulate, (zeros, 0.0), (batch, coefficients, keys))
        updates, opt = optimizer.update(grads, state["opt"], state["lora"])
        new_state = {
            "step": state["step"] + 1,
            "lora": optax.apply_updates(state["lora"], updates),
            "opt": opt,
            "rng": rng,
        }
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": schedule(state["step"]),
            "tokens": jnp.sum(batch["mask"]),
        }
        return new_state, metrics

    return step


def make_eval_step(model_config: ModelConfig, config: ConfigDict) -> Callable:
    """(adapters, base, batch) -> (NLL sum, weight sum), no dropout."""
    scale = lora_scale(config.lora.rank, config.lora.alpha)
    return lambda adapters, base, batch: loss_sums(adapters, base, batch, model_config, scale)


class Interrupts:
    """SIGTERM (a preemption) and Ctrl-C ask for a checkpoint at the end of the current step.

    On one process this is a signal handler. Across processes the save is collective, so every host must stop at
    the same step: there JAX's own preemption service (set up by jax.distributed) catches SIGTERM and agrees on
    the step in the background, and orbax's `reached_preemption` reads that agreement, with no collective of
    ours in the step loop.
    """

    def __init__(self, mgr: Any):
        self.mgr, self.requested = mgr, None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        signals = (signal.SIGINT,) if jax.process_count() > 1 else (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        self.requested = signal.Signals(signum).name

    def stop_at(self, step: int) -> str | None:
        """The signal to stop for after `step`, if any."""
        if jax.process_count() > 1 and self.mgr.reached_preemption(step):
            return "SIGTERM"
        return self.requested

    def __exit__(self, *_exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def host_rows(layout: Layout, size: int) -> np.ndarray:
    """Which rows of a `size`-row batch this process's devices hold: all of them on one host, a share on a pod."""
    indices = batch_sharding(layout, 1).addressable_devices_indices_map((size,)).values()
    return np.unique(np.concatenate([np.arange(size)[index[0]] for index in indices]))


def to_global(batch: dict[str, np.ndarray], size: int, layout: Layout, batch_dim: int = 0) -> dict[str, jax.Array]:
    """This process's rows (host_rows, along batch_dim) -> global arrays split over rows, by
    jax.make_array_from_process_local_data: no host builds the whole global batch."""
    return {
        k: jax.make_array_from_process_local_data(
            batch_sharding(layout, v.ndim, batch_dim), v, (*v.shape[:batch_dim], size, *v.shape[batch_dim + 1 :])
        )
        for k, v in batch.items()
    }


def host_batch(data: TokenizedSet, rows: np.ndarray, mine: np.ndarray, pad_id: int) -> dict[str, np.ndarray]:
    """This process's part of the batch with rows [grad_accum, micro_batch]: leaves [grad_accum, len(mine), ...],
    padded to the length the whole batch needs, tokenizing only those rows."""
    local = rows[:, mine]
    length = batch_length(data, rows.reshape(-1))
    batch = make_batch(data, local.reshape(-1), length, pad_id, loss_width(data, rows.reshape(-1), length))
    return {k: v.reshape(*local.shape, *v.shape[1:]) for k, v in batch.items()}


@dataclasses.dataclass(frozen=True)
class Data:
    """The tokenized training (and held-out) sets and the batch order: everything the loop reads per step."""

    train: TokenizedSet
    heldout: TokenizedSet | None
    stream: BatchStream
    pad_id: int
    mine: np.ndarray  # the rows of each micro-batch this process holds


@dataclasses.dataclass
class Run:
    """Everything `setup` builds and the step loop reads; `state` advances with every step."""

    config: ConfigDict
    layout: Layout
    base: Params
    data: Data
    train_step: Callable
    eval_step: Callable
    state: State
    start: int
    mgr: Any
    meta: dict[str, Any]
    writer: MetricsWriter
    lead: bool
    last_read: float = 0.0  # when the loop last read a step's metrics (for tokens_per_second)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What `train` returns: the step reached, the last logged training metrics (loss, grad_norm,
    learning_rate, tokens_per_second; empty when nothing was trained) and the last held-out loss (None without
    a held-out set)."""

    step: int
    metrics: dict[str, float]
    eval_loss: float | None


def setup(config: ConfigDict) -> Run:
    """Build the data, model, optimizer state and checkpoints of a `prepare`d config: every error a user can
    make surfaces before anything compiles."""
    mesh = make_mesh(training_mesh(config, jax.device_count()))
    pairs = training_pairs(config)  # data errors surface before the model loads
    meta = checkpoint_meta(config, pairs)
    check_same_data(config.workdir, meta)
    folder = resolve_model_dir(config.model.path)
    if not has_tokenizer(folder):  # before the weights load, which takes minutes for a 3B model
        raise MissingFileError(f"{folder}: the model folder has no tokenizer; training needs one")
    ckpt.check_base_quantization(config.workdir, base_quantization(config))
    # quantized leaves have their own shapes and axes
    architecture = ModelConfig.from_pretrained_dir(folder, **base_quantization(config))
    layout = make_layout(mesh, config.mesh.rules, axis_sizes(architecture, config.lora.rank))
    model, model_config = load_base(config, folder, architecture, layout)
    data = tokenize_data(config, model, pairs, layout)
    state, state_shardings, optimizer, schedule = initial_state(config, model, model_config, architecture, layout)
    train_step = jax.jit(
        make_train_step(model_config, config, optimizer, schedule, layout),
        in_shardings=(state_shardings, jax.tree.map(lambda x: x.sharding, model.params), None),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=(0,),
    )
    mgr = ckpt.manager(config.workdir, config.checkpoint.keep, config.checkpoint.async_save)
    restored = ckpt.restore(mgr, state)
    start = 0
    if restored is not None:
        state, restored_meta = restored
        start = int(restored_meta["data_position"])
    lead = jax.process_index() == 0
    if lead and start:
        print(f"resuming from {ckpt.checkpoint_dir(config.workdir)}/{start}")
    if lead:
        (epath.Path(config.workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))
    return Run(
        config=config,
        layout=layout,
        base=model.params,
        data=data,
        train_step=train_step,
        eval_step=jax.jit(make_eval_step(model_config, config)),
        state=state,
        start=start,
        mgr=mgr,
        meta=meta,
        writer=MetricsWriter(config.workdir, enabled=lead, resume_step=start),
        lead=lead,
    )


def load_base(
    config: ConfigDict, folder: Path, architecture: ModelConfig, layout: Layout
) -> tuple[Pretrained, ModelConfig]:
    """The frozen base, each tensor placed on the mesh by its logical axes as it is read."""
    model = load_pretrained(
        folder,
        dtype=config.model.dtype,
        compute_dtype=config.model.compute_dtype,
        attention_impl=None if config.model.attention_impl == "auto" else config.model.attention_impl,
        **base_quantization(config),
        place=placer(layout, param_axes(architecture)),
        progress=jax.process_index() == 0,
    )
    return model, model.config.replace(remat_policy=config.model.remat)


def tokenize_data(
    config: ConfigDict, model: Pretrained, pairs: tuple[list[dict[str, str]], list[dict[str, str]]], layout: Layout
) -> Data:
    tokenize = functools.partial(
        tokenize_pairs,
        model.tokenizer,
        seq_len=config.train.seq_len,
        chat_template=config.data.chat_template,
        loss_on=config.data.loss_on,
        process_index=jax.process_index(),  # each process tokenizes a share to learn lengths, then its rows
        process_count=jax.process_count(),
        gather=multihost_utils.process_allgather,
    )
    train_set = tokenize(pairs[0])
    if train_set.unsupervised == len(train_set):
        raise ConfigError(
            f"config key 'train.seq_len'={config.train.seq_len}: no training sequence keeps a token of its loss "
            f"(data.loss_on={config.data.loss_on!r}) after truncation to it, so nothing would be learned"
        )
    if train_set.unsupervised and jax.process_index() == 0:
        print(
            f"note: {train_set.unsupervised} of {len(train_set)} training sequences keep no token of their loss "
            f"after truncation to train.seq_len={config.train.seq_len}; they add nothing to the gradient"
        )
    if config.data.packing:
        train_set = pack(train_set, config.seed)
    if train_set.truncated and jax.process_index() == 0:
        print(
            f"note: {train_set.truncated} training sequences were longer than train.seq_len="
            f"{config.train.seq_len} and were truncated"
        )
    return Data(
        train=train_set,
        heldout=tokenize(pairs[1]) if pairs[1] else None,
        stream=BatchStream(train_set.lengths, config.train.batch_size, config.seed),
        pad_id=tokenization.pad_id(model.tokenizer, model.config.eos_token_ids),
        mine=host_rows(layout, config.train.batch_size // config.train.grad_accum),
    )


def initial_state(
    config: ConfigDict, model: Pretrained, model_config: ModelConfig, architecture: ModelConfig, layout: Layout
) -> tuple[State, Any, optax.GradientTransformation, optax.Schedule]:
    """Fresh adapters (and extra trainable leaves) with their optimizer state, sharded by their logical axes."""
    schedule = warmup_cosine(config.train.learning_rate, config.train.max_steps, config.train.warmup_ratio)
    optimizer = make_optimizer(
        schedule, config.train.weight_decay, config.train.grad_clip, b_lr_ratio=config.lora.b_lr_ratio
    )
    folder_name = str(model.path)
    extra_paths = extra_trainable_paths(config.lora.extra_trainable, param_shapes(architecture), folder_name)

    def init_state(rng: jax.Array, extras: Params) -> State:
        rng, lora_rng = jax.random.split(rng)
        trainable = overlay(init_lora(model_config, config.lora.targets, config.lora.rank, lora_rng), extras)
        return {"step": jnp.array(0, jnp.int32), "lora": trainable, "opt": optimizer.init(trainable), "rng": rng}

    extras = init_extras(model.params, extra_paths)
    base_axes = flat(param_axes(architecture))
    trainable_axes = overlay(
        lora_axes(architecture, tuple(config.lora.targets)), nest((p, base_axes[p]) for p in extra_paths)
    )
    opt_axes = mirrored_axes(jax.eval_shape(init_state, jax.random.PRNGKey(0), extras)["opt"], flat(trainable_axes))
    shardings = layout.shardings({"step": P(), "lora": trainable_axes, "opt": opt_axes, "rng": P()})
    state = jax.jit(init_state, out_shardings=shardings)(jax.random.PRNGKey(config.seed), extras)
    return state, shardings, optimizer, schedule


def base_quantization(config: ConfigDict) -> dict[str, Any]:
    """How the frozen base is held (capt_jax.model.quant): the same at load, in the checkpoint and on export."""
    return {"quantize": config.model.quantize, "double_quant": config.model.double_quant}


def checkpoint_meta(config: ConfigDict, pairs: tuple[list[dict[str, str]], list[dict[str, str]]]) -> dict[str, Any]:
    """What export and evaluation need besides the arrays, and what a resume checks. A local base is recorded by
    absolute path, so export works from any directory; hub ids stay as given."""
    base = Path(config.model.path).expanduser()
    return {
        "base_model": str(base.resolve()) if base.exists() else str(config.model.path),
        "data_fingerprint": data_fingerprint(pairs),
        # What `evaluate --workdir` checks its test sets' guard against.
        "training_questions": training_questions(config.data) if config.data.kind == "capt" else None,
        "base_quantization": base_quantization(config),  # export --format merged rebuilds the trained-on base
        "lora": {
            "rank": config.lora.rank,
            "alpha": config.lora.alpha,
            "dropout": config.lora.dropout,
            "targets": list(config.lora.targets),
            "b_lr_ratio": config.lora.b_lr_ratio,
            "extra_trainable": list(config.lora.extra_trainable),
        },
    }


def data_fingerprint(pairs: tuple[list[dict[str, str]], list[dict[str, str]]]) -> str:
    """The training and held-out pairs' count and digest: the data itself, wherever its files now are."""
    digest = hashlib.sha256(json.dumps(pairs, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
    return f"{len(pairs[0])}+{len(pairs[1])} pairs, {digest}"


def check_same_data(workdir: str, now: dict[str, Any]) -> None:
    """A resume continues on the data its checkpoint was trained on (a moved data.path or data_dir may hold other
    data), and says when the base is another folder or id than the one recorded (same shapes, other weights?).
    `now` is this run's `checkpoint_meta`."""
    try:
        step, meta = ckpt.read_meta(workdir)
    except ckpt.CheckpointError:
        return
    where = f"{ckpt.checkpoint_dir(workdir)}/{step}"
    refuse_other_data(where, meta, now["data_fingerprint"])
    if meta["base_model"] != now["base_model"] and jax.process_index() == 0:
        print(f"note: {where} was trained on base {meta['base_model']}; resuming on {now['base_model']}")


def refuse_other_data(where: str, meta: dict[str, Any], fingerprint: str) -> None:
    """A ConfigError when checkpoint `where` (its `meta`) was trained on other data than `fingerprint`'s."""
    if meta.get("data_fingerprint", fingerprint) != fingerprint:
        raise ConfigError(
            f"{where}: was trained on other data ({meta['data_fingerprint']}) than this run builds "
            f"({fingerprint}); resume it on its own data, or train in a new workdir"
        )


def step_batch(run: Run, step: int) -> dict[str, jax.Array]:
    """The global batch of `step`, [grad_accum, micro_batch, ...]: this process builds only its own rows."""
    data, accum = run.data, run.config.train.grad_accum
    rows = data.stream.rows(step).reshape(accum, -1)
    host = host_batch(data.train, rows, data.mine, data.pad_id)
    return to_global(host, rows.shape[1], run.layout, batch_dim=1)


def heldout_loss(run: Run, step: int) -> float:
    """Mean NLL of the held-out set under the current adapters, logged at `step`."""
    data, size = run.data, run.config.train.batch_size // run.config.train.grad_accum
    nll = weight = 0.0
    for start in range(0, len(data.heldout), size):
        rows = np.minimum(np.arange(start, start + size), len(data.heldout) - 1)  # repeat the last row to fill
        length = batch_length(data.heldout, rows)
        batch = make_batch(data.heldout, rows[data.mine], length, data.pad_id, loss_width(data.heldout, rows, length))
        batch["weights"][start + data.mine >= len(data.heldout)] = 0.0
        n, w = run.eval_step(run.state["lora"], run.base, to_global(batch, size, run.layout))
        nll, weight = nll + float(n), weight + float(w)
    loss = nll / max(weight, 1.0)
    run.writer.write({"step": step, "eval_loss": loss})
    return loss


def save(run: Run, step: int) -> None:
    ckpt.save(run.mgr, step, run.state, {**run.meta, "data_position": step})
    run.writer.flush()  # metrics up to every checkpoint are durable, even in a gs:// workdir


def train(config: ConfigDict) -> TrainResult:
    """Run (or resume) training as configured.

    Raises TrainingDiverged when a loss is not finite (the last good checkpoint is kept) and Interrupted after
    saving when SIGTERM or Ctrl-C asked to stop (rerunning the same command resumes).
    """
    c = config.train
    prepare(config)
    done = finished_position(config)
    if done is not None:
        if jax.process_index() == 0:
            print(f"{config.workdir}: already trained to train.max_steps={c.max_steps}; nothing to do")
        return TrainResult(done, {}, None)
    run = setup(config)
    eval_loss = heldout_loss(run, 0) if run.data.heldout is not None and run.start == 0 else None
    metrics = steps(run)
    if run.data.heldout is not None:
        eval_loss = heldout_loss(run, c.max_steps)
    run.mgr.wait_until_finished()
    run.mgr.close()
    run.writer.close()
    return TrainResult(c.max_steps, metrics, eval_loss)


def prepare(config: ConfigDict) -> None:
    """Check the config, then join the multi-host runtime, before anything starts jax's backend (reading a
    checkpoint does, and `jax.distributed.initialize` must come first)."""
    validate(config)
    check_output_dir(config.workdir, "--config.workdir")
    maybe_initialize_distributed(config)
    validate_attention(config)


def finished_position(config: ConfigDict) -> int | None:
    """The data position of a `prepare`d workdir that has already reached train.max_steps, from its latest
    checkpoint's metadata alone: rerunning a finished command (or an experiment's finished cell) loads no model
    and builds nothing. None when there is more to train, or no readable checkpoint (setup then resumes or says
    why). A checkpointed workdir trained with other settings is refused here (`check_same_training`)."""
    try:
        step, meta = ckpt.read_meta(config.workdir)
    except ckpt.CheckpointError:
        return None
    ckpt.check_base_quantization(config.workdir, base_quantization(config))
    before = check_same_training(config)
    position = int(meta["data_position"])
    if position >= config.train.max_steps:
        if _data_moved(config, before):  # the files may now hold other data: build its pairs to compare
            where = f"{ckpt.checkpoint_dir(config.workdir)}/{step}"
            refuse_other_data(where, meta, data_fingerprint(training_pairs(config)))
        return position
    started = (before or {}).get("train.max_steps", config.train.max_steps)
    if started != config.train.max_steps and jax.process_index() == 0:
        print(
            f"note: train.max_steps is {config.train.max_steps} now and was {started} when this workdir last ran: "
            f"from step {position} on, the learning rate follows the schedule of a {config.train.max_steps}-step run"
        )
    return None


def _data_moved(config: ConfigDict, before: dict[str, Any] | None) -> bool:
    """Whether this run reads its training data from other files than the workdir's run did (or may: a workdir
    without config.json)."""
    now = dotted(json.loads(config.to_json_best_effort()))
    return before is None or any(
        before.get(key) != now.get(key) for key in ("data.path", "data.data_dir", "data.data_file")
    )


# Keys a run may change when it resumes: where things are, how long it runs, how it logs, saves, evaluates and
# is laid out on the devices. Any other change would continue one run with another's settings (a changed
# train.max_steps does stretch the cosine schedule from the step reached, and `finished_position` says so).
# model.* is checked by shapes and `base_quantization` instead, so a moved base folder still resumes.
RESUMABLE_CHANGES = (
    "workdir",
    "model",
    "data.path",
    "data.data_dir",
    "data.data_file",
    "data.keep_overlap",  # the test sets only
    "data.ood_seed",
    "train.max_steps",
    "train.grad_accum",
    "train.log_every",
    "train.eval_every",
    "checkpoint",
    "eval",
    "mesh",
    "distributed",
)


# The data keys only one data.kind reads: the CLadder / PrOntoQA fields, or the JSONL file's.
KIND_KEYS = {"capt": tuple(f"data.{k}" for k in default_data_config()), "jsonl": ("data.path", "data.holdout_fraction")}


def check_same_training(config: ConfigDict) -> dict[str, Any] | None:
    """A workdir with a checkpoint resumes, or counts as trained, only under the settings in its config.json
    (written when the run started), which it returns. Not compared: keys that one version has and the other
    lacks, the other data.kind's keys, and lora.targets' order."""
    file = epath.Path(config.workdir) / "config.json"
    before = saved_settings(config.workdir)
    if before is None:
        return None
    now = dotted(json.loads(config.to_json_best_effort()))
    ignored = [key for kind, keys in KIND_KEYS.items() if kind != config.data.kind for key in keys]
    same = {"lora.targets": lambda a, b: sorted(a) == sorted(b)}
    differ = [
        key
        for key in sorted(before.keys() & now.keys())
        if not same.get(key, operator.eq)(before[key], now[key])
        and key not in ignored
        and not any(key == p or key.startswith(p + ".") for p in RESUMABLE_CHANGES)
    ]
    if differ:
        shown = "; ".join(f"{key}: {before[key]!r} there, {now[key]!r} now" for key in differ[:4])
        raise ConfigError(
            f"{file}: this workdir was trained with other settings ({shown}{'; ...' if len(differ) > 4 else ''}). "
            "Resume it with its own settings, or train in a new workdir"
        )
    return before


def saved_settings(workdir: str) -> dict[str, Any] | None:
    """The dotted settings of `workdir`'s config.json, written when its run started; None when it has none."""
    file = epath.Path(workdir) / "config.json"
    if not file.exists():
        return None
    try:
        return dotted(json.loads(file.read_text()))
    except ValueError as e:
        raise ConfigError(
            f"{file}: not valid JSON ({e}); it records the settings this workdir was trained with (fix or delete it)"
        ) from None


def dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: config keys as the command line names them."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def steps(run: Run) -> dict[str, float]:
    """The step loop, from run.start to train.max_steps; returns the last logged metrics.

    The device never waits for the host: a step is dispatched, then the next batch is built while it runs, and
    metrics reach the host one step late (reading them waits for the previous step only). Before a checkpoint
    the step's own loss is read, so a non-finite loss is never saved: the last good checkpoint survives.
    """
    config, data = run.config, run.data
    c = config.train
    bar = tqdm(total=c.max_steps, initial=run.start, desc="training", disable=not run.lead, dynamic_ncols=True)
    last: dict[str, float] = {}
    pending = None  # (step, metrics still on the device, dispatch time) of the step not yet reported
    batch = step_batch(run, run.start)
    with Interrupts(run.mgr) as interrupts:
        for step in range(run.start, c.max_steps):
            run.state, metrics = run.train_step(run.state, run.base, batch)
            if pending is not None:
                last = report(run, bar, *pending)
            pending = (step + 1, metrics, time.perf_counter())
            if step + 1 < c.max_steps:  # the next batch is built while this step runs
                batch = step_batch(run, step + 1)
            checkpoint_now = (step + 1) % config.checkpoint.every_steps == 0 or step + 1 == c.max_steps
            stop = interrupts.stop_at(step + 1)
            if checkpoint_now or stop:
                last, pending = report(run, bar, *pending), None
                save(run, step + 1)
            if c.eval_every and data.heldout is not None and (step + 1) % c.eval_every == 0:
                if pending is not None:
                    last, pending = report(run, bar, *pending), None
                heldout_loss(run, step + 1)
            if stop:
                run.mgr.wait_until_finished()
                bar.close()
                raise Interrupted(
                    f"{stop}: saved checkpoint at step {step + 1}; rerun the same command to resume",
                    143 if stop == "SIGTERM" else 130,
                )
    if pending is not None:
        last = report(run, bar, *pending)
    bar.close()
    return last


def report(run: Run, bar: tqdm, step: int, metrics: dict[str, jax.Array], dispatched: float) -> dict[str, float]:
    """Read one step's metrics (waiting for that step only), stop on a non-finite loss, log every log_every.

    tokens_per_second divides by the time since the step was dispatched or the previous step was read, whichever
    is later: in a steady loop, the step's own time."""
    values = {k: float(v) for k, v in metrics.items()}
    now = time.perf_counter()
    if not math.isfinite(values["loss"]):
        run.mgr.wait_until_finished()
        raise TrainingDiverged(
            f"step {step}: loss is {values['loss']}; stopped. The last good checkpoint "
            f"(step {run.mgr.latest_step()}) is kept in {ckpt.checkpoint_dir(run.config.workdir)}; with other "
            "settings (a lower train.learning_rate, train.grad_clip), train in a new workdir"
        )
    values["tokens_per_second"] = values.pop("tokens") / max(now - max(dispatched, run.last_read), 1e-9)
    run.last_read = now
    logged = {"step": step, **values}
    if step % run.config.train.log_every == 0:
        run.writer.write(logged)
    bar.update(step - bar.n)
    bar.set_postfix(loss=f"{values['loss']:.4f}", tok_s=f"{values['tokens_per_second']:.0f}")
    return logged


COMMAND = cli.Command(
    __doc__,
    keep_freed_memory=True,
    keys=(
        "workdir",
        "model.path",
        "model.dtype",
        "model.quantize",
        "model.double_quant",
        "model.remat",
        "lora.rank",
        "lora.alpha",
        "lora.targets",
        "data.kind",
        "data.path",
        "data.dataset",
        "data.mode",
        "data.n_train",
        "data.estimation_weight",
        "data.packing",
        "train.max_steps",
        "train.batch_size",
        "train.seq_len",
        "train.learning_rate",
        "checkpoint.every_steps",
        "mesh.data",
        "mesh.fsdp",
        "mesh.tensor",
    ),
)


def main(argv: list[str] | None = None) -> None:
    cli.run(COMMAND, lambda config, _: train(config), argv)


if __name__ == "__main__":
    main()
