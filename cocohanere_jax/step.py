"""The CoCoHaNeRe train step: one jitted, data-parallel ``shard_map`` program per run.

`make_train_step` returns ``(state, batch, table) -> (state, metrics)``: the objective
(`objective.loss_and_aux`: encode, L^B over the global batch, search both banks, re-encode the hard
negatives with gradient, L^HN), gradients summed over devices, clip + AdamW (`optim`), then the bank
writes: push the global batch, update the retrieved slots with their fresh embeddings. Every replica of
the state stays identical. The order of Algorithm 1 and the design decisions (gradient averaging,
dropout keys, memory, shared neighbours, in-place banks, bank consistency) are in docs/METHOD.md.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, PartitionSpec as P

from cocohanere_jax import bank as bank_lib
from cocohanere_jax import objective, optim, reencode, sharding
from cocohanere_jax.reencode import ApplyFn, Params
from cocohanere_jax.step_config import StepConfig
from cocohanere_jax.token_table import BATCH_KEYS, DeviceTokenTable, TokenTable

Array = jax.Array

__all__ = ["TrainState", "init_train_state", "abstract_train_state", "train_step_body", "make_train_step"]


class TrainState(struct.PyTreeNode):
    """Everything the step reads and writes. Replicated on every device."""

    params: Params
    opt_state: optax.OptState
    query_bank: bank_lib.Bank
    code_bank: bank_lib.Bank
    step: Array  # [] int32, number of steps taken
    rng: Array  # raw uint32 PRNG key data; the step key is fold_in(rng, step)


def init_train_state(
    params: Params,
    optimizer: optax.GradientTransformation,
    config: StepConfig,
    dim: int,
    rng: int | Array,
) -> TrainState:
    """A fresh state: optimizer initialised, both banks empty, step 0.

    ``rng`` is a seed, a typed key or raw key data; it is stored as raw key data (checkpoint friendly).
    Place the result with ``sharding.replicate(state, mesh)``.
    """
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    if jax.dtypes.issubdtype(getattr(rng, "dtype", None), jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    return TrainState(
        params=params,
        opt_state=optimizer.init(params),
        query_bank=bank_lib.init_bank(config.bank_size, dim),
        code_bank=bank_lib.init_bank(config.bank_size, dim),
        step=jnp.zeros((), jnp.int32),
        rng=jnp.asarray(rng),
    )


def abstract_train_state(
    params: Params,
    optimizer: optax.GradientTransformation,
    config: StepConfig,
    dim: int,
    rng: int | Array,
) -> TrainState:
    """The shapes and dtypes of :func:`init_train_state`'s result (``jax.ShapeDtypeStruct`` leaves).

    Nothing is allocated: use it to derive shardings, to restore a checkpoint into, or to build the
    state where it lives with ``jax.jit(init, out_shardings=...)`` (`sharding.init_replicated`).
    """
    return jax.eval_shape(lambda p: init_train_state(p, optimizer, config, dim, rng), params)


def _distinct_count(ids: Array, valid: Array) -> Array:
    """Number of distinct DataIDs among the valid entries of ``ids`` (DataIDs are >= 0)."""
    s = jnp.sort(jnp.where(valid, ids, bank_lib.EMPTY).reshape(-1))
    first = jnp.concatenate([s[:1] != bank_lib.EMPTY, (s[1:] != s[:-1]) & (s[1:] != bank_lib.EMPTY)])
    return jnp.sum(first.astype(jnp.int32))


def _after(x: Array, slots: Array) -> Array:
    """``x`` unchanged, but data-dependent on ``slots`` (search results, always >= EMPTY = -1).

    XLA cannot prove the predicate false, so every consumer of the result is ordered after the search
    that produced ``slots``; the select costs one pass over ``x``.
    """
    return jnp.where(jnp.min(slots) < bank_lib.EMPTY, jnp.zeros_like(x), x)



def train_step_body(
    state: TrainState,
    batch: Mapping[str, Array],
    table: DeviceTokenTable,
    *,
    apply_fn: ApplyFn,
    optimizer: optax.GradientTransformation,
    config: StepConfig,
    pad_id: int,
    host_table: TokenTable | None = None,
    axis_name: str | None = None,
    length_stats: reencode.LengthStats | None = None,
) -> tuple[TrainState, dict[str, Array]]:
    """One CoCoHaNeRe step on this device's share of the batch (the body that ``shard_map`` runs).

    With ``axis_name=None`` it is the same step as a single program. Returns the new state and the
    metrics, global values identical on every device (float32 scalars):

    * ``loss`` = ``bimodal_weight * loss_b + hard_negative_weight * loss_hn``; ``loss_b``, ``loss_hn``;
    * ``grad_norm``: global norm of the gradient before clipping; ``lr``: learning rate of this update;
    * ``valid_negatives``: mean number of valid hard negatives per anchor and direction (<= k; below k
      while the bank fills up or when the masks remove candidates);
    * ``in_batch_accuracy``: fraction of queries whose nearest code in the global batch is their own;
    * ``positive_score``: mean cos(q_i, c_i); ``hard_negative_score``: mean cosine of the anchors with
      their valid re-encoded hard negatives;
    * ``query_bank_fill``, ``code_bank_fill``: fraction of occupied slots after the push;
    * ``distinct_negatives``: distinct DataIDs per valid hard negative of the global batch, per direction
      (1 = no neighbour shared by two anchors; 0 without negatives): the share of the re-encoding that a
      de-duplication of shared neighbours would keep;
    * ``dropped_negatives``: valid hard negatives per anchor and direction left out by the re-encode
      budget (``dedup_negatives`` with ``reencode_fraction < 1``; 0 otherwise);
    * ``hard_negative_step``: 1 if this step used L^HN, 0 on an in-batch step of the schedule or of the
      in-batch baseline;
    * ``neighbour_rows``: with ``neighbour_pairs``, the share of the batch's rows that hold a bank
      neighbour's pair instead of the iterator's (0 otherwise); ``neighbour_score``: the mean cosine of
      their anchors' queries with those neighbours' codes (as the bank held them);
    * ``length_plan_misses``: encode calls of this step (all devices) whose length plan did not hold, so
      that they ran the bucketed chunks instead (``step.length_plan``; 0 without plans).
    """
    if axis_name is None:
        gather = psum = lambda x: x  # noqa: E731
        n_global = batch["data_id"].shape[0]
    else:
        gather = lambda x: jax.lax.all_gather(x, axis_name, tiled=True, to="invarying")  # noqa: E731
        psum = lambda x: jax.lax.psum(x, axis_name)  # noqa: E731
        n_global = batch["data_id"].shape[0] * jax.lax.axis_size(axis_name)

    key = jax.random.fold_in(state.rng, state.step)
    loss_fn = functools.partial(
        objective.loss_and_aux, apply_fn=apply_fn, config=config, pad_id=pad_id, host_table=host_table,
        axis_name=axis_name, step=state.step, length_stats=length_stats,
    )
    # 6. Per-device gradients of this device's share, summed over devices: the gradient of the global
    # mean loss, identical on every device (docs/METHOD.md, "Gradient averaging"). Casting the replicated
    # parameters to device-varying makes the reduction an explicit psum, not the transpose of a pvary.
    params = state.params if axis_name is None else jax.lax.pcast(state.params, axis_name, to="varying")
    (loss_share, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, state.query_bank, state.code_bank, batch, table, key
    )
    grads = psum(grads)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    # 7. Push the global batch (embeddings of this step's forward, before the update).
    ids_all = gather(aux.ids)  # the batch's DataIDs as trained on (bank neighbours with neighbour_pairs)
    pushed_q, pushed_c = gather(aux.q), gather(aux.c)
    if config.uses_hard_negatives:
        code_slots, query_slots = gather(aux.code_hits.slots), gather(aux.query_hits.slots)
        c_neg_all, q_neg_all = gather(aux.c_neg), gather(aux.q_neg)
        # The in-place writes below must follow the searches that read the old banks (step 3), and nothing
        # in the data flow says so: the pushed rows do not depend on the search. XLA then keeps the old
        # banks alive by copying each of them twice per step (4 x M x d floats: a MiniLM step at M = 1M
        # took 8.3 s instead of 6.2 s on CPU). Making the pushed rows depend on the search results
        # orders the writes after the reads, and the scatters run in place on the donated buffers.
        pushed_q = _after(pushed_q, query_slots)
        pushed_c = _after(pushed_c, code_slots)
        if config.top_m < config.k and config.other_negatives == "bank":
            # The stale negatives were read from the banks too: order the writes after those reads as well.
            pushed_q, pushed_c, _ = jax.lax.optimization_barrier((pushed_q, pushed_c, (q_neg_all, c_neg_all)))
    query_bank = bank_lib.push(state.query_bank, pushed_q, ids_all)
    code_bank = bank_lib.push(state.code_bank, pushed_c, ids_all)
    # 8. Refresh the retrieved slots with their re-encoded embeddings from every device (only those that
    # were re-encoded: a stale bank negative has nothing new to write; none on a schedule's in-batch step).
    if config.uses_hard_negatives:
        code_bank = bank_lib.update(
            code_bank, code_slots, gather(aux.code_hits.ids), c_neg_all, gather(aux.code_refresh),
        )
        query_bank = bank_lib.update(
            query_bank, query_slots, gather(aux.query_hits.ids), q_neg_all, gather(aux.query_refresh),
        )

    valid_negatives = psum(aux.valid_negatives)
    if config.uses_hard_negatives:
        distinct = _distinct_count(gather(aux.code_hits.ids), gather(aux.code_hits.valid)) + _distinct_count(
            gather(aux.query_hits.ids), gather(aux.query_hits.valid)
        )
    else:
        distinct = jnp.zeros((), jnp.int32)
    metrics = {
        "loss": psum(loss_share),
        "loss_b": psum(aux.loss_b_sum) / n_global,
        "loss_hn": psum(aux.loss_hn_sum) / n_global,
        "grad_norm": grad_norm,
        "lr": optim.current_learning_rate(opt_state),
        "valid_negatives": valid_negatives / (2 * n_global),  # per anchor and direction, out of k
        "in_batch_accuracy": psum(aux.in_batch_correct) / n_global,
        "positive_score": psum(aux.positive_score_sum) / n_global,
        "hard_negative_score": psum(aux.negative_score_sum) / jnp.maximum(valid_negatives, 1),
        "distinct_negatives": distinct / jnp.maximum(valid_negatives, 1),
        "dropped_negatives": psum(aux.dropped_negatives) / (2 * n_global),  # per anchor and direction
        "hard_negative_step": aux.hard_negative_step,  # 1 when this step used L^HN (schedule), else 0
        # Neighbour batches: the share of the batch's rows holding a bank neighbour's pair (the iterator's
        # pair of such a row is not trained on this step), and the anchors' mean cosine with those codes.
        "neighbour_rows": psum(aux.neighbour_rows) / n_global,
        "neighbour_score": psum(aux.neighbour_score_sum) / jnp.maximum(psum(aux.neighbour_rows), 1),
        "query_bank_fill": bank_lib.num_valid(query_bank) / query_bank.size,
        "code_bank_fill": bank_lib.num_valid(code_bank) / code_bank.size,
        "length_plan_misses": psum(aux.plan_misses),
    }
    metrics = {name: jnp.asarray(value, jnp.float32) for name, value in metrics.items()}
    new_state = state.replace(
        params=params, opt_state=opt_state, query_bank=query_bank, code_bank=code_bank, step=state.step + 1
    )
    return new_state, metrics


def make_train_step(
    encoder: nn.Module | ApplyFn,
    optimizer: optax.GradientTransformation,
    config: StepConfig,
    mesh: Mesh,
    *,
    pad_id: int,
    host_table: TokenTable | None = None,
    donate: bool = True,
    compiler_options: Mapping[str, Any] | None = None,
    length_stats: reencode.LengthStats | None = None,
) -> Callable[[TrainState, Mapping[str, Array], DeviceTokenTable], tuple[TrainState, dict[str, Array]]]:
    """The jitted, data-parallel CoCoHaNeRe step ``(state, batch, table) -> (state, metrics)``.

    ``jax.shard_map`` over the one-axis ``("data",)`` mesh, under ``jax.jit``; state and table
    replicated, batch split along its first axis (the global batch must divide by the device count),
    state buffers donated (do not reuse the state passed in). Compiles once: every shape is static and
    the step counter is an array.

    Args:
      encoder: a linen Module honouring the encoder contract, or an ``apply_fn``.
      optimizer: from :func:`optim.make_optimizer` (or any optax transformation).
      config: step options (as ``config.for_platform`` of the mesh's devices: padded off the CPU by default).
      mesh: from ``sharding.make_mesh``.
      pad_id: the encoder's pad id (T5: 0, RoBERTa: 1).
      host_table: the host `TokenTable`, required with ``config.token_table == "host"``.
      donate: donate the state buffers.
      compiler_options: passed to ``jax.jit`` (e.g. ``{"xla_backend_optimization_level": 0}`` to cut
        CPU compile time in tests).
      length_stats: the token table's length histograms (`reencode.LengthStats.from_table`), for the
        static length plans of ``config.length_plan``; None: the bucketed chunks everywhere.
    """
    if config.token_table == "host" and host_table is None:
        raise ValueError('step.py: token_table="host" needs make_train_step(..., host_table=<the TokenTable>).')
    config = config.for_platform(mesh.devices.flat[0].platform)  # length-aware on CPU only, by default
    body = functools.partial(
        train_step_body, apply_fn=reencode.as_apply_fn(encoder), optimizer=optimizer, config=config, pad_id=pad_id,
        host_table=host_table if config.token_table == "host" else None, axis_name=sharding.DATA_AXIS,
        length_stats=length_stats,
    )
    sharded = jax.shard_map(
        body, mesh=mesh, in_specs=(P(), P(sharding.DATA_AXIS), P()), out_specs=(P(), P()),
    )

    def step(state: TrainState, batch: Mapping[str, Array], table: DeviceTokenTable):
        sharding.check_global_batch(batch["data_id"].shape[0], mesh)
        # With the token rows on the device the step gathers the batch's own rows by DataID: token rows
        # in the batch are then ignored (send them with TokenTable.batch(ids, token_rows=False)).
        keys = ("data_id",) if config.token_table == "device" else BATCH_KEYS
        return sharded(state, {name: batch[name] for name in keys}, table)

    replicated = sharding.replicated_sharding(mesh)
    return jax.jit(
        step,
        in_shardings=(replicated, sharding.batch_sharding(mesh), replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,) if donate else (),
        compiler_options=dict(compiler_options) if compiler_options else None,
    )

