"""LoRA post-training.

    python -m capt_jax.train --config configs/NAME.py [--config.key=value ...]

One jitted, donated, sharded step (loss, grads of the adapters only, AdamW update); orbax checkpoints with
automatic resume; SIGTERM/Ctrl-C save before exiting; a non-finite loss stops the run and keeps the last good
checkpoint.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import time
from collections.abc import Callable, Mapping
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
from capt_jax.config import ConfigDict, ConfigError, mesh_shape, validate
from capt_jax.data import abstract, training_data, training_examples
from capt_jax.errors import CaptError, Interrupted
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
from capt_jax.pretrained import load_pretrained, resolve_model_dir
from capt_jax.sharding import Layout, batch_sharding, make_layout, make_mesh, mirrored_axes, placer, replicated

# {"step", "lora", "opt", "rng"}: everything a checkpoint restores. "lora" is the trainable tree: the adapters
# plus any lora.extra_trainable leaves (capt_jax.lora).
State = dict[str, Any]


class TrainingDiverged(CaptError, RuntimeError):
    pass


def cluster_detected(env: Mapping[str, str]) -> bool:
    """A multi-process launch that jax.distributed can configure itself (TPU pod worker list, SLURM, or a
    coordinator in the environment)."""
    return (
        len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
        or int(env.get("SLURM_NTASKS", "1")) > 1
        or "JAX_COORDINATOR_ADDRESS" in env
    )


def maybe_initialize_distributed(config: ConfigDict) -> None:
    """Join JAX's multi-host runtime: explicitly when distributed.coordinator_address is set (the launchers in
    launch/ do), by jax's own cluster detection when asked (`always`) or when a cluster is detected (`auto`).

    Explicit settings switch jax's detection off: under SLURM it would otherwise pin each process to the
    single GPU numbered SLURM_LOCALID, which is wrong with one process per node.
    """
    d = config.distributed
    if d.initialize not in ("auto", "always", "never"):
        raise ConfigError(
            f"config key 'distributed.initialize': {d.initialize!r} is not one of ['auto', 'always', 'never']"
        )
    explicit = bool(d.coordinator_address)
    if d.initialize == "never" or (d.initialize == "auto" and not (explicit or cluster_detected(os.environ))):
        return
    kwargs = {}
    if explicit:
        if not 0 <= d.process_id < d.num_processes:
            raise ConfigError(
                f"config keys 'distributed.num_processes'={d.num_processes} and 'distributed.process_id'="
                f"{d.process_id}: with 'distributed.coordinator_address' set, both are needed, "
                "with 0 <= process_id < num_processes"
            )
        kwargs = dict(
            coordinator_address=d.coordinator_address,
            num_processes=d.num_processes,
            process_id=d.process_id,
            cluster_detection_method="deactivate",
        )
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:  # no cluster detected, or JAX already initialized
        source = f"coordinator {d.coordinator_address}" if explicit else "jax's cluster auto-detection"
        raise ConfigError(
            f"config key 'distributed': could not join the distributed runtime via {source}: {type(e).__name__}: {e}"
        ) from e


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
    """SIGTERM (TPU preemption) and Ctrl-C ask for a checkpoint at the end of the current step."""

    def __init__(self):
        self.requested: str | None = None
        self._previous = {}

    def __enter__(self) -> Interrupts:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        self.requested = signal.Signals(signum).name

    def agreed(self) -> str | None:
        """The signal to stop for, decided together: on a pod, hosts see SIGTERM at different steps, and a save
        is collective, so every host stops at the first step any host was signalled."""
        if jax.process_count() == 1:
            return self.requested
        codes = (None, "SIGINT", "SIGTERM")  # a preemption (SIGTERM) anywhere outranks a Ctrl-C
        return codes[int(multihost_utils.process_allgather(np.array(codes.index(self.requested))).max())]

    def __exit__(self, *_exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def host_rows(layout: Layout, size: int) -> np.ndarray:
    """Which rows of a `size`-row batch this process's devices hold: all of them on one host, a share on a pod."""
    indices = batch_sharding(layout, 1).addressable_devices_indices_map((size,)).values()
    return np.unique(np.concatenate([np.arange(size)[index[0]] for index in indices]))


def host_batch(data: TokenizedSet, rows: np.ndarray, mine: np.ndarray, pad_id: int) -> dict[str, np.ndarray]:
    """This process's part of the batch with rows [grad_accum, micro_batch]: leaves [grad_accum, len(mine), ...],
    padded to the length the whole batch needs, tokenizing only those rows."""
    local = rows[:, mine]
    length = batch_length(data, rows.reshape(-1))
    batch = make_batch(data, local.reshape(-1), length, pad_id, loss_width(data, rows.reshape(-1), length))
    return {k: v.reshape(*local.shape, *v.shape[1:]) for k, v in batch.items()}


def to_global(
    batch: dict[str, np.ndarray], rows: np.ndarray, size: int, layout: Layout, batch_dim: int = 0
) -> dict[str, jax.Array]:
    """Host arrays holding rows `rows` (of `size`, along batch_dim) -> global arrays split over rows.

    Each process passes only the rows its devices hold (host_rows), so no host builds the whole global batch.
    """
    position = np.zeros(size, np.int64)
    position[rows] = np.arange(len(rows))

    def part(v: np.ndarray, index: tuple[slice, ...]) -> np.ndarray:
        return v[(*index[:batch_dim], position[index[batch_dim]], *index[batch_dim + 1 :])]

    return {
        k: jax.make_array_from_callback(
            (*v.shape[:batch_dim], size, *v.shape[batch_dim + 1 :]),
            batch_sharding(layout, v.ndim, batch_dim),
            functools.partial(part, v),
        )
        for k, v in batch.items()
    }


def heldout_loss(
    eval_step, adapters, base, data: TokenizedSet, config: ConfigDict, pad_id: int, layout: Layout
) -> float:
    nll = weight = 0.0
    size = config.train.batch_size // config.train.grad_accum
    mine = host_rows(layout, size)
    for start in range(0, len(data), size):
        rows = np.minimum(np.arange(start, start + size), len(data) - 1)  # repeat the last row to fill
        length = batch_length(data, rows)
        batch = make_batch(data, rows[mine], length, pad_id, loss_width(data, rows, length))
        batch["weights"][start + mine >= len(data)] = 0.0
        n, w = eval_step(adapters, base, to_global(batch, mine, size, layout))
        nll, weight = nll + float(n), weight + float(w)
    return nll / max(weight, 1.0)


def train(config: ConfigDict) -> dict[str, float]:
    """Run (or resume) training as configured; returns the last logged metrics."""
    maybe_initialize_distributed(config)
    validate(config, jax.device_count())
    mesh = make_mesh(mesh_shape(config, jax.device_count()))
    lead = jax.process_index() == 0
    train_pairs, heldout_pairs = training_pairs(config)  # data errors surface before the model loads
    folder = resolve_model_dir(config.model.path)
    architecture = ModelConfig.from_pretrained_dir(folder)
    extra_paths = extra_trainable_paths(config.lora.extra_trainable, param_shapes(architecture), str(folder))
    layout = make_layout(mesh, config.mesh.rules, axis_sizes(architecture, config.lora.rank))
    model = load_pretrained(
        folder,
        dtype=config.model.dtype,
        compute_dtype=config.model.compute_dtype,
        attention_impl=None if config.model.attention_impl == "auto" else config.model.attention_impl,
        place=placer(layout, param_axes(architecture)),
        progress=lead,
    )
    model_config = model.config.replace(remat_policy=config.model.remat)
    pad_id = tokenization.pad_id(model.tokenizer, model.config.eos_token_ids)
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
    train_set = tokenize(train_pairs)
    heldout_set = tokenize(heldout_pairs) if heldout_pairs else None
    if config.data.packing:
        train_set = pack(train_set, config.seed)
    stream = BatchStream(train_set.lengths, config.train.batch_size, config.seed)
    mine = host_rows(layout, config.train.batch_size // config.train.grad_accum)
    if train_set.truncated and lead:
        print(
            f"note: {train_set.truncated} training sequences were longer than train.seq_len="
            f"{config.train.seq_len} and were truncated"
        )

    schedule = warmup_cosine(config.train.learning_rate, config.train.max_steps, config.train.warmup_ratio)
    optimizer = make_optimizer(
        schedule, config.train.weight_decay, config.train.grad_clip, b_lr_ratio=config.lora.b_lr_ratio
    )

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
    state_shardings = layout.shardings({"step": P(), "lora": trainable_axes, "opt": opt_axes, "rng": P()})
    state = jax.jit(init_state, out_shardings=state_shardings)(jax.random.PRNGKey(config.seed), extras)
    base_shardings = jax.tree.map(lambda x: x.sharding, model.params)
    train_step = jax.jit(
        make_train_step(model_config, config, optimizer, schedule, layout),
        in_shardings=(state_shardings, base_shardings, None),  # batches arrive sharded by to_global
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=(0,),
    )
    eval_step = jax.jit(make_eval_step(model_config, config))

    mgr = ckpt.manager(config.workdir, config.checkpoint.keep, config.checkpoint.async_save)
    restored = ckpt.restore(mgr, state)
    start = 0
    if restored is not None:
        state, meta = restored
        start = int(meta["data_position"])
        if lead:
            print(f"resuming from {ckpt.checkpoint_dir(config.workdir)}/{start}")
    writer = MetricsWriter(config.workdir, enabled=lead, resume_step=start)
    if lead:
        (epath.Path(config.workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))
    # A local base is recorded by absolute path, so export works from any directory; hub ids stay as given.
    base = Path(config.model.path).expanduser()
    meta = {
        "base_model": str(base.resolve()) if base.exists() else str(config.model.path),
        "lora": {
            "rank": config.lora.rank,
            "alpha": config.lora.alpha,
            "dropout": config.lora.dropout,
            "targets": list(config.lora.targets),
            "b_lr_ratio": config.lora.b_lr_ratio,
            "extra_trainable": list(config.lora.extra_trainable),
        },
    }

    def save(step: int) -> None:
        ckpt.save(mgr, step, state, {**meta, "data_position": step})
        writer.flush()  # metrics up to every checkpoint are durable, even in a gs:// workdir

    if start >= config.train.max_steps:
        if lead:
            print(f"{config.workdir}: already trained to train.max_steps={config.train.max_steps}; nothing to do")
        return {"step": start}
    if heldout_set is not None and start == 0:  # the baseline every later eval_loss is compared with
        writer.write(
            {
                "step": 0,
                "eval_loss": heldout_loss(eval_step, state["lora"], model.params, heldout_set, config, pad_id, layout),
            }
        )
    last: dict[str, float] = {}
    bar = tqdm(total=config.train.max_steps, initial=start, desc="training", disable=not lead, dynamic_ncols=True)
    with Interrupts() as interrupts:
        for step in range(start, config.train.max_steps):
            began = time.perf_counter()
            rows = stream.rows(step).reshape(config.train.grad_accum, -1)
            batch = to_global(host_batch(train_set, rows, mine, pad_id), mine, rows.shape[1], layout, batch_dim=1)
            state, metrics = train_step(state, model.params, batch)
            metrics = {k: float(v) for k, v in metrics.items()}  # waits for the step: honest timing
            if not math.isfinite(metrics["loss"]):
                mgr.wait_until_finished()
                raise TrainingDiverged(
                    f"step {step + 1}: loss is {metrics['loss']}; stopped. The last good checkpoint "
                    f"(step {mgr.latest_step()}) is kept in {ckpt.checkpoint_dir(config.workdir)}"
                )
            metrics["tokens_per_second"] = metrics.pop("tokens") / (time.perf_counter() - began)
            last = {"step": step + 1, **metrics}
            if (step + 1) % config.train.log_every == 0:
                writer.write(last)
            if heldout_set is not None and config.train.eval_every and (step + 1) % config.train.eval_every == 0:
                writer.write(
                    {
                        "step": step + 1,
                        "eval_loss": heldout_loss(
                            eval_step, state["lora"], model.params, heldout_set, config, pad_id, layout
                        ),
                    }
                )
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_second']:.0f}")
            if (step + 1) % config.checkpoint.every_steps == 0 or step + 1 == config.train.max_steps:
                save(step + 1)
            signal_name = interrupts.agreed()
            if signal_name:
                save(step + 1)
                mgr.wait_until_finished()
                bar.close()
                raise Interrupted(
                    f"{signal_name}: saved checkpoint at step {step + 1}; rerun the same command to resume",
                    143 if signal_name == "SIGTERM" else 130,
                )
    bar.close()
    if heldout_set is not None:
        last["eval_loss"] = heldout_loss(eval_step, state["lora"], model.params, heldout_set, config, pad_id, layout)
        writer.write({"step": int(last.get("step", start)), "eval_loss": last["eval_loss"]})
    mgr.wait_until_finished()
    mgr.close()
    writer.close()
    return last


COMMAND = cli.Command(
    __doc__,
    keys=(
        "workdir",
        "model.path",
        "model.dtype",
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
