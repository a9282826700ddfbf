"""Memory bank of (DataID, embedding) pairs: FIFO push, in-place update, masked top-k search.

A bank is a fixed-size ring (docs/METHOD.md section 2) held as three device arrays inside the train state:

* ``embeddings`` [M, d] float32, unit-norm rows;
* ``ids`` [M] int32, the DataID stored in each slot, ``-1`` for a slot that holds nothing;
* ``ptr`` [] int32, the next slot to write.

All functions are pure (they return a new :class:`Bank`) and shape-static, so they compile once inside
the train step. Unlike the public replication package (docs/METHOD.md section 5), the bank

* starts **empty** (ids all -1) instead of random vectors with random DataIDs, and never-written slots
  are never returned by :func:`search`;
* always masks the anchor's own DataID, so an anchor's positive is never its "hardest negative";
* keeps at most one slot per DataID: :func:`push` invalidates older copies of the DataIDs it writes, so
  a neighbour list never holds the same item twice and :func:`update` has one target per DataID;
* updates a slot only if it still holds the DataID that was retrieved from it (a push between search and
  update may have recycled the slot), and resolves several updates of one slot deterministically (the
  first in row-major order wins), so that every data-parallel replica computes the same bank.

Searches return a validity mask; when fewer than ``k`` candidates survive the masks the missing entries
come back with ``valid=False``, slot and id ``-1`` and score ``-inf``: callers mask them out of the loss.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array

__all__ = [
    "Bank",
    "SearchResult",
    "init_bank",
    "push",
    "update",
    "search",
    "in_batch_keep",
    "duplicate_keep",
    "margin_keep",
    "num_valid",
]

EMPTY = -1


class Bank(struct.PyTreeNode):
    """A FIFO memory bank. See the module docstring for the fields."""

    embeddings: Array  # [M, d] float32
    ids: Array  # [M] int32, -1 = empty slot
    ptr: Array  # [] int32, next slot to write

    @property
    def size(self) -> int:
        """M, the number of slots."""
        return self.ids.shape[0]


class SearchResult(NamedTuple):
    """Top-k neighbours of each anchor; entries with ``valid=False`` are padding."""

    slots: Array  # [n, k] int32, -1 where invalid
    ids: Array  # [n, k] int32 DataIDs, -1 where invalid
    scores: Array  # [n, k] float, cosine similarity, -inf where invalid
    valid: Array  # [n, k] bool


def init_bank(size: int, dim: int, dtype: jnp.dtype = jnp.float32) -> Bank:
    """An empty bank of ``size`` slots of ``dim``-dimensional embeddings."""
    if size <= 0 or dim <= 0:
        raise ValueError(f"bank.py: init_bank needs size > 0 and dim > 0, got size={size}, dim={dim}.")
    return Bank(
        embeddings=jnp.zeros((size, dim), dtype),
        ids=jnp.full((size,), EMPTY, jnp.int32),
        ptr=jnp.zeros((), jnp.int32),
    )


def num_valid(bank: Bank) -> Array:
    """Number of occupied slots."""
    return jnp.sum(bank.ids != EMPTY)


def _first_occurrence(keys: Array, active: Array) -> Array:
    """[R] bool: ``active[r]`` and no earlier active entry has the same key. O(R^2), R is small."""
    r = keys.shape[0]
    same = (keys[:, None] == keys[None, :]) & active[:, None] & active[None, :]
    earlier = jnp.tril(jnp.ones((r, r), bool), k=-1)  # earlier[a, b]: b < a
    return active & ~jnp.any(same & earlier, axis=1)


def push(bank: Bank, embeddings: Array, ids: Array) -> Bank:
    """Enqueue a batch at the write pointer (FIFO), wrapping around the end of the ring.

    Older copies of the pushed DataIDs are invalidated first, so each DataID lives in at most one slot. If
    a DataID occurs twice in ``ids`` only its last occurrence is stored (the earlier one leaves an empty
    slot). If the batch is larger than the bank only its last ``M`` rows are stored, as a FIFO would keep.

    Args:
      bank: the bank.
      embeddings: [B, d] rows to store.
      ids: [B] int32 DataIDs (>= 0).

    Returns:
      The new bank; ``ptr`` advanced by B modulo M.
    """
    m = bank.size
    b = ids.shape[0]
    ids = ids.astype(jnp.int32)
    stale = jnp.any(bank.ids[:, None] == ids[None, :], axis=1)
    bank_ids = jnp.where(stale, EMPTY, bank.ids)
    # Keep only the last occurrence of a DataID inside the batch.
    last = _first_occurrence(ids[::-1], jnp.ones((b,), bool))[::-1]
    ids = jnp.where(last, ids, EMPTY)
    skip = max(b - m, 0)  # static: rows that would be overwritten within this same push
    slots = (bank.ptr + skip + jnp.arange(b - skip, dtype=jnp.int32)) % m  # distinct slots
    return Bank(
        embeddings=bank.embeddings.at[slots].set(
            embeddings[skip:].astype(bank.embeddings.dtype), unique_indices=True
        ),
        ids=bank_ids.at[slots].set(ids[skip:], unique_indices=True),
        ptr=((bank.ptr + b) % m).astype(jnp.int32),
    )


def update(
    bank: Bank,
    slots: Array,
    ids: Array,
    embeddings: Array,
    valid: Array | None = None,
) -> Bank:
    """Overwrite the embeddings of retrieved slots with fresh ones.

    An entry is written only if it is valid and ``bank.ids[slot]`` still equals the DataID it was
    retrieved with (the slot may have been recycled by a push since the search). When several entries
    target the same slot the first one (in row-major order of the flattened inputs) wins, so the result
    does not depend on scatter order and is the same on every replica that sees the same inputs.

    Args:
      bank: the bank.
      slots: [...] int32 slot indices (any shape; -1 allowed where invalid).
      ids: [...] int32, the DataID each slot held when it was retrieved.
      embeddings: [..., d] fresh embeddings.
      valid: optional [...] bool.

    Returns:
      The new bank (ids and ptr unchanged).
    """
    m = bank.size
    d = bank.embeddings.shape[-1]
    slots = slots.reshape(-1).astype(jnp.int32)
    ids = ids.reshape(-1).astype(jnp.int32)
    embeddings = embeddings.reshape(-1, d)
    active = jnp.ones_like(slots, bool) if valid is None else valid.reshape(-1)
    active = active & (slots >= 0) & (slots < m) & (ids != EMPTY)
    active = active & (bank.ids[jnp.clip(slots, 0, m - 1)] == ids)
    winner = _first_occurrence(slots, active)
    target = jnp.where(winner, slots, m)  # m is out of bounds: dropped
    new_embeddings = bank.embeddings.at[target].set(
        embeddings.astype(bank.embeddings.dtype), mode="drop", unique_indices=False
    )
    return bank.replace(embeddings=new_embeddings)


def in_batch_keep(bank_ids: Array, batch_ids: Array) -> Array:
    """[M] bool: False for slots whose DataID is in ``batch_ids`` (the current global batch)."""
    return ~jnp.any(bank_ids[:, None] == batch_ids[None, :], axis=1)


def duplicate_keep(bank_ids: Array, anchor_ids: Array, hashes: Sequence[Array]) -> Array:
    """[n, M] bool: False where a bank entry is a same-text duplicate of the anchor's pair.

    Two DataIDs are duplicates if any of the per-DataID hash arrays agrees on them (e.g. the hash of the
    query text and the hash of the code text: an identical code is the positive itself, an identical
    query makes the other code a correct answer too). Either way the entry would be a false negative.

    Args:
      bank_ids: [M] int32 DataIDs of the bank slots (-1 allowed, those slots are masked anyway).
      anchor_ids: [n] int32 DataIDs of the anchors.
      hashes: sequence of [N] int32 arrays indexed by DataID.
    """
    safe_bank = jnp.maximum(bank_ids, 0)
    keep = jnp.ones((anchor_ids.shape[0], bank_ids.shape[0]), bool)
    for table in hashes:
        keep = keep & (table[anchor_ids][:, None] != table[safe_bank][None, :])
    return keep


def group_keep(bank_ids: Array, anchor_ids: Array, groups: Array) -> Array:
    """[n, M] bool: True where a bank entry is in the anchor's group (``groups``: [N] int32 by DataID).

    Used to draw hard negatives from the anchor's own language only: evaluation ranks each language
    against its own codebase, so a negative in another language is never a confusion the metric sees.
    """
    return groups[anchor_ids][:, None] == groups[jnp.maximum(bank_ids, 0)][None, :]


def margin_keep(scores: Array, positive_scores: Array, margin: float) -> Array:
    """[n, M] bool false-negative guard: False where a candidate scores above the positive by a margin.

    A candidate is dropped when ``score > pos + margin * |pos|`` (for a positive ``pos > 0`` that is
    ``score > (1 + margin) * pos``). ``margin = 0`` drops everything that outscores the positive; a
    negative margin (e.g. -0.05, "95 % of the positive") is stricter.

    Args:
      scores: [n, M] cosine of each anchor with each candidate, in the positive's modality pairing.
      positive_scores: [n] cosine of each anchor with its positive.
      margin: relative margin.
    """
    threshold = positive_scores + margin * jnp.abs(positive_scores)
    return scores <= threshold[:, None]


def search(
    bank: Bank,
    keys: Array,
    k: int,
    *,
    anchor_ids: Array,
    keep: Array | None = None,
    scores: Array | None = None,
) -> SearchResult:
    """Masked top-k cosine search.

    Always masks empty slots and slots holding the anchor's own DataID; ``keep`` adds any further mask
    (see :func:`in_batch_keep`, :func:`duplicate_keep`, :func:`margin_keep`). Ties go to the lower slot
    index (``jax.lax.top_k``).

    Args:
      bank: the bank to search (M slots).
      keys: [n, d] unit-norm search keys.
      k: number of neighbours, ``k <= M``.
      anchor_ids: [n] int32 DataID of each anchor (its own DataID is never returned).
      keep: optional bool, broadcastable to [n, M], True where a slot may be returned.
      scores: optional precomputed [n, M] ``keys @ bank.embeddings.T`` (to share it with a mask).

    Returns:
      :class:`SearchResult` with [n, k] slots, ids, scores, valid.
    """
    m = bank.size
    if not 0 < k <= m:
        raise ValueError(f"bank.py: search needs 0 < k <= bank size, got k={k}, bank size={m}.")
    if scores is None:
        scores = keys @ bank.embeddings.T
    allowed = (bank.ids[None, :] != EMPTY) & (bank.ids[None, :] != anchor_ids[:, None])
    if keep is not None:
        allowed = allowed & keep
    masked = jnp.where(allowed, scores, -jnp.inf)
    top_scores, top_slots = jax.lax.top_k(masked, k)
    valid = top_scores > -jnp.inf
    top_slots = top_slots.astype(jnp.int32)
    return SearchResult(
        slots=jnp.where(valid, top_slots, EMPTY),
        ids=jnp.where(valid, bank.ids[top_slots], EMPTY),
        scores=top_scores,
        valid=valid,
    )
