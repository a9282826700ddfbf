"""Encoding rows for the step: per-row dropout keys, chunked/rematerialised encoding, shared neighbours.

Every encoded row gets its own dropout key, folded from the step key, a stream id and the row's *global*
index (or, for de-duplicated negatives, its DataID), so results do not depend on the device count or
the chunking (docs/METHOD.md, "Dropout rng").
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cocohanere_jax import bank as bank_lib

Array = jax.Array
Params = Any
# apply_fn(params, input_ids [n, L], attention_mask [n, L], deterministic, dropout_key) -> [n, dim]
ApplyFn = Callable[[Params, Array, Array, bool, Array], Array]

__all__ = ["ApplyFn", "as_apply_fn", "row_keys", "encode_rows", "dedup_neighbours"]

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
