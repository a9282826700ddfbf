"""Encoding rows for the step: per-row dropout keys, chunked/rematerialised encoding, shared neighbours.

Every encoded row gets its own dropout key, folded from the step key, a stream id and the row's *global*
index (or, for de-duplicated negatives, its DataID), so results do not depend on the device count or
the chunking (docs/METHOD.md, "Dropout rng").
"""

from __future__ import annotations

import dataclasses
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
# packed(params, input_ids [n, W], segments [n, W], rows: layers.PackedRows, deterministic) -> [n, slots, dim]
PackedApplyFn = Callable[[Params, Array, Array, Any, bool], Array]
# The dropout key of every module under packing: rows get their own masks from their keys (layers.row_keyed).
_PACKED_MODULE_KEY = (0x5EED, 0xC0DE)

__all__ = [
    "ApplyFn", "as_apply_fn", "row_keys", "encode_rows", "bucket_lengths", "row_lengths", "encode_rows_bucketed",
    "encode_pool", "dedup_neighbours", "LengthStats", "LengthPlan", "plan_lengths", "choose_plan", "plan_miss_rate",
    "encode_rows_planned", "pack_rows", "encode_rows_packed",
]

# Dropout rng streams (folded into the step key before the global row index).
STREAM_QUERY, STREAM_CODE, STREAM_NEG_CODE, STREAM_NEG_QUERY = 0, 1, 2, 3
# With de-duplicated re-encoding the key of a negative is folded from its DataID instead of its row.
STREAM_DEDUP_CODE, STREAM_DEDUP_QUERY = 4, 5


def as_apply_fn(encoder: nn.Module | ApplyFn) -> ApplyFn:
    """Normalise an encoder to ``apply_fn(params, ids, mask, deterministic, dropout_key) -> [n, dim]``.

    A ``flax.linen.Module`` honouring the encoder contract (WORKSPACE.md) is called as
    ``module.apply({"params": params}, ids, mask, deterministic=..., rngs={"dropout": key})``; any other
    callable is taken to have the ``apply_fn`` signature already. For a module with ``supports_packing``
    (this package's BERT and T5 encoders) the function also has ``.packed``, a `PackedApplyFn`
    (`encode_rows_packed`).
    """
    if isinstance(encoder, nn.Module):

        def apply_fn(params, input_ids, attention_mask, deterministic, key):
            return encoder.apply(
                {"params": params}, input_ids, attention_mask,
                deterministic=deterministic, rngs={"dropout": key},
            )

        if getattr(encoder, "supports_packing", False):

            def packed(params, input_ids, segments, rows, deterministic):
                return encoder.apply(
                    {"params": params}, input_ids, segments, deterministic=deterministic, rows=rows,
                    rngs={"dropout": jnp.asarray(_PACKED_MODULE_KEY, jnp.uint32)},
                )

            apply_fn.packed = packed
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

    def encode_many(p, xs, n):
        ids, ks = xs

        def encode_one(ids_row, key):
            mask = (ids_row != pad_id).astype(jnp.int32)
            return apply_fn(p, ids_row[None], mask[None], deterministic, key)[0]

        return jax.vmap(encode_one)(ids[:, :n], ks)

    out = _switch_chunks(encode_many, params, (ids_c, keys_c), chunk_bucket, lens)
    out = out.reshape((n_chunks * c,) + out.shape[2:])[pad:]
    return jnp.zeros_like(out).at[order].set(out)


def pack_rows(lengths: Array, width: int) -> tuple[Array, Array, Array, Array]:
    """First-fit decreasing of rows of ``lengths`` (each at most ``width``) into bins of ``width`` tokens,
    on the device (a scan over the rows, longest first).

    Returns (bin [R], slot [R] (1-based place of the row in its bin), offset [R] (its first token's
    position in the bin), fill [R] (tokens per bin; at most R bins, the used ones first)). Every row fits:
    there are as many bins as rows.
    """
    r = lengths.shape[0]
    lengths = lengths.astype(jnp.int32)
    order = jnp.argsort(-lengths, stable=True)

    def place(carry, length):
        fill, count = carry
        b = jnp.argmax(fill + length <= width).astype(jnp.int32)  # the first bin it fits in
        placed = (b, count[b] + 1, fill[b])
        return (fill.at[b].add(length), count.at[b].add(1)), placed

    zeros = make_varying(jnp.zeros((r,), jnp.int32), varying_axes(lengths))  # inside shard_map, per device
    (fill, _), (b, slot, offset) = jax.lax.scan(place, (zeros, zeros), lengths[order])
    unsort = lambda x: jnp.zeros_like(x).at[order].set(x)  # noqa: E731
    return unsort(b), unsort(slot), unsort(offset), fill


def encode_rows_packed(
    packed_fn: "PackedApplyFn",
    params: Params,
    token_ids: Array,
    keys: Array,
    *,
    pad_id: int,
    buckets: Sequence[int],
    chunk: int = 8,
    deterministic: bool = False,
    lengths: Array | None = None,
    keep: int = 0,
) -> Array:
    """`encode_rows` with several rows packed into each encoded row, in one compiled program.

    The rows' real tokens are laid out by `pack_rows` (first-fit decreasing) in at most R rows of the
    pool's width, each token keeping its position in its own row; attention stays within a row (T5's
    relative positions and BERT's absolute positions count from the row's start) and each row is pooled
    from its own tokens (`layers.PackedRows`). The packed rows, fullest first, are cut into chunks of
    ``chunk``; each chunk runs at the smallest of ``buckets`` that holds its fullest row, and chunks with
    nothing in them are skipped, with the bucketed chunks' custom VJP (`_switch_chunks`). With ``keep``,
    the ``keep`` fullest packed rows are encoded first as one batch at the full width with an ordinary
    backward pass (their activations kept: no second forward), and only the packed rows after them go
    through the chunks (`choose_packed_keep` sizes it so that most pools need no chunk). Without dropout
    the result equals `encode_rows` up to float reassociation. With dropout, each row's masks come from its
    own key and its positions (`layers.row_keyed`): the same whatever rows it is packed with, so on any
    number of devices, but not the masks of `encode_rows` (keys enter the hash another way).

    Args:
      packed_fn: ``(params, ids [n, W], segments [n, W], rows: layers.PackedRows, deterministic) ->
        [n, slots, dim]`` (`as_apply_fn(...).packed`).
      token_ids: [R, W] ids padded on the right; keys: [R, ...] one PRNG key per row.
      lengths: [R] real lengths (default: `row_lengths`).
      keep: packed rows encoded as one batch before the chunks (0 to R).
    Returns:
      [R, dim] embeddings.
    """
    from cocohanere_jax.models import layers  # the models' packing contract

    r, width = token_ids.shape
    s = min(r, width)  # the most rows one packed row can hold (each has a token at least)
    lens = tuple(sorted({0} | {int(b) for b in buckets if 0 < int(b) < width} | {width}))
    keep, c, n_chunks = _packed_layout(r, keep, chunk)
    bins = keep + n_chunks * c  # the kept packed rows, then whole chunks (at least the R a pool may need)
    if lengths is None:
        lengths = row_lengths(token_ids, pad_id)
    lengths = jnp.clip(lengths.astype(jnp.int32), 1, width)  # a row without tokens keeps its first (pad) one
    b, slot, offset, fill = pack_rows(lengths, width)
    fill = jnp.zeros((bins,), jnp.int32).at[: r].set(fill)
    by_fill = jnp.argsort(-fill, stable=True)  # fullest bins first
    rank = jnp.zeros_like(by_fill).at[by_fill].set(jnp.arange(bins, dtype=by_fill.dtype)).astype(jnp.int32)
    b = rank[b]
    fill = fill[by_fill]

    # Scatter every real token to (bin, offset + t); pad positions are dropped (index out of range).
    t = jnp.arange(width, dtype=jnp.int32)
    real = t[None, :] < lengths[:, None]
    dest = jnp.where(real, b[:, None] * width + offset[:, None] + t[None, :], bins * width).reshape(-1)
    scatter = lambda value, fill_value: (  # noqa: E731
        jnp.full((bins * width,) + value.shape[2:], fill_value, value.dtype)
        .at[dest].set(value.reshape((-1,) + value.shape[2:]), mode="drop").reshape((bins, width) + value.shape[2:]))
    key_data = layers.key_words(keys).reshape(r, -1)
    ids_p = scatter(token_ids, pad_id)
    seg_p = scatter(jnp.broadcast_to(slot[:, None], (r, width)), 0)
    pos_p = scatter(jnp.broadcast_to(t[None, :], (r, width)), 0)
    key_p = scatter(jnp.broadcast_to(key_data[:, None, :], (r, width, key_data.shape[-1])), 0)

    def encode_at(p, xs, n):
        ids, seg, pos, kd = xs
        rows = layers.PackedRows(positions=pos[:, :n], keys=kd[:, :n], num_slots=s)
        return packed_fn(p, ids[:, :n], seg[:, :n], rows, deterministic)

    packed = (ids_p, seg_p, pos_p, key_p)
    outs = []
    if keep:  # the fullest packed rows: one batch at the full width, an ordinary backward pass
        outs.append(encode_at(params, tuple(x[:keep] for x in packed), width))
    if n_chunks:  # the rest (empty beyond the pool's real tokens): the chunks, each skipped when empty
        branch = jnp.searchsorted(jnp.asarray(lens, jnp.int32), fill[keep:].reshape(n_chunks, c)[:, 0], side="left")
        branch = jnp.minimum(branch, len(lens) - 1).astype(jnp.int32)
        tail = tuple(x[keep:].reshape((n_chunks, c) + x.shape[1:]) for x in packed)
        out = _switch_chunks(encode_at, params, tail, branch, lens)
        outs.append(out.reshape((n_chunks * c,) + out.shape[2:]))
    out = jnp.concatenate(outs) if len(outs) > 1 else outs[0]
    return out[b, slot - 1]


def _packed_layout(rows: int, keep: int, chunk: int) -> tuple[int, int, int]:
    """(kept rows, rows per chunk, chunks) of `encode_rows_packed` on ``rows`` packed rows: ``keep`` clipped
    to [0, rows], the rest in whole chunks of ``chunk`` rows (fewer when fewer rows are left)."""
    keep = max(0, min(int(keep), rows))
    c = max(1, min(int(chunk), rows - keep))
    return keep, c, -(-(rows - keep) // c)


def _switch_chunks(encode_at: Callable[[Params, Any, int], Array], params: Params, inputs: Any,
                   branch: Array, lens: Sequence[int]) -> Array:
    """``lax.map`` over chunks (the leading axis of every leaf of ``inputs``) of ``encode_at(params, chunk,
    lens[branch[i]])`` through ``lax.switch`` (a length of 0: the chunk is skipped, zeros), with the
    bucketed chunks' custom VJP: the backward pass re-runs each chunk's chosen branch and its VJP, so
    memory is one chunk's activations. [chunks, ...] results."""
    first = jax.tree.map(lambda x: x[0], inputs)
    out_aval = jax.eval_shape(lambda p: encode_at(p, first, max(lens)), params)

    def branches_for(f):
        return [(lambda *a, n=n: f(n, *a)) for n in lens]

    def encode_or_skip(n, p, xs):
        if n == 0:
            return make_varying(jnp.zeros(out_aval.shape, out_aval.dtype), varying_axes(out_aval))
        return encode_at(p, xs, n)

    @jax.custom_vjp
    def run(p, inputs_all, branch_all):
        return jax.lax.map(lambda xs: jax.lax.switch(xs[1], branches_for(encode_or_skip), p, xs[0]),
                           (inputs_all, branch_all))

    def run_fwd(p, inputs_all, branch_all):
        return run(p, inputs_all, branch_all), (p, inputs_all, branch_all)

    def run_bwd(res, g):
        p, inputs_all, branch_all = res

        def grad_at(n, acc, xs, g_c):
            if n == 0:
                return acc
            _, vjp = jax.vjp(lambda q: encode_at(q, xs, n), p)
            return jax.tree.map(jnp.add, acc, vjp(g_c.astype(out_aval.dtype))[0])

        def body(acc, xs):
            inputs_c, b, g_c = xs
            return jax.lax.switch(b, branches_for(grad_at), acc, inputs_c, g_c), None

        zero = jax.tree.map(lambda x: make_varying(jnp.zeros(x.shape, x.dtype), varying_axes(x)), p)
        grads, _ = jax.lax.scan(body, zero, (inputs_all, branch_all, g))
        return grads, None, None

    run.defvjp(run_fwd, run_bwd)
    return run(params, inputs, branch)


def varying_axes(x) -> frozenset:
    """The mesh axes along which ``x`` varies inside shard_map (empty outside): ``x`` an array, a tracer or
    an abstract value (`jax.eval_shape` output)."""
    t = x if isinstance(x, jax.ShapeDtypeStruct) else jax.typeof(x)
    mat = getattr(t, "manual_axis_type", None)
    return frozenset(getattr(mat, "varying", None) or getattr(t, "vma", None) or ())


def make_varying(x: Array, axes: frozenset) -> Array:
    """``x`` cast to vary along ``axes`` too (what one branch of a `lax.cond` inside shard_map needs when
    the other branch's value varies per device)."""
    missing = tuple(sorted(axes - varying_axes(x)))
    return jax.lax.pcast(x, missing, to="varying") if missing else x


@dataclasses.dataclass(frozen=True)
class LengthStats:
    """How long the token table's rows really are: ``query[l]`` / ``code[l]`` rows of ``l`` real tokens
    (host, static; hashable so the step's plans are made once, when it is traced)."""

    query: tuple[int, ...]
    code: tuple[int, ...]

    @classmethod
    def from_lengths(cls, query_lengths, code_lengths) -> "LengthStats":
        def hist(x):
            x = np.asarray(x, np.int64).reshape(-1)
            return tuple(int(v) for v in np.bincount(x)) if x.size else (1,)

        return cls(query=hist(query_lengths), code=hist(code_lengths))

    @classmethod
    def from_table(cls, table) -> "LengthStats":
        """From a `token_table.TokenTable` (its ``query_lengths`` and ``code_lengths``)."""
        return cls.from_lengths(table.query_lengths, table.code_lengths)

    def tail(self, kind: str, width: int) -> np.ndarray:
        """[width + 1] float64: the share of ``kind`` rows ("query"/"code") longer than t, for t = 0..width."""
        h = np.asarray(self.query if kind == "query" else self.code, np.float64)
        counts = np.zeros(width + 1)
        counts[: min(len(h), width + 1)] = h[: width + 1]
        counts[width] += h[width + 1:].sum()  # rows cut at the width are as long as it
        return 1.0 - np.cumsum(counts) / max(counts.sum(), 1.0)


@dataclasses.dataclass(frozen=True)
class LengthPlan:
    """A static layout for a pool of rows sorted longest first: ``sizes[j]`` rows encoded at
    ``lengths[j]`` (descending; ``lengths[0]`` is at most the pool's width: below it when the table has
    no longer row). It holds a pool when, for every j, at most ``sum(sizes[:j])`` rows are longer than
    ``lengths[j]``."""

    lengths: tuple[int, ...]
    sizes: tuple[int, ...]

    def cost(self) -> float:
        return float(sum(n * _row_cost(length) for n, length in zip(self.sizes, self.lengths)))


def _row_cost(length) -> np.ndarray | float:
    # Encoder work of one row of `length` tokens, in token-layers: the matmuls grow with the length,
    # attention with its square (about 5-10% of a token's FLOPs at 256 tokens for BERT-base/MiniLM shapes).
    return length * (1.0 + length / 3072.0)


def _part(entry) -> tuple[int, str, int, int, float]:
    """A pool part (rows, kind, width[, cluster[, correlation]]) with its cluster size (default 1) and the
    length correlation within a cluster (default 1: the worst case)."""
    n, kind, w, *rest = entry
    cluster = int(rest[0]) if rest else 1
    correlation = float(rest[1]) if len(rest) > 1 else 1.0
    if cluster < 1:
        raise ValueError(f"reencode.py: a pool part's cluster (rows per run) must be >= 1, got {cluster}")
    if not 0.0 <= correlation <= 1.0:
        raise ValueError(f"reencode.py: a pool part's length correlation must be in [0, 1], got {correlation}")
    return int(n), kind, int(w), cluster, correlation


def plan_lengths(parts: Sequence[tuple], stats: LengthStats, *, margin: float = 3.0,
                 max_groups: int = 6, multiple: int = 8) -> LengthPlan:
    """The cheapest `LengthPlan` of at most ``max_groups`` lengths (multiples of ``multiple``, and the
    width) for a pool of ``parts`` = [(rows, kind, width[, cluster[, correlation]]), ...] drawn from the
    table ``stats`` describes.

    How many rows of the pool are longer than t is a sum of binomials over the parts; each group boundary
    holds that count's mean + ``margin`` standard deviations + 1 (exactly 0 where the table has no row
    longer than t), so a pool of rows drawn at random from the table breaks the plan rarely (per boundary
    about the normal tail beyond ``margin``). A pool that breaks it is still encoded exactly, by the
    fallback (`encode_rows_planned`).

    ``cluster`` c > 1 and ``correlation`` rho: the part's rows come in runs of c that are not independent,
    e.g. the k re-encoded neighbours of one anchor (alike code is alike in length: on the standard-library
    corpus the count of long rows in real neighbour pools at k 10 varies 2-5 times as much as in random
    pools, `benchmarks/plan_margins.py --neighbours`). Two rows of a run are both long with correlation rho,
    so the count's variance is ``1 + (c - 1) * rho`` times the independent rows' (rho 1, the default: the
    worst case, every run of one length); ``_sample_pools`` draws such pools for the miss rate.
    """
    parts = [_part(p) for p in parts]
    width = max(p[2] for p in parts)
    total = sum(p[0] for p in parts)
    mean = np.zeros(width + 1)
    var = np.zeros(width + 1)
    possible = np.zeros(width + 1)  # rows of parts that have rows longer than t at all
    for n, kind, w, cluster, rho in parts:
        tail = np.zeros(width + 1)
        tail[: w + 1] = stats.tail(kind, w)
        mean += n * tail
        var += n * tail * (1.0 - tail) * (1.0 + (cluster - 1) * rho)
        possible += n * (tail > 1e-12)
    # capacity[t]: the rows the groups longer than t hold, = an upper bound on the rows longer than t.
    capacity = np.where(mean > 1e-12, np.ceil(mean + margin * np.sqrt(var) + 1.0), 0.0)
    capacity = np.minimum(capacity, possible).astype(np.int64)
    cands = sorted({t for t in range(multiple, width, multiple)} | {width}, reverse=True)
    cost = {t: float(_row_cost(t)) for t in cands}
    # best[j][t]: the cheapest groups 1..j, the last at length t, holding the capacity[t] rows above t.
    best: list[dict[int, tuple[float, tuple[int, ...]]]] = [{width: (0.0, (width,))}]
    for _ in range(1, max_groups):
        layer = {}
        for t_prev, (c_prev, path) in best[-1].items():
            for t in cands:
                if t >= t_prev:
                    continue
                c = c_prev + (capacity[t] - capacity[t_prev]) * cost[t_prev]
                if t not in layer or c < layer[t][0]:
                    layer[t] = (c, path + (t,))
        best.append(layer)
    final = min(
        (c + (total - capacity[t]) * cost[t], path) for layer in best for t, (c, path) in layer.items()
    )[1]
    bounds = [int(capacity[t]) for t in final[1:]] + [total]
    sizes = np.diff([0] + bounds).tolist()
    keep = [(length, n) for length, n in zip(final, sizes) if n > 0]
    return LengthPlan(lengths=tuple(t for t, _ in keep), sizes=tuple(int(n) for _, n in keep))


def encode_rows_planned(
    apply_fn: ApplyFn,
    params: Params,
    token_ids: Array,
    keys: Array,
    *,
    pad_id: int,
    plan: LengthPlan,
    deterministic: bool = False,
    fallback_chunk: int = 8,
    fallback_buckets: Sequence[int] | None = None,
    lengths: Array | None = None,
) -> tuple[Array, Array]:
    """`encode_rows` along a static `LengthPlan`: rows sorted longest first, group j of ``plan.sizes[j]``
    rows encoded at ``plan.lengths[j]`` tokens, in one compiled program, with an ordinary backward pass
    (each group's activations kept, so no second forward as in `encode_rows_bucketed`).

    A pool the plan does not hold (more long rows than it has room for) runs the fallback instead, behind
    a ``lax.cond``: with ``fallback_buckets``, the bucketed chunks of ``fallback_chunk`` rows
    (`encode_rows_bucketed`: the pool still at close to its real lengths, as the step runs without plans);
    without, the pool padded to its width in remat'ed chunks. The result is the same either way (up to
    float reassociation; with dropout too, for encoders whose dropout masks follow positions, see
    `encode_rows_bucketed`). The backward pass is a ``jax.custom_vjp`` that applies the planned groups'
    VJP (residuals carried out of the ``cond``; zeros when the fallback ran) or the fallback's VJP (its
    forward's output is unused there, so XLA may drop that forward as dead code; not checked).

    Returns:
      ([R, dim] embeddings, [] int32: 1 when the plan did not hold this pool and the fallback ran).
    """
    r, width = token_ids.shape
    if sum(plan.sizes) != r or plan.lengths[0] > width:
        raise ValueError(f"reencode.py: plan {plan} does not lay out {r} rows of width {width}")
    if lengths is None:
        lengths = row_lengths(token_ids, pad_id)
    lengths = lengths.astype(jnp.int32)
    order = jnp.argsort(-lengths, stable=True)  # longest first
    bounds = np.cumsum(plan.sizes)
    # Group j starts at sorted row bounds[j - 1]: no more rows than that may be longer than lengths[j].
    longer = jnp.sum(lengths[None, :] > jnp.asarray(plan.lengths, jnp.int32)[:, None], axis=1)
    holds = jnp.all(longer <= jnp.asarray(np.concatenate([[0], bounds[:-1]]), jnp.int32))

    def encode_many(p, ids, ks):
        def encode_one(ids_row, key):
            mask = (ids_row != pad_id).astype(jnp.int32)
            return apply_fn(p, ids_row[None], mask[None], deterministic, key)[0]

        return jax.vmap(encode_one)(ids, ks)

    def planned(p, ids, ks):
        starts = np.concatenate([[0], bounds[:-1]])
        return jnp.concatenate([encode_many(p, ids[s: s + n, :length], ks[s: s + n])
                                for s, n, length in zip(starts, plan.sizes, plan.lengths)])

    def unplanned(p, ids, ks):  # the fallback
        if fallback_buckets is not None:
            return encode_rows_bucketed(apply_fn, p, ids, ks, pad_id=pad_id, buckets=fallback_buckets,
                                        chunk=fallback_chunk, deterministic=deterministic)
        return encode_rows(apply_fn, p, ids, ks, pad_id=pad_id, deterministic=deterministic, remat=True,
                           chunk=fallback_chunk)

    # The planned branch's VJP residuals, less those that are the parameters themselves (not copied out).
    layout: dict[str, Any] = {}

    def planned_with_residuals(p, ids, ks):
        out, vjp_fn = jax.vjp(lambda q: planned(q, ids, ks), p)
        leaves, treedef = jax.tree.flatten(vjp_fn)
        param_ids = {id(x): i for i, x in enumerate(jax.tree.leaves(p))}
        layout["treedef"] = treedef
        layout["from_params"] = [param_ids.get(id(x)) for x in leaves]
        return out, [x for x in leaves if id(x) not in param_ids]

    @jax.custom_vjp
    def run(p, ids, ks, holds):
        return jax.lax.cond(holds, planned, unplanned, p, ids, ks)

    def run_fwd(p, ids, ks, holds):
        out_s, res_s = jax.eval_shape(planned_with_residuals, p, ids, ks)

        def fallback(p, ids, ks):
            out = unplanned(p, ids, ks)
            return out, [make_varying(jnp.zeros(s.shape, s.dtype), varying_axes(s)) for s in res_s]

        out, res = jax.lax.cond(holds, planned_with_residuals, fallback, p, ids, ks)
        return out, (p, ids, ks, holds, res)

    def run_bwd(saved, g):
        p, ids, ks, holds, res = saved
        p_leaves = jax.tree.leaves(p)

        def apply_planned(g):
            it = iter(res)
            leaves = [next(it) if i is None else p_leaves[i] for i in layout["from_params"]]
            return jax.tree.unflatten(layout["treedef"], leaves)(g)[0]

        def apply_unplanned(g):
            return jax.vjp(lambda q: unplanned(q, ids, ks), p)[1](g)[0]

        grads = jax.lax.cond(holds, apply_planned, apply_unplanned, g)
        return grads, None, None, None

    run.defvjp(run_fwd, run_bwd)
    out = run(params, token_ids[order], keys[order], holds)
    return jnp.zeros_like(out).at[order].set(out), (~holds).astype(jnp.int32)


def encode_pool(
    apply_fn: ApplyFn,
    params: Params,
    parts: Sequence[tuple[Array, Array]],
    *,
    pad_id: int,
    buckets: Sequence[int],
    chunk: int,
    deterministic: bool = False,
    stats: LengthStats | None = None,
    kinds: Sequence[str] | None = None,
    margin: float | None = 3.0,
    plan_rule: str = "auto",
    clusters: Sequence[int] | None = None,
    correlation: float = 1.0,
    pack: bool = False,
    pack_keep: bool = False,
) -> tuple[list[Array], Array]:
    """Several (token_ids [R_i, L_i], keys [R_i]) parts encoded length-aware in one pooled call (narrower
    rows padded to the widest): along a `LengthPlan` made from ``stats`` (the table's length histograms;
    ``kinds[i]`` = "query" or "code"; ``margin``: see `choose_plan`) where one is given and
    (``plan_rule="auto"``) its work is expected below that of the bucketed chunks with their second forward
    (``"always"``: wherever stats are given), else `encode_rows_bucketed` (one switch, so one compiled
    encoder per bucket for all parts). ``clusters[i]``: part i's rows come in runs of that many
    neighbours of one anchor (`plan_lengths`'s cluster; default 1, independent rows), their lengths alike
    with ``correlation`` (`StepConfig.length_plan_correlation`). ``pack``: `encode_rows_packed` instead
    (no plans; ``apply_fn`` must have ``.packed``, `as_apply_fn`), with ``pack_keep`` and ``stats`` its
    fullest packed rows kept as one batch (`choose_packed_keep`). ``plan_rule="never"``: no plans.

    Returns:
      (the parts' embeddings, [] int32: 1 when a plan was used and did not hold, see `encode_rows_planned`).
    """
    width = max(t.shape[1] for t, _ in parts)
    ids = jnp.concatenate([jnp.pad(t, ((0, 0), (0, width - t.shape[1])), constant_values=pad_id) for t, _ in parts])
    keys = jnp.concatenate([k.reshape((t.shape[0],) + k.shape[t.ndim - 1:]) for t, k in parts])
    if pack:
        packed_fn = getattr(apply_fn, "packed", None)
        if packed_fn is None:
            raise ValueError("reencode.py: step.length_pack=True needs an encoder that takes packed rows (this "
                             "package's BERT and T5 encoders, `supports_packing`); set step.length_pack=False for "
                             "another encoder.")
        keep = 0
        if stats is not None and pack_keep:
            keep = choose_packed_keep(_spec(parts, kinds, clusters, correlation), stats, buckets, chunk)
        out = encode_rows_packed(packed_fn, params, ids, keys, pad_id=pad_id, buckets=buckets, chunk=chunk,
                                 deterministic=deterministic, keep=keep)
        return jnp.split(out, np.cumsum([t.shape[0] for t, _ in parts])[:-1]), jnp.zeros((), jnp.int32)
    plan = None
    if stats is not None and plan_rule != "never":
        spec = _spec(parts, kinds, clusters, correlation)
        lens = tuple(sorted({int(b) for b in buckets if 0 < int(b) < width} | {width}))
        chunks = _bucketed_cost(spec, stats, lens, chunk) * 4.0 / 3.0  # their second forward
        plan, expected = choose_plan(spec, stats, margin=margin, max_groups=len(lens), fallback=chunks)
        # A miss is priced at the chunks' work (it runs them), so this compares the plan's own work with theirs.
        if plan_rule == "auto" and expected > chunks:
            plan = None  # small pools: the bucketed chunks follow their rows more closely
    if plan is not None:  # a pool that breaks the plan runs the bucketed chunks
        out, missed = encode_rows_planned(apply_fn, params, ids, keys, pad_id=pad_id, plan=plan,
                                          deterministic=deterministic, fallback_chunk=chunk,
                                          fallback_buckets=lens)
    else:
        out = encode_rows_bucketed(apply_fn, params, ids, keys, pad_id=pad_id, buckets=buckets, chunk=chunk,
                                   deterministic=deterministic)
        missed = jnp.zeros((), jnp.int32)
    splits = np.cumsum([t.shape[0] for t, _ in parts])[:-1]
    return jnp.split(out, splits), missed


def _spec(parts, kinds, clusters, correlation) -> list[tuple]:
    """`plan_lengths`'s pool parts for `encode_pool`'s ``parts``."""
    if kinds is None or len(kinds) != len(parts):
        raise ValueError("reencode.py: encode_pool with stats= needs kinds= (\"query\" or \"code\" per part)")
    clusters = [1] * len(parts) if clusters is None else list(clusters)
    if len(clusters) != len(parts):
        raise ValueError(f"reencode.py: encode_pool got {len(clusters)} clusters for {len(parts)} parts")
    return [(t.shape[0], kind, t.shape[1], c, correlation) for (t, _), kind, c in zip(parts, kinds, clusters)]


def _sample_pools(spec, stats: LengthStats, draws: int) -> np.ndarray:
    """[draws, rows] int: the real lengths of ``draws`` random pools of ``spec`` = [(rows, kind, width[,
    cluster[, correlation]])] drawn from the length histograms, each part's rows cut at its width; seeded,
    so every process that traces the step makes the same choices from the same table. In a part with runs
    of c rows, each row repeats its run's first draw with probability sqrt(rho), else is drawn anew: two
    rows of a run are then alike with correlation rho (`plan_lengths`)."""
    rng = np.random.default_rng(0)
    samples = []
    for n, kind, w, cluster, rho in (_part(p) for p in spec):
        h = np.asarray(stats.query if kind == "query" else stats.code, np.float64)
        p = h / max(h.sum(), 1.0)
        drawn = rng.choice(len(h), size=(draws, n), p=p)
        if cluster > 1:
            runs = -(-n // cluster)
            first = np.repeat(rng.choice(len(h), size=(draws, runs), p=p), cluster, axis=1)[:, :n]
            drawn = np.where(rng.random((draws, n)) < np.sqrt(rho), first, drawn)
        samples.append(np.minimum(drawn, w))
    return np.concatenate(samples, axis=1)


# The margins (standard deviations) `choose_plan` weighs when `StepConfig.length_plan_margin` is None.
PLAN_MARGINS = (1.0, 1.5, 2.0, 2.5, 3.0)


def plan_miss_rate(plan: LengthPlan, spec, stats: LengthStats, draws: int = 2048) -> float:
    """The share of random pools of ``spec`` drawn from ``stats`` that ``plan`` does not hold (a seeded
    simulation of `encode_rows_planned`'s check: at most ``sum(sizes[:j])`` rows longer than ``lengths[j]``)."""
    return float(np.mean(plan_breaks(plan, _sample_pools(spec, stats, draws))))


def plan_breaks(plan: LengthPlan, pools: np.ndarray) -> np.ndarray:
    """[draws] bool: which pools of real lengths ([draws, rows], the parts in the plan's order) break ``plan``
    (more than ``sum(sizes[:j])`` rows longer than ``lengths[j]``: `encode_rows_planned` runs its fallback)."""
    room = np.cumsum((0,) + plan.sizes[:-1])
    longer = (pools[:, None, :] > np.asarray(plan.lengths)[None, :, None]).sum(axis=2)  # [draws, groups]
    return np.any(longer > room[None, :], axis=1)


def choose_plan(spec, stats: LengthStats, *, margin: float | None, max_groups: int,
                fallback: float | None = None) -> tuple[LengthPlan, float]:
    """The `LengthPlan` of a pool of ``spec`` and its expected encoder work (`_row_cost` units).

    A given ``margin``: `plan_lengths` at it. ``None``: of the plans at each of `PLAN_MARGINS`, the one with
    the least expected work, counting a pool that breaks its plan (`plan_miss_rate`) at the fallback's work:
    ``fallback`` (`encode_pool` passes the bucketed chunks' expected work, their second forward included),
    by default the padded fallback's (every row at the pool's width, its forward run twice: remat'ed
    chunks). A tight plan saves work on every pool and pays for the fallback on the few it misses
    (`benchmarks/RESULTS.md`, "Length plans", has the trade on real lengths)."""
    if fallback is None:
        width = max(_part(p)[2] for p in spec)
        fallback = sum(_part(p)[0] for p in spec) * float(_row_cost(width)) * 4.0 / 3.0
    best = None
    for m in ((margin,) if margin is not None else PLAN_MARGINS[::-1]):  # ties keep the larger margin
        plan = plan_lengths(spec, stats, margin=m, max_groups=max_groups)
        miss = plan_miss_rate(plan, spec, stats)
        expected = (1.0 - miss) * plan.cost() + miss * fallback
        if best is None or expected < best[1]:
            best = (plan, expected)
    return best


def _bucketed_cost(spec, stats: LengthStats, lens: Sequence[int], chunk: int, draws: int = 256) -> float:
    """The expected encoder work of `encode_rows_bucketed` on a random pool of ``spec`` (a seeded simulation
    from the length histograms): sorted chunks of ``chunk`` rows, each at the smallest bucket holding it."""
    pool = np.sort(_sample_pools(spec, stats, draws), axis=1)
    r = pool.shape[1]
    c = max(1, min(chunk, r))
    n_chunks = -(-r // c)
    pool = np.concatenate([np.repeat(pool[:, :1], n_chunks * c - r, axis=1), pool], axis=1)
    chunk_max = pool.reshape(draws, n_chunks, c)[:, :, -1]
    lens_a = np.asarray(lens)
    bucket = lens_a[np.minimum(np.searchsorted(lens_a, chunk_max, side="left"), len(lens_a) - 1)]
    return float(np.mean(np.sum(c * _row_cost(bucket), axis=1)))


def packed_fills(pools: np.ndarray, width: int) -> np.ndarray:
    """[draws, rows] tokens per packed row, fullest first, of first-fit decreasing (`pack_rows`) on each of
    ``pools`` ([draws, rows] real lengths; a row has a token at least), on the host."""
    d, r = pools.shape
    pools = -np.sort(-np.clip(pools, 1, width), axis=1)
    fill = np.zeros((d, r), np.int64)
    at = np.arange(d)
    for j in range(r):
        fill[at, np.argmax(fill + pools[:, j: j + 1] <= width, axis=1)] += pools[:, j]
    return -np.sort(-fill, axis=1)


def choose_packed_keep(spec, stats: LengthStats, lens: Sequence[int], chunk: int, draws: int = 256) -> int:
    """How many of a packed pool's fullest rows `encode_rows_packed` should encode as one kept batch (``keep``),
    for a pool of ``spec`` (`plan_lengths`'s parts) drawn from ``stats``: the count with the least expected
    encoder work in a seeded simulation, a kept row costing a row at the full width (even when the pool
    leaves it empty) and the packed rows past it their bucketed chunks' work with its second forward (4/3;
    empty chunks are skipped). Beyond the kept rows a pool is still encoded exactly, only at that cost."""
    parts = [_part(p) for p in spec]
    width = max(p[2] for p in parts)
    fills = packed_fills(_sample_pools(spec, stats, draws), width)
    r = fills.shape[1]
    lens_a = np.asarray(sorted({0} | {int(n) for n in lens if 0 < int(n) <= width} | {width}))
    best = (np.inf, 0)
    for keep in range(r + 1):
        keep, c, n_chunks = _packed_layout(r, keep, chunk)
        tail = np.zeros((draws, n_chunks * c), np.int64)
        tail[:, : r - keep] = fills[:, keep:]
        first = tail.reshape(draws, n_chunks, c)[:, :, 0] if n_chunks else np.zeros((draws, 0), np.int64)
        bucket = lens_a[np.minimum(np.searchsorted(lens_a, first, side="left"), len(lens_a) - 1)]
        work = keep * float(_row_cost(width)) + 4.0 / 3.0 * np.mean(np.sum(c * _row_cost(bucket) * (bucket > 0), axis=1))
        if work < best[0] - 1e-9:
            best = (work, keep)
    return best[1]


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
