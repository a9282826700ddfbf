"""The CoCoHaNeRe train step: memory banks, kNN, re-encoding with gradient, losses, data-parallel.

One call of the step runs the paper's Algorithm 1 (METHOD.md section 4) on a global batch:

1. encode the local batch (queries and codes, dropout on);
2. all-gather the embeddings; L^B over the **global** batch (every device scores its own rows against
   all B candidates, so in-batch negatives are the global batch, not the per-device share);
3. search both banks **before** pushing the current batch: for each query the k nearest codes, for each
   code the k nearest queries (``knn="bi"``; ``"uni"`` searches code->code and query->query instead);
   masks: empty slots and the anchor's own DataID always, optionally the current global batch's
   DataIDs, same-text duplicates and a false-negative margin;
4. gather the retrieved DataIDs' token rows (device-resident table, or a host table through
   ``jax.pure_callback``) and re-encode them with the trainable encoder, dropout on, with gradient;
5. L^HN with the missing (masked) negatives left out;
6. gradients (averaged over devices), grad-norm clip, AdamW with linear decay;
7. push the global batch into both banks;
8. update the retrieved slots with the re-encoded embeddings, gathered from every device, so every
   replica of the bank is identical.

Design decisions (see also the docstrings below):

* **Gradient averaging.** Each device's loss is its rows' share of the global mean
  (``sum(rows) / global_batch``); each device differentiates its share with respect to its (pcast to
  device-varying) copy of the parameters and the gradients are ``psum``-med: the result is the gradient
  of the global mean loss, identical on every device, i.e. the average of per-device gradients of
  per-device mean losses (a ``pmean``). The gradient through ``all_gather`` (another device's rows used as
  in-batch negatives) is its transpose, a reduce-scatter, so cross-device negatives get their gradient
  too. ``check_vma`` stays on, so a value that should be replicated but is not fails at trace time.
* **Dropout rng.** ``key = fold_in(state.rng, state.step)``; every encoded row gets its own key folded
  from a stream id and its *global* row index (batch example, or anchor * k + j for a negative), and the
  encoder is ``vmap``-ed over rows. Dropout masks, hence results, do not depend on the number of devices
  or on the re-encoding chunk size: 1 and 4 devices give the same step with dropout on.
* **Memory.** ``reencode_chunk`` > 0 re-encodes the n*k negatives in chunks with ``jax.lax.map`` and
  ``remat=True`` wraps each chunk in ``jax.checkpoint``: the forward keeps only each chunk's inputs and
  the backward recomputes one chunk at a time, so the activation peak is one chunk's, not all n*k rows'
  (same memory bound as GradCache, for one extra forward of the negatives, without its two-pass
  bookkeeping). Block-level remat inside the encoder is the model's business. Measured with XLA's
  memory analysis (CPU compile, float32, a 110M T5-base-sized encoder with dropout, B=32, k=10, Lq=128,
  Lc=256, one device): temporaries 186 GiB without, 33 GiB with ``remat=True, reencode_chunk=40``,
  25 GiB with ``reencode_chunk=20``; use the latter two for the paper setting on one 80 GB GPU.
* **Shared neighbours** (``dedup_negatives``, off by default). Anchors often retrieve the same bank
  entries (the ``distinct_negatives`` metric says how often). With the option on, each distinct
  retrieved DataID is re-encoded once per device and direction, its dropout key folded from the DataID
  (so device counts still agree), and its embedding and gradient are shared by the anchors that
  retrieved it; without dropout the loss and gradient equal the per-anchor re-encoding. The saving comes
  from ``reencode_fraction`` < 1, a static budget of distinct rows (nearest ranks first); negatives
  beyond it are masked out of L^HN and counted in ``dropped_negatives``.
* **In-place banks.** The pushed rows are made data-dependent on the search results, so XLA orders the
  bank writes after the searches that read the old banks and scatters into the donated buffers instead
  of copying both banks every step.
* **Bank consistency.** Pushes and updates use only all-gathered (device-invariant) values, so every
  replica runs the same deterministic program on the same inputs; duplicates (two anchors that
  retrieved the same slot) are resolved by "first in global order wins" (``bank.update``), and a slot
  recycled by the push between search and update is left alone.
* **Empty bank.** Early steps (fewer than k valid candidates) return masked negatives; L^HN of a row
  without valid negatives is 0 and the row still counts in the mean (paper normalisation).

The batch is a mapping with ``data_id`` [B] int32, ``query_ids`` [B, Lq] int32 and ``code_ids``
[B, Lc] int32 (ids padded with the encoder's ``pad_id``; the attention mask is ``ids != pad_id``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, PartitionSpec as P

from cocohanere_jax import bank as bank_lib
from cocohanere_jax import losses
from cocohanere_jax import sharding

Array = jax.Array
Params = Any
# apply_fn(params, input_ids [n, L], attention_mask [n, L], deterministic, dropout_key) -> [n, dim]
ApplyFn = Callable[[Params, Array, Array, bool, Array], Array]

__all__ = [
    "StepConfig",
    "TrainState",
    "TokenTable",
    "HostTokenTable",
    "Aux",
    "as_apply_fn",
    "make_schedule",
    "make_optimizer",
    "current_learning_rate",
    "init_train_state",
    "row_keys",
    "encode_rows",
    "loss_and_aux",
    "train_step_body",
    "make_train_step",
]

BATCH_KEYS = ("data_id", "query_ids", "code_ids")

# Dropout rng streams (folded into the step key before the global row index).
_STREAM_QUERY, _STREAM_CODE, _STREAM_NEG_CODE, _STREAM_NEG_QUERY = 0, 1, 2, 3
# With de-duplicated re-encoding the key of a negative is folded from its DataID instead of its row.
_STREAM_DEDUP_CODE, _STREAM_DEDUP_QUERY = 4, 5


# --------------------------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Options of the train step. Hashable, so it can be closed over by the jitted step."""

    temperature: float = 0.05  # tau; METHOD.md section 3 (UniXcoder uses 0.05, CoCoSoDa 0.07)
    k: int = 10  # hard negatives per anchor and direction
    bank_size: int = 8096  # M, slots per bank (paper: 8,096)
    knn: str = "bi"  # "bi": codes nearest each query, queries nearest each code; "uni": code->code, query->query
    bimodal_weight: float = 1.0  # weight of L^B; 0 = "w/o BCL" ablation
    hard_negative_weight: float = 1.0  # weight of L^HN; 0 = "w/o HNCL" (in-batch baseline, no search)
    mask_in_batch: bool = True  # never retrieve DataIDs of the current global batch
    mask_duplicates: bool = False  # mask same-text pairs (needs TokenTable.query_hash / code_hash)
    false_negative_margin: float | None = None  # drop candidates with score > pos + margin*|pos|; None = off
    negative_gradient: bool = True  # False: stop-gradient on re-encoded negatives (ablation)
    token_table: str = "device"  # "device": TokenTable arrays; "host": HostTokenTable via pure_callback
    remat: bool = False  # jax.checkpoint each re-encoding chunk
    reencode_chunk: int = 0  # rows per re-encoding chunk; 0 = all n*k rows in one call
    # Re-encode each distinct retrieved DataID once per device and direction (the anchors that share a
    # neighbour share its embedding and gradient) instead of once per (anchor, rank).
    dedup_negatives: bool = False
    # With dedup_negatives: re-encode at most ceil(fraction * n_local * k) distinct rows per direction; the
    # rest (farthest ranks first) are masked out of L^HN and counted in the `dropped_negatives` metric.
    # 1.0 never drops; set it from the `distinct_negatives` metric of a run to save re-encoding.
    reencode_fraction: float = 1.0
    learning_rate: float = 3e-5
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.01
    weight_decay_vectors: bool = True  # decay biases / norm scales too (torch AdamW(model.parameters()))
    warmup_steps: int = 0  # linear warmup before the linear decay; the paper uses none
    grad_clip: float | None = 1.0  # global-norm clip; None or 0 = off

    def __post_init__(self):
        def bad(field, value, fix):
            raise ValueError(f"step.py: StepConfig.{field}={value!r} is invalid; {fix}.")

        if not self.temperature > 0:
            bad("temperature", self.temperature, "use a positive temperature such as 0.05")
        if self.k < 1:
            bad("k", self.k, "use k >= 1")
        if self.bank_size < self.k:
            bad("bank_size", self.bank_size, f"use bank_size >= k (= {self.k})")
        if self.knn not in ("bi", "uni"):
            bad("knn", self.knn, 'use "bi" or "uni"')
        if self.token_table not in ("device", "host"):
            bad("token_table", self.token_table, 'use "device" or "host"')
        if self.bimodal_weight < 0 or self.hard_negative_weight < 0:
            bad("bimodal_weight/hard_negative_weight", (self.bimodal_weight, self.hard_negative_weight),
                "use non-negative weights")
        if self.bimodal_weight == 0 and self.hard_negative_weight == 0:
            bad("bimodal_weight/hard_negative_weight", (0, 0), "keep at least one loss")
        if self.reencode_chunk < 0:
            bad("reencode_chunk", self.reencode_chunk, "use 0 (no chunking) or a positive row count")
        if self.warmup_steps < 0:
            bad("warmup_steps", self.warmup_steps, "use warmup_steps >= 0")
        if not 0 < self.reencode_fraction <= 1:
            bad("reencode_fraction", self.reencode_fraction, "use a fraction in (0, 1]")
        if self.reencode_fraction < 1 and not self.dedup_negatives:
            bad("reencode_fraction", self.reencode_fraction, "it needs dedup_negatives=True")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "StepConfig":
        """Build from a mapping or ``ml_collections.ConfigDict``; unknown keys are an error."""
        values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"step.py: unknown step config field(s) {unknown}; known fields: {sorted(known)}."
            )
        return cls(**values)

    @property
    def uses_hard_negatives(self) -> bool:
        """Whether the step searches the banks and re-encodes (False for the in-batch baseline)."""
        return self.hard_negative_weight > 0


# ----------------------------------------------------------------------------------------- state


class TrainState(struct.PyTreeNode):
    """Everything the step reads and writes. Replicated on every device."""

    params: Params
    opt_state: optax.OptState
    query_bank: bank_lib.Bank
    code_bank: bank_lib.Bank
    step: Array  # [] int32, number of steps taken
    rng: Array  # raw uint32 PRNG key data; the step key is fold_in(rng, step)


class TokenTable(struct.PyTreeNode):
    """Device-resident per-DataID data, replicated (row ``i`` belongs to DataID ``i``).

    ``query_ids`` / ``code_ids`` are needed with ``token_table="device"`` (leave them None with
    ``"host"``); ``query_hash`` / ``code_hash`` (int32 hashes of the query and code texts) are needed
    with ``mask_duplicates=True``. They are small ([N] int32) and always live on the device.
    """

    query_ids: Array | None = None  # [N, Lq] int32
    code_ids: Array | None = None  # [N, Lc] int32
    query_hash: Array | None = None  # [N] int32
    code_hash: Array | None = None  # [N] int32


@dataclasses.dataclass(frozen=True, eq=False)
class HostTokenTable:
    """Host-side token table (numpy) reached from the jitted step with ``jax.pure_callback``.

    For training sets whose token rows do not fit in device memory. Every process of a multi-process
    run needs the whole table (each device looks up the rows its anchors retrieved).
    """

    query_ids: np.ndarray  # [N, Lq] int32
    code_ids: np.ndarray  # [N, Lc] int32

    def __post_init__(self):
        for name in ("query_ids", "code_ids"):
            value = np.asarray(getattr(self, name), dtype=np.int32)
            if value.ndim != 2:
                raise ValueError(f"step.py: HostTokenTable.{name} must be [N, L], got shape {value.shape}.")
            object.__setattr__(self, name, value)
        if self.query_ids.shape[0] != self.code_ids.shape[0]:
            raise ValueError(
                "step.py: HostTokenTable.query_ids and code_ids must have one row per DataID, got "
                f"{self.query_ids.shape[0]} and {self.code_ids.shape[0]} rows."
            )

    def lookup(self, which: str, ids: np.ndarray) -> np.ndarray:
        """Rows of ``which`` ("query" or "code") for DataIDs ``ids`` (any shape)."""
        table = self.query_ids if which == "query" else self.code_ids
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
            raise IndexError(
                f"step.py: HostTokenTable.lookup got DataIDs in [{ids.min()}, {ids.max()}] but the table "
                f"has {table.shape[0]} rows; the token table and the bank's DataIDs disagree."
            )
        return table[ids]


def as_apply_fn(encoder: nn.Module | ApplyFn) -> ApplyFn:
    """Normalise an encoder to ``apply_fn(params, ids, mask, deterministic, dropout_key) -> [n, dim]``.

    A ``flax.linen.Module`` honouring the encoder contract (WORKSPACE.md) is called as
    ``module.apply({"params": params}, ids, mask, deterministic=..., rngs={"dropout": key})``; any other
    callable is taken to have the ``apply_fn`` signature already.
    """
    if isinstance(encoder, nn.Module):

        def apply_fn(params, input_ids, attention_mask, deterministic, key):
            return encoder.apply(
                {"params": params}, input_ids, attention_mask,
                deterministic=deterministic, rngs={"dropout": key},
            )

        return apply_fn
    if callable(encoder):
        return encoder
    raise TypeError(f"step.py: expected a flax.linen.Module or an apply function, got {type(encoder)}.")


def make_schedule(config: StepConfig, total_steps: int) -> optax.Schedule:
    """Linear decay from ``learning_rate`` to 0 over ``total_steps`` (after optional linear warmup)."""
    if total_steps <= config.warmup_steps:
        raise ValueError(
            f"step.py: total_steps={total_steps} must exceed warmup_steps={config.warmup_steps}."
        )
    decay = optax.linear_schedule(config.learning_rate, 0.0, total_steps - config.warmup_steps)
    if not config.warmup_steps:
        return decay
    warmup = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
    return optax.join_schedules([warmup, decay], [config.warmup_steps])


def make_optimizer(config: StepConfig, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clip, then AdamW on the linear schedule (METHOD.md section 5 defaults).

    The learning rate is injected as a hyperparameter so the step can report the rate it actually used
    (:func:`current_learning_rate`).
    """
    mask = None
    if not config.weight_decay_vectors:
        mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    adamw = optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
        learning_rate=make_schedule(config, total_steps),
        b1=config.adam_b1,
        b2=config.adam_b2,
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
        mask=mask,
    )
    if config.grad_clip:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw)
    return adamw


def current_learning_rate(opt_state: optax.OptState) -> Array:
    """The learning rate of the last update, read from the ``inject_hyperparams`` state (NaN if none)."""
    # Duck-typed: optax names the state InjectHyperparamsState or InjectStatefulHyperparamsState.
    has_hyperparams = lambda x: isinstance(getattr(x, "hyperparams", None), dict)  # noqa: E731
    found = [
        s for s in jax.tree.leaves(opt_state, is_leaf=has_hyperparams)
        if has_hyperparams(s) and "learning_rate" in s.hyperparams
    ]
    if not found:
        return jnp.array(jnp.nan, jnp.float32)
    return jnp.asarray(found[0].hyperparams["learning_rate"], jnp.float32)


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


# ------------------------------------------------------------------------------------ encoding


def row_keys(key: Array, stream: int, rows: Array) -> Array:
    """One dropout key per row: ``fold_in(fold_in(key, stream), row)`` for each global row index."""
    base = jax.random.fold_in(key, stream)
    return jax.vmap(lambda r: jax.random.fold_in(base, r))(rows.reshape(-1))


def encode_rows(
    apply_fn: ApplyFn,
    params: Params,
    token_ids: Array,
    keys: Array,
    *,
    pad_id: int,
    deterministic: bool = False,
    remat: bool = False,
    chunk: int = 0,
) -> Array:
    """Encode token rows, each with its own dropout key (so the result does not depend on batching).

    Args:
      apply_fn: encoder apply function (:func:`as_apply_fn`).
      params: encoder parameters.
      token_ids: [R, L] int32 ids padded with ``pad_id``.
      keys: [R, ...] one PRNG key per row.
      pad_id: the encoder's pad id; the attention mask is ``token_ids != pad_id``.
      deterministic: dropout off when True.
      remat: wrap each chunk (or the single call) in ``jax.checkpoint``.
      chunk: rows per chunk, run sequentially with ``jax.lax.map``; 0 = one call for all rows.

    Returns:
      [R, dim] embeddings.
    """

    def encode_one(p, ids_row, key):
        mask = (ids_row != pad_id).astype(jnp.int32)
        return apply_fn(p, ids_row[None], mask[None], deterministic, key)[0]

    def encode_many(p, ids, ks):
        return jax.vmap(encode_one, in_axes=(None, 0, 0))(p, ids, ks)

    if remat:
        encode_many = jax.checkpoint(encode_many)
    r = token_ids.shape[0]
    if chunk <= 0 or chunk >= r:
        return encode_many(params, token_ids, keys)
    n_chunks = -(-r // chunk)
    pad = n_chunks * chunk - r
    # Padding rows repeat the last row; they are cut off below and receive no gradient.
    ids_p = jnp.concatenate([token_ids, jnp.repeat(token_ids[-1:], pad, axis=0)])
    keys_p = jnp.concatenate([keys, jnp.repeat(keys[-1:], pad, axis=0)])
    out = jax.lax.map(
        lambda xs: encode_many(params, *xs),
        (ids_p.reshape((n_chunks, chunk) + ids_p.shape[1:]), keys_p.reshape((n_chunks, chunk) + keys_p.shape[1:])),
    )
    return out.reshape((n_chunks * chunk,) + out.shape[2:])[:r]


def _lookup_rows(
    which: str,
    ids: Array,
    table: TokenTable,
    host_table: HostTokenTable | None,
    config: StepConfig,
    axis_name: str | None,
) -> Array:
    """Token rows [..., L] of DataIDs ``ids`` [...] from the device table or the host table."""
    if config.token_table == "device":
        rows = table.query_ids if which == "query" else table.code_ids
        if rows is None:
            raise ValueError(
                f'step.py: token_table="device" needs TokenTable.{which}_ids; pass it, or set '
                'token_table="host" and give make_train_step a HostTokenTable.'
            )
        return rows[ids]
    if host_table is None:
        raise ValueError('step.py: token_table="host" needs make_train_step(..., host_table=HostTokenTable(...)).')
    width = (host_table.query_ids if which == "query" else host_table.code_ids).shape[1]
    out = jax.pure_callback(
        functools.partial(host_table.lookup, which),
        jax.ShapeDtypeStruct(ids.shape + (width,), jnp.int32),
        ids,
        vmap_method="sequential",
    )
    if axis_name is not None:
        # The callback's result is typed device-invariant, but each device looked up its own anchors'
        # neighbours: type it as what it is. (Were the parameters left invariant, an invariant row
        # through the encoder would make autodiff psum the cotangents of different rows together.)
        out = jax.lax.pcast(out, axis_name, to="varying")
    return out


def _hashes(table: TokenTable, config: StepConfig) -> list[Array]:
    if not config.mask_duplicates:
        return []
    hashes = [h for h in (table.query_hash, table.code_hash) if h is not None]
    if not hashes:
        raise ValueError(
            "step.py: mask_duplicates=True needs TokenTable.query_hash and/or TokenTable.code_hash "
            "([N] int32 hashes of the texts, by DataID); pass them or set mask_duplicates=False."
        )
    return hashes


# ------------------------------------------------------------------------------------ objective


class Aux(struct.PyTreeNode):
    """Per-device by-products of :func:`loss_and_aux` (all without gradient)."""

    q: Array  # [n, d] batch query embeddings
    c: Array  # [n, d] batch code embeddings
    code_hits: bank_lib.SearchResult  # [n, k] codes retrieved for the queries (code bank)
    query_hits: bank_lib.SearchResult  # [n, k] queries retrieved for the codes (query bank)
    c_neg: Array  # [n, k, d] re-encoded hard negative codes
    q_neg: Array  # [n, k, d] re-encoded hard negative queries
    loss_b_sum: Array  # sum over local rows of L^B rows
    loss_hn_sum: Array  # sum over local rows of L^HN rows
    in_batch_correct: Array  # local queries whose top code in the global batch is their own
    positive_score_sum: Array  # sum of cos(q_i, c_i)
    negative_score_sum: Array  # sum of cos over valid hard negatives (both directions)
    valid_negatives: Array  # number of valid hard negatives (both directions)
    dropped_negatives: Array  # valid hard negatives left out by the re-encode budget (both directions)


def _search_bank(
    bank: bank_lib.Bank,
    keys: Array,
    fn_anchors: Array,
    positive_scores: Array,
    anchor_ids: Array,
    batch_ids: Array,
    hashes: list[Array],
    config: StepConfig,
) -> bank_lib.SearchResult:
    """Top-k of one bank with all configured masks.

    ``fn_anchors`` are the anchors in the cross-modal pairing used by the loss (queries for the code
    bank, codes for the query bank); the false-negative margin compares *their* scores with the
    positive's. With bi-knn they are the search keys themselves.
    """
    scores = keys @ bank.embeddings.T
    keep = jnp.ones(scores.shape, bool)
    if config.mask_in_batch:
        keep = keep & bank_lib.in_batch_keep(bank.ids, batch_ids)[None, :]
    if hashes:
        keep = keep & bank_lib.duplicate_keep(bank.ids, anchor_ids, hashes)
    if config.false_negative_margin is not None:
        fn_scores = scores if config.knn == "bi" else fn_anchors @ bank.embeddings.T
        keep = keep & bank_lib.margin_keep(fn_scores, positive_scores, config.false_negative_margin)
    return bank_lib.search(bank, keys, config.k, anchor_ids=anchor_ids, keep=keep, scores=scores)


def dedup_neighbours(hit_ids: Array, valid: Array, budget: int) -> tuple[Array, Array, Array]:
    """The distinct valid DataIDs of [n, k] search hits, nearest ranks first, at most ``budget`` of them.

    Priority is rank-major: every anchor's nearest neighbour, then every anchor's second, ...; so when
    the budget is short the farthest neighbours are the ones dropped.

    Returns:
      ``unique_ids`` [budget] (EMPTY where unused), ``index`` [n, k] int32 into ``unique_ids`` (``budget``
      where not kept), ``kept`` [n, k] bool (valid and within the budget).
    """
    n, k = hit_ids.shape
    size = n * k
    flat = jnp.where(valid, hit_ids, bank_lib.EMPTY).T.reshape(-1)  # position p = rank * n + anchor
    order = jnp.argsort(flat, stable=True)  # equal DataIDs together, earliest position first
    s = flat[order]
    new_group = jnp.concatenate([jnp.ones((1,), bool), s[1:] != s[:-1]])
    group_start = jax.lax.cummax(jnp.where(new_group, jnp.arange(size), 0), axis=0)
    is_first = jnp.zeros((size,), bool).at[order].set(new_group & (s != bank_lib.EMPTY))
    rank = jnp.cumsum(is_first.astype(jnp.int32)) - 1  # among first occurrences, in priority order
    slot = jnp.zeros((size,), jnp.int32).at[order].set(rank[order[group_start]])
    kept = (flat != bank_lib.EMPTY) & (slot < budget)
    index = jnp.where(kept, slot, budget)
    unique_ids = jnp.full((budget,), bank_lib.EMPTY, jnp.int32).at[
        jnp.where(is_first & (rank < budget), rank, budget)
    ].set(flat, mode="drop")
    return unique_ids, index.reshape(k, n).T, kept.reshape(k, n).T


def loss_and_aux(
    params: Params,
    query_bank: bank_lib.Bank,
    code_bank: bank_lib.Bank,
    batch: Mapping[str, Array],
    table: TokenTable,
    key: Array,
    *,
    apply_fn: ApplyFn,
    config: StepConfig,
    pad_id: int,
    host_table: HostTokenTable | None = None,
    axis_name: str | None = None,
) -> tuple[Array, Aux]:
    """This device's share of the CoCoHaNeRe loss, and the by-products the bank updates need.

    Steps 1-5 of the module docstring. With ``axis_name=None`` it is a plain single-program function
    (the batch is the global batch): tests differentiate and finite-difference it directly. Inside
    ``shard_map`` (``axis_name="data"``) ``batch`` is the local share and the returned value is
    ``sum(local rows) / global_batch``; the sum over devices is the global loss.

    Args:
      params: encoder parameters (differentiated).
      query_bank, code_bank: the banks (searched, not modified).
      batch: ``data_id`` [n], ``query_ids`` [n, Lq], ``code_ids`` [n, Lc].
      table: device-resident :class:`TokenTable`.
      key: this step's PRNG key (``fold_in(state.rng, state.step)``).
      apply_fn: encoder apply function.
      config: step options.
      pad_id: the encoder's pad id.
      host_table: the host table when ``config.token_table == "host"``.
      axis_name: mesh axis of the data-parallel ``shard_map``, or None.

    Returns:
      ``(loss_share, aux)``.
    """
    ids = batch["data_id"].astype(jnp.int32)
    n = ids.shape[0]
    if axis_name is None:
        offset, n_global = 0, n
        gather = lambda x: x  # noqa: E731
    else:
        offset = jax.lax.axis_index(axis_name) * n
        n_global = n * jax.lax.axis_size(axis_name)
        gather = lambda x: jax.lax.all_gather(x, axis_name, tiled=True)  # noqa: E731
    rows = offset + jnp.arange(n, dtype=jnp.int32)  # global row index of each local example
    encode = functools.partial(encode_rows, apply_fn, params, pad_id=pad_id)
    hashes = _hashes(table, config)

    # 1-2. Encode the local batch; L^B against the global batch.
    q = encode(batch["query_ids"], row_keys(key, _STREAM_QUERY, rows))
    c = encode(batch["code_ids"], row_keys(key, _STREAM_CODE, rows))
    q_all, c_all, ids_all = gather(q), gather(c), gather(ids)
    # With mask_duplicates, same-text pairs of the global batch are not in-batch negatives either.
    pair_keep = bank_lib.duplicate_keep(ids_all, ids, hashes) if hashes else None
    loss_b_rows = 0.5 * (
        losses.info_nce_rows(q, c_all, rows, config.temperature, pair_keep)
        + losses.info_nce_rows(c, q_all, rows, config.temperature, pair_keep)
    )
    if config.bimodal_weight == 0:
        loss_b_rows = jax.lax.stop_gradient(loss_b_rows)  # "w/o BCL": reported, not trained on
    qs, cs = jax.lax.stop_gradient(q), jax.lax.stop_gradient(c)
    positive_scores = jnp.sum(qs * cs, axis=-1)
    in_batch_correct = jnp.sum(jnp.argmax(qs @ jax.lax.stop_gradient(c_all).T, axis=-1) == rows)

    d = q.shape[-1]
    k = config.k
    if config.uses_hard_negatives:
        # 3. Search both banks (they do not yet contain this batch).
        bi = config.knn == "bi"
        search = functools.partial(_search_bank, positive_scores=positive_scores, anchor_ids=ids,
                                   batch_ids=ids_all, hashes=hashes, config=config)
        code_hits = search(code_bank, qs if bi else cs, qs)  # hard negative codes of the queries
        query_hits = search(query_bank, cs if bi else qs, cs)  # hard negative queries of the codes

        # 4. Token rows of the retrieved DataIDs; invalid entries borrow the anchor's own (real) row so the
        # encoder never sees an all-pad row, and are masked out of the loss.
        own = jnp.broadcast_to(ids[:, None], (n, k))
        reencode = functools.partial(encode, remat=config.remat, chunk=config.reencode_chunk)
        if config.dedup_negatives:
            budget = max(1, math.ceil(config.reencode_fraction * n * k))

            def reencode_distinct(which, hits, stream):
                unique_ids, index, kept = dedup_neighbours(hits.ids, hits.valid, budget)
                # Unused budget slots borrow the first anchor's own (real) row; their outputs are unused.
                tokens = _lookup_rows(which, jnp.where(unique_ids >= 0, unique_ids, ids[0]), table, host_table,
                                      config, axis_name)
                emb = reencode(tokens, row_keys(key, stream, jnp.maximum(unique_ids, 0)))
                emb = jnp.concatenate([emb, jnp.zeros((1, d), emb.dtype)])[index]  # [n, k, d]
                return emb, hits._replace(valid=kept), jnp.sum(hits.valid & ~kept)

            c_neg, code_hits, dropped_c = reencode_distinct("code", code_hits, _STREAM_DEDUP_CODE)
            q_neg, query_hits, dropped_q = reencode_distinct("query", query_hits, _STREAM_DEDUP_QUERY)
            dropped_negatives = dropped_c + dropped_q
        else:
            code_tokens = _lookup_rows("code", jnp.where(code_hits.valid, code_hits.ids, own), table, host_table,
                                       config, axis_name)
            query_tokens = _lookup_rows("query", jnp.where(query_hits.valid, query_hits.ids, own), table,
                                        host_table, config, axis_name)
            neg_rows = rows[:, None] * k + jnp.arange(k, dtype=jnp.int32)[None, :]
            c_neg = reencode(code_tokens.reshape(n * k, -1), row_keys(key, _STREAM_NEG_CODE, neg_rows))
            q_neg = reencode(query_tokens.reshape(n * k, -1), row_keys(key, _STREAM_NEG_QUERY, neg_rows))
            c_neg, q_neg = c_neg.reshape(n, k, d), q_neg.reshape(n, k, d)
            dropped_negatives = jnp.zeros((), jnp.int32)
        if not config.negative_gradient:
            c_neg, q_neg = jax.lax.stop_gradient(c_neg), jax.lax.stop_gradient(q_neg)

        # 5. L^HN, missing negatives masked.
        loss_hn_rows = 0.5 * (
            losses.hard_negative_rows(q, c, c_neg, config.temperature, code_hits.valid)
            + losses.hard_negative_rows(c, q, q_neg, config.temperature, query_hits.valid)
        )
        neg_scores = jnp.concatenate([
            jnp.einsum("nd,nkd->nk", qs, jax.lax.stop_gradient(c_neg)),
            jnp.einsum("nd,nkd->nk", cs, jax.lax.stop_gradient(q_neg)),
        ], axis=1)
        neg_valid = jnp.concatenate([code_hits.valid, query_hits.valid], axis=1)
        negative_score_sum = jnp.sum(jnp.where(neg_valid, neg_scores, 0.0))
        valid_negatives = jnp.sum(neg_valid)
    else:
        empty = bank_lib.SearchResult(
            slots=jnp.full((n, k), -1, jnp.int32), ids=jnp.full((n, k), -1, jnp.int32),
            scores=jnp.full((n, k), -jnp.inf, q.dtype), valid=jnp.zeros((n, k), bool),
        )
        code_hits = query_hits = empty
        c_neg = q_neg = jnp.zeros((n, k, d), q.dtype)
        loss_hn_rows = jnp.zeros((n,), q.dtype)
        negative_score_sum = jnp.zeros((), q.dtype)
        valid_negatives = jnp.zeros((), jnp.int32)
        dropped_negatives = jnp.zeros((), jnp.int32)

    loss_share = (
        config.bimodal_weight * jnp.sum(loss_b_rows) + config.hard_negative_weight * jnp.sum(loss_hn_rows)
    ) / n_global
    aux = Aux(
        q=qs, c=cs, code_hits=code_hits, query_hits=query_hits,
        c_neg=jax.lax.stop_gradient(c_neg), q_neg=jax.lax.stop_gradient(q_neg),
        loss_b_sum=jax.lax.stop_gradient(jnp.sum(loss_b_rows)),
        loss_hn_sum=jax.lax.stop_gradient(jnp.sum(loss_hn_rows)),
        in_batch_correct=in_batch_correct,
        positive_score_sum=jnp.sum(positive_scores),
        negative_score_sum=negative_score_sum,
        valid_negatives=valid_negatives,
        dropped_negatives=dropped_negatives,
    )
    return loss_share, aux


# ----------------------------------------------------------------------------------------- step


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
    table: TokenTable,
    *,
    apply_fn: ApplyFn,
    optimizer: optax.GradientTransformation,
    config: StepConfig,
    pad_id: int,
    host_table: HostTokenTable | None = None,
    axis_name: str | None = None,
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
      budget (``dedup_negatives`` with ``reencode_fraction < 1``; 0 otherwise).
    """
    if axis_name is None:
        gather = psum = lambda x: x  # noqa: E731
        n_global = batch["data_id"].shape[0]
    else:
        gather = lambda x: jax.lax.all_gather(x, axis_name, tiled=True, to="invarying")  # noqa: E731
        psum = lambda x: jax.lax.psum(x, axis_name)  # noqa: E731
        n_global = batch["data_id"].shape[0] * jax.lax.axis_size(axis_name)

    key = jax.random.fold_in(state.rng, state.step)
    objective = functools.partial(
        loss_and_aux, apply_fn=apply_fn, config=config, pad_id=pad_id, host_table=host_table,
        axis_name=axis_name,
    )
    # 6. Per-device gradients of this device's share, summed over devices: the gradient of the global
    # mean loss, identical on every device (see module docstring). Casting the replicated parameters to
    # device-varying makes the reduction an explicit psum instead of the implicit transpose of a pvary.
    params = state.params if axis_name is None else jax.lax.pcast(state.params, axis_name, to="varying")
    (loss_share, aux), grads = jax.value_and_grad(objective, has_aux=True)(
        params, state.query_bank, state.code_bank, batch, table, key
    )
    grads = psum(grads)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    # 7. Push the global batch (embeddings of this step's forward, before the update).
    ids_all = gather(batch["data_id"].astype(jnp.int32))
    pushed_q, pushed_c = gather(aux.q), gather(aux.c)
    if config.uses_hard_negatives:
        code_slots, query_slots = gather(aux.code_hits.slots), gather(aux.query_hits.slots)
        # The in-place writes below must follow the searches that read the old banks (step 3), and nothing
        # in the data flow says so: the pushed rows do not depend on the search. XLA then keeps the old
        # banks alive by copying each of them twice per step (4 x M x d floats: a MiniLM step at M = 1M
        # took 8.3 s instead of 6.2 s on CPU). Making the pushed rows depend on the search results
        # orders the writes after the reads, and the scatters run in place on the donated buffers.
        pushed_q = _after(pushed_q, query_slots)
        pushed_c = _after(pushed_c, code_slots)
    query_bank = bank_lib.push(state.query_bank, pushed_q, ids_all)
    code_bank = bank_lib.push(state.code_bank, pushed_c, ids_all)
    # 8. Refresh the retrieved slots with their re-encoded embeddings from every device.
    if config.uses_hard_negatives:
        code_bank = bank_lib.update(
            code_bank, code_slots, gather(aux.code_hits.ids), gather(aux.c_neg), gather(aux.code_hits.valid),
        )
        query_bank = bank_lib.update(
            query_bank, query_slots, gather(aux.query_hits.ids), gather(aux.q_neg), gather(aux.query_hits.valid),
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
        "lr": current_learning_rate(opt_state),
        "valid_negatives": valid_negatives / (2 * n_global),  # per anchor and direction, out of k
        "in_batch_accuracy": psum(aux.in_batch_correct) / n_global,
        "positive_score": psum(aux.positive_score_sum) / n_global,
        "hard_negative_score": psum(aux.negative_score_sum) / jnp.maximum(valid_negatives, 1),
        "distinct_negatives": distinct / jnp.maximum(valid_negatives, 1),
        "dropped_negatives": psum(aux.dropped_negatives) / (2 * n_global),  # per anchor and direction
        "query_bank_fill": bank_lib.num_valid(query_bank) / query_bank.size,
        "code_bank_fill": bank_lib.num_valid(code_bank) / code_bank.size,
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
    host_table: HostTokenTable | None = None,
    donate: bool = True,
    compiler_options: Mapping[str, Any] | None = None,
) -> Callable[[TrainState, Mapping[str, Array], TokenTable], tuple[TrainState, dict[str, Array]]]:
    """The jitted, data-parallel CoCoHaNeRe step ``(state, batch, table) -> (state, metrics)``.

    ``jax.shard_map`` over the one-axis ``("data",)`` mesh, under ``jax.jit``; state and table
    replicated, batch split along its first axis (the global batch must divide by the device count),
    state buffers donated (do not reuse the state passed in). Compiles once: every shape is static and
    the step counter is an array.

    Args:
      encoder: a linen Module honouring the encoder contract, or an ``apply_fn``.
      optimizer: from :func:`make_optimizer` (or any optax transformation).
      config: step options.
      mesh: from ``sharding.make_mesh``.
      pad_id: the encoder's pad id (T5: 0, RoBERTa: 1).
      host_table: required with ``config.token_table == "host"``.
      donate: donate the state buffers.
      compiler_options: passed to ``jax.jit`` (e.g. ``{"xla_backend_optimization_level": 0}`` to cut
        CPU compile time in tests).
    """
    if config.token_table == "host" and host_table is None:
        raise ValueError('step.py: token_table="host" needs make_train_step(..., host_table=HostTokenTable(...)).')
    body = functools.partial(
        train_step_body, apply_fn=as_apply_fn(encoder), optimizer=optimizer, config=config, pad_id=pad_id,
        host_table=host_table if config.token_table == "host" else None, axis_name=sharding.DATA_AXIS,
    )
    sharded = jax.shard_map(
        body, mesh=mesh, in_specs=(P(), P(sharding.DATA_AXIS), P()), out_specs=(P(), P()),
    )

    def step(state: TrainState, batch: Mapping[str, Array], table: TokenTable):
        sharding.check_global_batch(batch["data_id"].shape[0], mesh)
        return sharded(state, {name: batch[name] for name in BATCH_KEYS}, table)

    replicated = sharding.replicated_sharding(mesh)
    return jax.jit(
        step,
        in_shardings=(replicated, sharding.batch_sharding(mesh), replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,) if donate else (),
        compiler_options=dict(compiler_options) if compiler_options else None,
    )
