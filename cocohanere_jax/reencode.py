"""Encoding rows for the step: per-row dropout keys, chunked/rematerialised encoding, shared neighbours.

Every encoded row gets its own dropout key, folded from the step key, a stream id and the row's *global*
index (or, for de-duplicated negatives, its DataID), so results do not depend on the device count or
the chunking (docs/METHOD.md, "Dropout rng").
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cocohanere_jax import bank as bank_lib

Array = jax.Array
Params = Any
# apply_fn(params, input_ids [n, L], attention_mask [n, L], deterministic, dropout_key) -> [n, dim]
ApplyFn = Callable[[Params, Array, Array, bool, Array], Array]

__all__ = [
    "ApplyFn", "as_apply_fn", "row_keys", "encode_rows", "bucket_lengths", "row_lengths", "encode_rows_bucketed",
    "encode_pool", "dedup_neighbours",
]

# Dropout rng streams (folded into the step key before the global row index).
STREAM_QUERY, STREAM_CODE, STREAM_NEG_CODE, STREAM_NEG_QUERY = 0, 1, 2, 3
# With de-duplicated re-encoding the key of a negative is folded from its DataID instead of its row.
STREAM_DEDUP_CODE, STREAM_DEDUP_QUERY = 4, 5


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
    raise TypeError(f"reencode.py: expected a flax.linen.Module or an apply function, got {type(encoder)}.")



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



def bucket_lengths(caps: Sequence[int], per_cap: int, multiple: int = 8) -> tuple[int, ...]:
    """Static encode lengths for rows capped at ``caps``: ``per_cap`` evenly spaced lengths up to each cap
    (rounded up to ``multiple``, capped at the cap), merged. ``(128, 256), 4`` -> 32 64 96 128 192 256."""
    out = set()
    for cap in caps:
        for i in range(1, per_cap + 1):
            out.add(min(cap, -(-math.ceil(cap * i / per_cap) // multiple) * multiple))
    return tuple(sorted(out))


def row_lengths(token_ids: Array, pad_id: int) -> Array:
    """[R] int32: one past the last non-pad token of each row (its real length for right-padded rows)."""
    pos = jnp.arange(1, token_ids.shape[-1] + 1, dtype=jnp.int32)
    return jnp.max(jnp.where(token_ids != pad_id, pos, 0), axis=-1)


def encode_rows_bucketed(
    apply_fn: ApplyFn,
    params: Params,
    token_ids: Array,
    keys: Array,
    *,
    pad_id: int,
    buckets: Sequence[int],
    chunk: int = 16,
    deterministic: bool = False,
    lengths: Array | None = None,
) -> Array:
    """`encode_rows` at (close to) each row's real length, in one compiled program.

    Rows are sorted by length on the device and cut into fixed-size chunks of ``chunk`` rows; each chunk
    runs (``jax.lax.map``) through ``jax.lax.switch`` over the static lengths of ``buckets``, at the
    smallest that holds its longest row: only that branch runs. A row's result does not depend on its
    neighbours as long as the encoder's real-token outputs do not depend on the padded length: true
    without dropout, and with dropout for this package's models (`layers.Dropout` draws each element's
    mask from its position, not from the padded shape); an encoder whose dropout masks depend on the
    shape (``flax.linen.Dropout``) gives results that depend on the chunking when dropout is on.
    The gradient is a ``jax.custom_vjp``: the backward pass re-runs the chosen branch's forward and its
    VJP per chunk (a plain autodiff of ``switch`` would keep, zero-filled, every branch's residuals for
    every chunk), so memory is one chunk's activations, as with ``remat``.

    Args:
      token_ids: [R, L] ids padded (on the right) with ``pad_id``.
      keys: [R, ...] one PRNG key per row.
      buckets: static lengths; lengths above L are dropped and L is always added.
      chunk: rows per chunk (capped at R).
      lengths: [R] real lengths (default: `row_lengths`).
    Returns:
      [R, dim] embeddings, equal to `encode_rows` up to float reassociation without dropout.
    """
    r, width = token_ids.shape
    lens = tuple(sorted({int(b) for b in buckets if 0 < int(b) < width} | {width}))
    nb = len(lens)
    c = max(1, min(int(chunk), r))
    n_chunks = -(-r // c)
    pad = n_chunks * c - r
    if lengths is None:
        lengths = row_lengths(token_ids, pad_id)
    lengths = lengths.astype(jnp.int32)
    order = jnp.argsort(lengths, stable=True)  # shortest first
    # The last chunk's spare slots (the first `pad` sorted slots) repeat the shortest row; never read.
    src = jnp.concatenate([jnp.broadcast_to(order[:1], (pad,)), order]).astype(jnp.int32)
    chunk_max = lengths[src].reshape(n_chunks, c)[:, -1]
    chunk_bucket = jnp.minimum(jnp.searchsorted(jnp.asarray(lens, jnp.int32), chunk_max, side="left"), nb - 1)
    chunk_bucket = chunk_bucket.astype(jnp.int32)
    ids_c = token_ids[src].reshape(n_chunks, c, width)
    keys_c = keys[src].reshape((n_chunks, c) + keys.shape[1:])

    def encode_many(p, ids, ks):
        def encode_one(ids_row, key):
            mask = (ids_row != pad_id).astype(jnp.int32)
            return apply_fn(p, ids_row[None], mask[None], deterministic, key)[0]

        return jax.vmap(encode_one)(ids, ks)

    out_aval = jax.eval_shape(lambda p: encode_many(p, ids_c[0, :, : lens[0]], keys_c[0]), params)

    def forward(p, ids, ks, b):
        branches = [lambda p, ids, ks, n=n: encode_many(p, ids[:, :n], ks) for n in lens]
        return jax.lax.switch(b, branches, p, ids, ks)

    @jax.custom_vjp
    def run(p, ids_all, keys_all, buckets_all):
        return jax.lax.map(lambda xs: forward(p, *xs), (ids_all, keys_all, buckets_all))

    def run_fwd(p, ids_all, keys_all, buckets_all):
        return run(p, ids_all, keys_all, buckets_all), (p, ids_all, keys_all, buckets_all)

    def run_bwd(res, g):
        p, ids_all, keys_all, buckets_all = res

        def body(acc, xs):
            ids, ks, b, g_c = xs

            def branch(n):
                def f(acc):
                    _, vjp = jax.vjp(lambda q: encode_many(q, ids[:, :n], ks), p)
                    return jax.tree.map(jnp.add, acc, vjp(g_c.astype(out_aval.dtype))[0])

                return f

            acc = jax.lax.switch(b, [branch(n) for n in lens], acc)
            return acc, None

        zero = jax.tree.map(lambda x: _like_vma(jnp.zeros(x.shape, x.dtype), _vma(x)), p)
        grads, _ = jax.lax.scan(body, zero, (ids_all, keys_all, buckets_all, g))
        return grads, None, None, None

    run.defvjp(run_fwd, run_bwd)
    out = run(params, ids_c, keys_c, chunk_bucket)
    out = out.reshape((n_chunks * c,) + out.shape[2:])[pad:]
    return jnp.zeros_like(out).at[order].set(out)


def _vma(x) -> frozenset:
    """The mesh axes along which ``x`` varies (inside shard_map; empty outside)."""
    t = jax.typeof(x)
    mat = getattr(t, "manual_axis_type", None)
    return frozenset(getattr(mat, "varying", None) or getattr(t, "vma", None) or ())


def _like_vma(x: Array, vma: frozenset) -> Array:
    missing = tuple(sorted(vma - _vma(x)))
    return jax.lax.pcast(x, missing, to="varying") if missing else x


def encode_pool(
    apply_fn: ApplyFn,
    params: Params,
    parts: Sequence[tuple[Array, Array]],
    *,
    pad_id: int,
    buckets: Sequence[int],
    chunk: int,
    deterministic: bool = False,
) -> list[Array]:
    """`encode_rows_bucketed` of several (token_ids [R_i, L_i], keys [R_i]) parts in one call (one switch,
    so one compiled encoder per bucket for all of them); narrower rows are padded to the widest."""
    width = max(t.shape[1] for t, _ in parts)
    ids = jnp.concatenate([jnp.pad(t, ((0, 0), (0, width - t.shape[1])), constant_values=pad_id) for t, _ in parts])
    keys = jnp.concatenate([k.reshape((t.shape[0],) + k.shape[t.ndim - 1:]) for t, k in parts])
    out = encode_rows_bucketed(apply_fn, params, ids, keys, pad_id=pad_id, buckets=buckets, chunk=chunk,
                               deterministic=deterministic)
    splits = np.cumsum([t.shape[0] for t, _ in parts])[:-1]
    return jnp.split(out, splits)


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
