"""LoRA post-training: `python -m capt_jax.train --config configs/NAME.py [--config.key=value ...]`.

One jitted, donated, sharded step (loss, grads of the adapters only, AdamW update); orbax checkpoints with
automatic resume; SIGTERM/Ctrl-C save before exiting; a non-finite loss stops the run and keeps the last good
checkpoint.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from capt_jax import checkpoint as ckpt
from capt_jax.batches import BatchStream, TokenizedSet, make_batch, read_jsonl_pairs, tokenize_pairs
from capt_jax.config import ConfigDict, ConfigError, load_config, mesh_shape, validate
from capt_jax.data import DataError, training_data
from capt_jax.lora import init_lora, lora_scale, make_optimizer, warmup_cosine
from capt_jax.metrics import MetricsWriter
from capt_jax.model import ModelConfig, Params
from capt_jax.objective import loss_sums
from capt_jax.pretrained import Pretrained, load_pretrained
from capt_jax.sharding import batch_sharding, make_mesh, placer, replicated, tree_shardings

State = dict[str, Any]  # {"step", "lora", "opt", "rng"}: everything a checkpoint restores


class TrainingDiverged(RuntimeError):
    pass


def maybe_initialize_distributed(config: ConfigDict) -> None:
    """Join JAX's multi-host runtime when asked, or when a cluster environment (TPU pod, SLURM) is detected."""
    d = config.distributed
    cluster = (
        len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or "JAX_COORDINATOR_ADDRESS" in os.environ
    )
    if d.initialize == "never" or (d.initialize == "auto" and not (cluster or d.coordinator_address)):
        return
    kwargs = {}
    if d.coordinator_address:
        kwargs = dict(coordinator_address=d.coordinator_address, num_processes=d.num_processes, process_id=d.process_id)
    jax.distributed.initialize(**kwargs)


def training_pairs(config: ConfigDict) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, held-out) prompt/completion pairs: a JSONL file, or CAPT-intervened CLadder / PrOntoQA copies."""
    if config.data.kind == "capt":
        return training_data(config.data), []  # held-out evaluation is accuracy: python -m capt_jax.evaluate
    pairs = read_jsonl_pairs(config.data.path)
    holdout = int(len(pairs) * config.data.holdout_fraction)
    return pairs[: len(pairs) - holdout], pairs[len(pairs) - holdout :]


def pad_token_id(model: Pretrained) -> int:
    tok = model.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


def make_train_step(
    model_config: ModelConfig, config: ConfigDict, optimizer: optax.GradientTransformation, schedule: optax.Schedule
) -> Callable:
    """step(state, base, batch) -> (state, metrics); batch leaves are [grad_accum, micro_batch, T].

    Micro-batch gradients are of the *summed* NLL and are divided once by the global batch's loss weight, so
    accumulation is exactly the same as one big batch.
    """
    scale, dropout = lora_scale(config.lora.rank, config.lora.alpha), config.lora.dropout

    def step(state: State, base: Params, batch: dict[str, jax.Array]) -> tuple[State, dict[str, jax.Array]]:
        rng, step_rng = jax.random.split(state["rng"])

        def micro_loss(adapters, micro_batch, key):
            nll, weight = loss_sums(adapters, base, micro_batch, model_config, scale, dropout, key)
            return nll, weight

        def accumulate(carry, xs):
            grads, nll, weight = carry
            (micro_nll, micro_weight), g = jax.value_and_grad(micro_loss, has_aux=True)(state["lora"], *xs)
            return (jax.tree.map(jnp.add, grads, g), nll + micro_nll, weight + micro_weight), None

        zeros = jax.tree.map(jnp.zeros_like, state["lora"])
        keys = jax.random.split(step_rng, config.train.grad_accum)
        (grads, nll, weight), _ = jax.lax.scan(accumulate, (zeros, 0.0, 0.0), (batch, keys))
        weight = jnp.maximum(weight, 1.0)
        grads = jax.tree.map(lambda g: g / weight, grads)
        updates, opt = optimizer.update(grads, state["opt"], state["lora"])
        new_state = {
            "step": state["step"] + 1,
            "lora": optax.apply_updates(state["lora"], updates),
            "opt": opt,
            "rng": rng,
        }
        metrics = {
            "loss": nll / weight,
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

    def __exit__(self, *_exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def to_global(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """Host arrays -> global arrays; each process transfers only the rows its devices hold."""
    return {k: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index]) for k, v in batch.items()}


def micro_batches(batch: dict[str, np.ndarray], grad_accum: int) -> dict[str, np.ndarray]:
    return {k: v.reshape(grad_accum, v.shape[0] // grad_accum, *v.shape[1:]) for k, v in batch.items()}


def heldout_loss(eval_step, adapters, base, data: TokenizedSet, config: ConfigDict, pad_id: int, sharding) -> float:
    nll = weight = 0.0
    size = config.train.batch_size // config.train.grad_accum
    for start in range(0, len(data), size):
        rows = [min(r, len(data) - 1) for r in range(start, start + size)]  # repeat the last row to fill
        batch = make_batch(data, rows, config.train.seq_len, pad_id)
        batch["weights"][len(data) - start :] = 0.0
        n, w = eval_step(adapters, base, to_global(batch, sharding))
        nll, weight = nll + float(n), weight + float(w)
    return nll / max(weight, 1.0)


def train(config: ConfigDict) -> dict[str, float]:
    """Run (or resume) training as configured; returns the last logged metrics."""
    maybe_initialize_distributed(config)
    validate(config, jax.device_count())
    mesh = make_mesh(mesh_shape(config, jax.device_count()))
    lead = jax.process_index() == 0
    train_pairs, heldout_pairs = training_pairs(config)  # data errors surface before the model loads
    model = load_pretrained(
        config.model.path,
        dtype=config.model.dtype,
        compute_dtype=config.model.compute_dtype,
        attention_impl=None if config.model.attention_impl == "auto" else config.model.attention_impl,
        place=placer(mesh),
        progress=lead,
    )
    model_config = model.config.replace(remat_policy=config.model.remat)
    pad_id = pad_token_id(model)
    tokenize = functools.partial(
        tokenize_pairs,
        model.tokenizer,
        seq_len=config.train.seq_len,
        chat_template=config.data.chat_template,
        loss_on=config.data.loss_on,
    )
    train_set = tokenize(train_pairs)
    heldout_set = tokenize(heldout_pairs) if heldout_pairs else None
    stream = BatchStream(train_set, config.train.batch_size, config.train.seq_len, config.seed, pad_id)
    if train_set.truncated and lead:
        print(
            f"note: {train_set.truncated} training sequences were longer than train.seq_len="
            f"{config.train.seq_len} and were truncated"
        )

    schedule = warmup_cosine(config.train.learning_rate, config.train.max_steps, config.train.warmup_ratio)
    optimizer = make_optimizer(schedule, config.train.weight_decay, config.train.grad_clip)

    def init_state(rng: jax.Array) -> State:
        rng, lora_rng = jax.random.split(rng)
        adapters = init_lora(model_config, config.lora.targets, config.lora.rank, lora_rng)
        return {"step": jnp.array(0, jnp.int32), "lora": adapters, "opt": optimizer.init(adapters), "rng": rng}

    state_shardings = tree_shardings(jax.eval_shape(init_state, jax.random.PRNGKey(0)), mesh)
    state = jax.jit(init_state, out_shardings=state_shardings)(jax.random.PRNGKey(config.seed))
    base_shardings = jax.tree.map(lambda x: x.sharding, model.params)
    rows, eval_rows = batch_sharding(mesh, 3, batch_dim=1), batch_sharding(mesh, 2)
    train_step = jax.jit(
        make_train_step(model_config, config, optimizer, schedule),
        in_shardings=(state_shardings, base_shardings, rows),
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
        (Path(config.workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))
    # A local base is recorded by absolute path, so export works from any directory; hub ids stay as given.
    base = Path(config.model.path).expanduser()
    meta = {
        "base_model": str(base.resolve()) if base.exists() else str(config.model.path),
        "lora": {
            "rank": config.lora.rank,
            "alpha": config.lora.alpha,
            "dropout": config.lora.dropout,
            "targets": list(config.lora.targets),
        },
    }

    def save(step: int) -> None:
        ckpt.save(mgr, step, state, {**meta, "data_position": step})

    if start >= config.train.max_steps:
        if lead:
            print(f"{config.workdir}: already trained to train.max_steps={config.train.max_steps}; nothing to do")
        return {"step": start}
    if heldout_set is not None and start == 0:  # the baseline every later eval_loss is compared with
        writer.write(
            {
                "step": 0,
                "eval_loss": heldout_loss(
                    eval_step, state["lora"], model.params, heldout_set, config, pad_id, eval_rows
                ),
            }
        )
    last: dict[str, float] = {}
    bar = tqdm(total=config.train.max_steps, initial=start, desc="training", disable=not lead, dynamic_ncols=True)
    with Interrupts() as interrupts:
        for step in range(start, config.train.max_steps):
            began = time.perf_counter()
            batch = to_global(micro_batches(stream.batch(step), config.train.grad_accum), rows)
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
                            eval_step, state["lora"], model.params, heldout_set, config, pad_id, eval_rows
                        ),
                    }
                )
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_second']:.0f}")
            if (step + 1) % config.checkpoint.every_steps == 0 or step + 1 == config.train.max_steps:
                save(step + 1)
            if interrupts.requested:
                save(step + 1)
                mgr.wait_until_finished()
                bar.close()
                print(f"{interrupts.requested}: saved checkpoint at step {step + 1}; rerun the same command to resume")
                sys.exit(143 if interrupts.requested == "SIGTERM" else 130)
    bar.close()
    if heldout_set is not None:
        last["eval_loss"] = heldout_loss(eval_step, state["lora"], model.params, heldout_set, config, pad_id, eval_rows)
        writer.write({"step": int(last.get("step", start)), "eval_loss": last["eval_loss"]})
    mgr.wait_until_finished()
    mgr.close()
    writer.close()
    return last


def parse_args(argv: list[str]) -> tuple[str, list[str]]:
    """`--config PATH` plus any number of `--config.key=value` overrides."""
    path, overrides, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            path, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg.startswith("--config."):
            overrides.append(arg)
        else:
            raise ConfigError(f"unexpected argument {arg!r}; usage: --config configs/NAME.py [--config.key=value ...]")
        i += 1
    if path is None:
        raise ConfigError("usage: python -m capt_jax.train --config configs/NAME.py [--config.key=value ...]")
    return path, overrides


def main(argv: list[str] | None = None) -> None:
    from capt_jax.batches import DataFileError
    from capt_jax.model import ModelConfigError
    from capt_jax.weights import WeightsError

    try:
        path, overrides = parse_args(sys.argv[1:] if argv is None else argv)
        train(load_config(path, overrides))
    except (
        ConfigError,
        DataError,
        DataFileError,
        ModelConfigError,
        WeightsError,
        ckpt.CheckpointError,
        TrainingDiverged,
        FileNotFoundError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
