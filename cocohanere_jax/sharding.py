"""The mesh and every sharding decision of the project, in one place.

Data parallelism only: one mesh axis, ``"data"``, over all devices. The train state (parameters,
optimizer state, both memory banks, step, rng) and the token table are **replicated**; a batch is
**split along its leading (example) axis**. The step runs as ``jax.shard_map`` under ``jax.jit`` over this
mesh (what a ``pmap`` compiles to in this JAX version; docs/METHOD.md).

The mesh is built with ``jax.sharding.Mesh`` (Auto axis types), not ``jax.make_mesh`` (Explicit axes,
under which a scatter into a replicated array needs ``out_sharding=``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = [
    "DATA_AXIS",
    "make_mesh",
    "replicated_sharding",
    "batch_sharding",
    "replicate",
    "replicated_abstract",
    "init_replicated",
    "shard_batch",
    "check_global_batch",
]

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis ``("data",)`` mesh over ``devices`` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("sharding.py: make_mesh got an empty device list.")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (train state, token table, metrics)."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over ``"data"`` (batches)."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a pytree (e.g. a fresh ``TrainState``) replicated on every device of ``mesh``.

    Every process must pass the same values. Always copies (``may_alias=False``): the step donates the
    state, and donating an alias would delete the caller's arrays (e.g. the initial parameters).
    """
    return jax.device_put(tree, replicated_sharding(mesh), may_alias=False)


def replicated_abstract(tree: Any, mesh: Mesh) -> Any:
    """``jax.ShapeDtypeStruct`` leaves of ``tree`` (arrays or shape structs), replicated on ``mesh``: the
    target a checkpoint is restored into, with nothing allocated."""
    where = replicated_sharding(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=where), tree)


def init_replicated(fn: Callable[..., Any], *args: Any, mesh: Mesh) -> Any:
    """``fn(*args)`` computed where it lives: its outputs are born replicated on ``mesh``
    (``jax.jit(fn, out_shardings=...)``) instead of built on the host and copied (big_vision, maxtext)."""
    return jax.jit(fn, out_shardings=replicated_sharding(mesh))(*replicate(args, mesh))


def check_global_batch(global_batch: int, mesh: Mesh) -> int:
    """Return the per-device batch; fail with the fix if the global batch does not split evenly."""
    n = mesh.shape[DATA_AXIS]
    if global_batch % n:
        raise ValueError(
            f"sharding.py: global batch {global_batch} is not divisible by the {n} devices of the "
            f"'{DATA_AXIS}' mesh axis; set the batch size to a multiple of {n}."
        )
    return global_batch // n


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Turn this process's rows of a batch (pytree of host arrays) into global arrays split over ``"data"``.

    With one process this is the whole batch; with several, each process passes its own contiguous slice
    (its ``jax.process_index()``-th share) and the global batch is their concatenation.
    """
    sharding = batch_sharding(mesh)

    def put(x):
        x = np.asarray(x)
        global_rows = x.shape[0] * jax.process_count()
        check_global_batch(global_rows, mesh)
        return jax.make_array_from_process_local_data(sharding, x, (global_rows,) + x.shape[1:])

    return jax.tree.map(put, batch)
