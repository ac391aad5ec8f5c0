"""Joining JAX's multi-process runtime (TPU pods, multi-node GPU, local multi-process runs)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax

from capt_jax.config import ConfigDict, ConfigError


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
    `config.validate` has checked `distributed.initialize`. A second call is a no-op (an experiment or the demo
    trains several runs in one process).

    Explicit settings switch jax's detection off: under SLURM it would otherwise pin each process to the
    single GPU numbered SLURM_LOCALID, which is wrong with one process per node.
    """
    d = config.distributed
    explicit = bool(d.coordinator_address)
    if jax.distributed.is_initialized():
        return
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
