"""The CoCoHaNeRe objective on one device's share of a batch: encode, L^B, search, re-encode, L^HN.

Steps 1-5 of the step order (docs/METHOD.md section 4); `step.py` differentiates it, applies the update and
writes the banks. With ``axis_name=None`` it is a plain single-program function.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping

import jax
import jax.numpy as jnp
from flax import struct

from cocohanere_jax import bank as bank_lib
from cocohanere_jax import losses, reencode
from cocohanere_jax.reencode import ApplyFn, Params
from cocohanere_jax.step_config import StepConfig
from cocohanere_jax.token_table import DeviceTokenTable, TokenTable, lookup_rows

Array = jax.Array

__all__ = ["Aux", "loss_and_aux"]


def _hashes(table: DeviceTokenTable, config: StepConfig) -> list[Array]:
    if not config.mask_duplicates:
        return []
    hashes = [h for h in (table.query_hash, table.code_hash) if h is not None]
    if not hashes:
        raise ValueError(
            "objective.py: mask_duplicates=True needs the token table's query_hash and/or code_hash "
            "([N] int32 hashes of the texts, by DataID); build the table with them or set mask_duplicates=False."
        )
    return hashes


class Aux(struct.PyTreeNode):
    """Per-device by-products of :func:`loss_and_aux` (all without gradient)."""

    q: Array  # [n, d] batch query embeddings
    c: Array  # [n, d] batch code embeddings
    code_hits: bank_lib.SearchResult  # [n, k] codes retrieved for the queries (code bank)
    query_hits: bank_lib.SearchResult  # [n, k] queries retrieved for the codes (query bank)
    c_neg: Array  # [n, k, d] re-encoded hard negative codes
    q_neg: Array  # [n, k, d] re-encoded hard negative queries
    code_refresh: Array  # [n, k] bool: c_neg holds a fresh embedding (the step writes it back to the bank)
    query_refresh: Array  # [n, k] bool: q_neg likewise
    loss_b_sum: Array  # sum over local rows of L^B rows
    loss_hn_sum: Array  # sum over local rows of L^HN rows
    in_batch_correct: Array  # local queries whose top code in the global batch is their own
    positive_score_sum: Array  # sum of cos(q_i, c_i)
    negative_score_sum: Array  # sum of cos over valid hard negatives (both directions)
    valid_negatives: Array  # number of valid hard negatives (both directions)
    dropped_negatives: Array  # valid hard negatives left out by the re-encode budget (both directions)
    hard_negative_step: Array  # [] bool: this step used L^HN (False on the schedule's in-batch steps)
    ids: Array  # [n] DataIDs of the pairs trained on (the iterator's, or bank neighbours with neighbour_pairs)
    neighbour_rows: Array  # local rows that hold a bank neighbour's pair (neighbour_pairs; else 0)
    neighbour_score_sum: Array  # sum of cos(anchor query, neighbour code) over those rows
    plan_misses: Array  # [] int32 pooled encode calls whose length plan did not hold (padded instead)


def _search_bank(
    bank: bank_lib.Bank,
    keys: Array,
    fn_anchors: Array,
    positive_scores: Array,
    anchor_ids: Array,
    batch_ids: Array,
    hashes: list[Array],
    config: StepConfig,
    groups: Array | None = None,
    k: int | None = None,
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
    if config.negatives_in_group:
        keep = keep & bank_lib.group_keep(bank.ids, anchor_ids, groups)
    if config.false_negative_margin is not None:
        fn_scores = scores if config.knn == "bi" else fn_anchors @ bank.embeddings.T
        keep = keep & bank_lib.margin_keep(fn_scores, positive_scores, config.false_negative_margin)
    return bank_lib.search(bank, keys, config.k if k is None else k, anchor_ids=anchor_ids, keep=keep, scores=scores)


class _HardNegativeInputs(struct.PyTreeNode):
    """What the hard-negative part reads of the batch part (an operand of the schedule's lax.cond)."""

    q: Array  # [n, d] with gradient
    c: Array
    qs: Array  # [n, d] stop-gradient
    cs: Array
    ids: Array  # [n] local DataIDs
    ids_all: Array  # [n_global] DataIDs of the global batch
    rows: Array  # [n] global row of each local example
    positive_scores: Array  # [n]
    hashes: list
    key: Array


class _HardNegatives(struct.PyTreeNode):
    """The hard-negative part's results (all zeros / invalid on an in-batch step of the schedule)."""

    code_hits: bank_lib.SearchResult
    query_hits: bank_lib.SearchResult
    c_neg: Array  # [n, k, d]
    q_neg: Array
    code_refresh: Array  # [n, k] bool
    query_refresh: Array
    loss_rows: Array  # [n] L^HN per row
    negative_score_sum: Array
    valid_negatives: Array
    dropped_negatives: Array
    active: Array  # [] bool
    plan_misses: Array  # [] int32 encode calls whose length plan did not hold


def _no_hard_negatives(n: int, k: int, d: int, dtype) -> _HardNegatives:
    empty = bank_lib.SearchResult(
        slots=jnp.full((n, k), -1, jnp.int32), ids=jnp.full((n, k), -1, jnp.int32),
        scores=jnp.full((n, k), -jnp.inf, dtype), valid=jnp.zeros((n, k), bool),
    )
    none = jnp.zeros((n, k), bool)
    return _HardNegatives(
        code_hits=empty, query_hits=empty, c_neg=jnp.zeros((n, k, d), dtype), q_neg=jnp.zeros((n, k, d), dtype),
        code_refresh=none, query_refresh=none, loss_rows=jnp.zeros((n,), dtype),
        negative_score_sum=jnp.zeros((), dtype), valid_negatives=jnp.zeros((), jnp.int32),
        dropped_negatives=jnp.zeros((), jnp.int32), active=jnp.zeros((), bool),
        plan_misses=jnp.zeros((), jnp.int32),
    )


def _hard_negatives(
    params: Params,
    x: _HardNegativeInputs,
    *,
    query_bank: bank_lib.Bank,
    code_bank: bank_lib.Bank,
    table: DeviceTokenTable,
    host_table: TokenTable | None,
    axis_name: str | None,
    encode_parts,
    config: StepConfig,
) -> _HardNegatives:
    """Steps 3-5: search both banks, re-encode (all k, the top m, or none of) the neighbours, L^HN."""
    n, d = x.q.shape
    k = config.k
    ids, key = x.ids, x.key
    # 3. Search both banks (they do not yet contain this batch).
    bi = config.knn == "bi"
    if config.negatives_in_group and table.groups is None:
        raise ValueError("objective.py: step.negatives_in_group=True needs the token table's groups ([N] int32 "
                         "group of each DataID); train on several languages (config.data.language=python,java "
                         "or all) or set negatives_in_group=False.")
    search = functools.partial(_search_bank, positive_scores=x.positive_scores, anchor_ids=ids,
                               batch_ids=x.ids_all, hashes=x.hashes, config=config, groups=table.groups)
    code_hits = search(code_bank, x.qs if bi else x.cs, x.qs)  # hard negative codes of the queries
    query_hits = search(query_bank, x.cs if bi else x.qs, x.cs)  # hard negative queries of the codes

    # 4. Token rows of the retrieved DataIDs; invalid entries borrow the anchor's own (real) row so the
    # encoder never sees an all-pad row, and are masked out of the loss.
    own = jnp.broadcast_to(ids[:, None], (n, k))
    negative_options = dict(remat=config.remat, chunk=config.reencode_chunk)
    lookup = functools.partial(lookup_rows, table=table, host_table=host_table, axis_name=axis_name)
    all_fresh = jnp.ones((n, k), bool)
    code_refresh = query_refresh = all_fresh
    if config.dedup_negatives:
        budget = max(1, math.ceil(config.reencode_fraction * n * k))

        def distinct(which, hits, stream):
            unique_ids, index, kept = reencode.dedup_neighbours(hits.ids, hits.valid, budget)
            # Unused budget slots borrow the first anchor's own (real) row; their outputs are unused.
            tokens = lookup(which, jnp.where(unique_ids >= 0, unique_ids, ids[0]))
            keys = reencode.row_keys(key, stream, jnp.maximum(unique_ids, 0))
            return (tokens, keys, which), index, hits._replace(valid=kept), jnp.sum(hits.valid & ~kept)

        c_part, c_index, code_hits, dropped_c = distinct("code", code_hits, reencode.STREAM_DEDUP_CODE)
        q_part, q_index, query_hits, dropped_q = distinct("query", query_hits, reencode.STREAM_DEDUP_QUERY)
        (c_emb, q_emb), plan_misses = encode_parts([c_part, q_part], cluster=k, **negative_options)
        pad_row = jnp.zeros((1, d), c_emb.dtype)
        c_neg = jnp.concatenate([c_emb, pad_row])[c_index]  # [n, k, d]
        q_neg = jnp.concatenate([q_emb, pad_row])[q_index]
        dropped_negatives = dropped_c + dropped_q
    else:
        # Rank r of row i keeps the dropout key of (i * k + r) whichever way it is encoded, so top-m with
        # m = k is the paper's step, and top-0 with fresh others is forward-only re-encoding.
        neg_rows = x.rows[:, None] * k + jnp.arange(k, dtype=jnp.int32)[None, :]

        def encode_ranks(lo, hi, part_params):
            """[n, hi - lo, d] code and query negatives of ranks lo..hi-1, re-encoded."""
            code_tokens = lookup("code", jnp.where(code_hits.valid, code_hits.ids, own)[:, lo:hi])
            query_tokens = lookup("query", jnp.where(query_hits.valid, query_hits.ids, own)[:, lo:hi])
            rows = neg_rows[:, lo:hi].reshape(-1)
            (c_emb, q_emb), missed = encode_parts([
                (code_tokens.reshape(n * (hi - lo), -1), reencode.row_keys(key, reencode.STREAM_NEG_CODE, rows),
                 "code"),
                (query_tokens.reshape(n * (hi - lo), -1), reencode.row_keys(key, reencode.STREAM_NEG_QUERY, rows),
                 "query"),
            ], params=part_params, cluster=hi - lo, **negative_options)
            return c_emb.reshape(n, hi - lo, d), q_emb.reshape(n, hi - lo, d), missed

        m = config.top_m
        frozen = jax.lax.stop_gradient(params)
        parts_c, parts_q = [], []
        plan_misses = jnp.zeros((), jnp.int32)
        if m:
            c_top, q_top, missed = encode_ranks(0, m, params if config.negative_gradient else frozen)
            parts_c.append(c_top)
            parts_q.append(q_top)
            plan_misses += missed
        if m < k:
            if config.other_negatives == "fresh":  # forward-only: no VJP is traced for these rows
                c_rest, q_rest, missed = encode_ranks(m, k, frozen)
                plan_misses += missed
            else:  # the bank's stored embeddings (written when the neighbour was last pushed or refreshed)
                def stored(bank, hits):
                    return bank.embeddings[jnp.maximum(hits.slots[:, m:], 0)].astype(x.q.dtype)

                c_rest, q_rest = stored(code_bank, code_hits), stored(query_bank, query_hits)
                stale = jnp.arange(k)[None, :] >= m
                code_refresh = query_refresh = all_fresh & ~stale  # nothing new to write back for them
            parts_c.append(jax.lax.stop_gradient(c_rest))
            parts_q.append(jax.lax.stop_gradient(q_rest))
        c_neg = jnp.concatenate(parts_c, axis=1) if len(parts_c) > 1 else parts_c[0]
        q_neg = jnp.concatenate(parts_q, axis=1) if len(parts_q) > 1 else parts_q[0]
        dropped_negatives = jnp.zeros((), jnp.int32)
    if not config.negative_gradient:
        c_neg, q_neg = jax.lax.stop_gradient(c_neg), jax.lax.stop_gradient(q_neg)

    # 5. L^HN, missing negatives masked (with the joint loss the caller adds the negatives to L^B instead).
    if config.hard_negative_loss == "separate":
        # Anchor-only: each row's positive is stop-gradient, so L^HN moves its anchors only.
        hold = jax.lax.stop_gradient if config.hard_negative_anchor_only else (lambda v: v)
        loss_rows = 0.5 * (
            losses.hard_negative_rows(x.q, hold(x.c), c_neg, config.temperature, code_hits.valid)
            + losses.hard_negative_rows(x.c, hold(x.q), q_neg, config.temperature, query_hits.valid)
        )
    else:
        loss_rows = jnp.zeros((n,), x.q.dtype)
    neg_scores = jnp.concatenate([
        jnp.einsum("nd,nkd->nk", x.qs, jax.lax.stop_gradient(c_neg)),
        jnp.einsum("nd,nkd->nk", x.cs, jax.lax.stop_gradient(q_neg)),
    ], axis=1)
    neg_valid = jnp.concatenate([code_hits.valid, query_hits.valid], axis=1)
    return _HardNegatives(
        code_hits=code_hits, query_hits=query_hits, c_neg=c_neg, q_neg=q_neg,
        code_refresh=code_refresh & code_hits.valid, query_refresh=query_refresh & query_hits.valid,
        loss_rows=loss_rows, negative_score_sum=jnp.sum(jnp.where(neg_valid, neg_scores, 0.0)),
        valid_negatives=jnp.sum(neg_valid), dropped_negatives=dropped_negatives, active=jnp.ones((), bool),
        plan_misses=plan_misses,
    )


class _NeighbourBatch(struct.PyTreeNode):
    ids: Array  # [n] DataIDs as trained on
    q: Array  # [n, d] with gradient
    c: Array
    rows: Array  # [] int32 rows replaced by a neighbour's pair
    score_sum: Array  # sum of cos(anchor query, neighbour code) over them
    plan_misses: Array  # [] int32


def _neighbour_batch(
    ids: Array,
    query_rows: Array,
    code_rows: Array,
    rows: Array,
    *,
    code_bank: bank_lib.Bank,
    ids_all: Array,
    hashes: list[Array],
    groups: Array | None,
    lookup,
    encode_parts,
    key: Array,
    config: StepConfig,
) -> _NeighbourBatch:
    """Neighbour batches (docs/METHOD.md section 9): rows in groups of g = 1 + neighbour_pairs by global row;
    the anchors (each group's first row) are encoded, the code bank is searched with them (masks as for
    hard negatives; this batch's DataIDs excluded), and each other row becomes the pair of one of its
    anchor's neighbours, encoded with gradient like any batch row. Dropout keys stay per global row, so an
    empty bank gives the in-batch step exactly."""
    n = ids.shape[0]
    j = config.neighbour_pairs
    g = 1 + j
    if n % g:
        raise ValueError(
            f"objective.py: step.neighbour_pairs={j} needs a per-device batch divisible by {g} (anchor + "
            f"{j} neighbours), got {n}; change train.global_batch_size or step.neighbour_pairs.")
    a = n // g

    def grid(x):
        return x.reshape((a, g) + x.shape[1:])

    ids_g, rows_g = grid(ids), grid(rows)
    anchor_ids, anchor_rows = ids_g[:, 0], rows_g[:, 0]
    (qa, ca), missed_a = encode_parts([
        (grid(query_rows)[:, 0], reencode.row_keys(key, reencode.STREAM_QUERY, anchor_rows), "query"),
        (grid(code_rows)[:, 0], reencode.row_keys(key, reencode.STREAM_CODE, anchor_rows), "code"),
    ])
    qas, cas = jax.lax.stop_gradient(qa), jax.lax.stop_gradient(ca)
    hits = _search_bank(
        code_bank, qas if config.knn == "bi" else cas, qas, positive_scores=jnp.sum(qas * cas, axis=-1),
        anchor_ids=anchor_ids, batch_ids=ids_all, hashes=hashes, config=config, groups=groups, k=j)
    chosen = jnp.where(hits.valid, hits.ids, ids_g[:, 1:])  # [a, j]: a missing neighbour keeps the row's pair
    other_rows = rows_g[:, 1:].reshape(-1)
    (qo, co), missed_o = encode_parts([
        (lookup("query", chosen.reshape(-1)), reencode.row_keys(key, reencode.STREAM_QUERY, other_rows), "query"),
        (lookup("code", chosen.reshape(-1)), reencode.row_keys(key, reencode.STREAM_CODE, other_rows), "code"),
    ], cluster=j)
    d = qa.shape[-1]

    def interleave(anchor, other):
        return jnp.concatenate([anchor[:, None], other.reshape(a, j, d)], axis=1).reshape(n, d)

    # cos(anchor query, the neighbour's code as the bank holds it): how hard the neighbours are.
    neighbour_codes = code_bank.embeddings[jnp.maximum(hits.slots, 0)].astype(qas.dtype)  # [a, j, d]
    scores = jnp.einsum("ad,ajd->aj", qas, neighbour_codes)
    return _NeighbourBatch(
        ids=jnp.concatenate([anchor_ids[:, None], chosen], axis=1).reshape(n),
        q=interleave(qa, qo), c=interleave(ca, co),
        rows=jnp.sum(hits.valid.astype(jnp.int32)),
        score_sum=jnp.sum(jnp.where(hits.valid, scores, 0.0)),
        plan_misses=missed_a + missed_o,
    )


def loss_and_aux(
    params: Params,
    query_bank: bank_lib.Bank,
    code_bank: bank_lib.Bank,
    batch: Mapping[str, Array],
    table: DeviceTokenTable,
    key: Array,
    *,
    apply_fn: ApplyFn,
    config: StepConfig,
    pad_id: int,
    host_table: TokenTable | None = None,
    axis_name: str | None = None,
    step: Array | int = 0,
    length_stats: reencode.LengthStats | None = None,
) -> tuple[Array, Aux]:
    """This device's share of the CoCoHaNeRe loss, and the by-products the bank updates need.

    Steps 1-5 of the step order (docs/METHOD.md section 4). With ``axis_name=None`` it is a plain
    single-program function (the batch is the global batch): tests differentiate and finite-difference it directly. Inside
    ``shard_map`` (``axis_name="data"``) ``batch`` is the local share and the returned value is
    ``sum(local rows) / global_batch``; the sum over devices is the global loss.

    Args:
      params: encoder parameters (differentiated).
      query_bank, code_bank: the banks (searched, not modified).
      batch: ``data_id`` [n], ``query_ids`` [n, Lq], ``code_ids`` [n, Lc].
      table: the token table's device view.
      key: this step's PRNG key (``fold_in(state.rng, state.step)``).
      apply_fn: encoder apply function.
      config: step options.
      pad_id: the encoder's pad id.
      host_table: the host table when ``config.token_table == "host"``.
      axis_name: mesh axis of the data-parallel ``shard_map``, or None.
      step: the step counter (read only by the hard-negative schedule).
      length_stats: the token table's length histograms (`reencode.LengthStats.from_table`); with
        ``config.length_plan`` the length-aware pools are encoded along static plans made from them, with
        ``config.length_pack`` and ``length_pack_keep`` the packed rows kept (`reencode.choose_packed_keep`).

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
    hashes = _hashes(table, config)
    # The batch's own token rows: gathered here by DataID from the device table when it holds them (the
    # host then sends DataIDs only), else the rows the host sent.
    if table.query_ids is not None and table.code_ids is not None:
        query_rows, code_rows = table.query_ids[ids], table.code_ids[ids]
    else:
        query_rows, code_rows = batch["query_ids"], batch["code_ids"]
    lq, lc = query_rows.shape[1], code_rows.shape[1]

    def encode_parts(parts, params=params, cluster=1, **padded_options):
        """Embeddings of [(token_ids, keys, "query"|"code"), ...], and the encode calls whose length plan
        did not hold: length-aware in one pooled call, or padded one by one. ``cluster``: the rows come in
        runs of that many neighbours of one anchor (their lengths are alike; `reencode.plan_lengths`)."""
        if config.length_buckets:
            return reencode.encode_pool(
                apply_fn, params, [(t, k) for t, k, _ in parts], pad_id=pad_id, chunk=config.length_chunk,
                buckets=reencode.bucket_lengths((lq, lc), config.length_buckets),
                stats=length_stats, kinds=[kind for _, _, kind in parts], margin=config.length_plan_margin,
                plan_rule=config.length_plan, clusters=[cluster] * len(parts),
                correlation=config.length_plan_correlation, pack=config.length_pack,
                pack_keep=config.length_pack_keep,
            )
        return ([reencode.encode_rows(apply_fn, params, tokens, keys, pad_id=pad_id, **padded_options)
                 for tokens, keys, _ in parts], jnp.zeros((), jnp.int32))

    # 1-2. Encode the local batch; L^B against the global batch.
    if config.neighbour_pairs:
        nb = _neighbour_batch(
            ids, query_rows, code_rows, rows, code_bank=code_bank, ids_all=gather(ids), hashes=hashes,
            groups=table.groups, key=key, config=config, encode_parts=encode_parts,
            lookup=functools.partial(lookup_rows, table=table, host_table=host_table, axis_name=axis_name))
        ids, q, c = nb.ids, nb.q, nb.c
        neighbour_rows, neighbour_score_sum, plan_misses = nb.rows, nb.score_sum, nb.plan_misses
    else:
        (q, c), plan_misses = encode_parts([(query_rows, reencode.row_keys(key, reencode.STREAM_QUERY, rows), "query"),
                                            (code_rows, reencode.row_keys(key, reencode.STREAM_CODE, rows), "code")])
        neighbour_rows, neighbour_score_sum = jnp.zeros((), jnp.int32), jnp.zeros((), q.dtype)
    q_all, c_all, ids_all = gather(q), gather(c), gather(ids)
    # With mask_duplicates, same-text pairs of the global batch are not in-batch negatives either; with
    # neighbour batches two anchors may bring the same neighbour, which is never a negative of itself.
    pair_keep = bank_lib.duplicate_keep(ids_all, ids, hashes) if hashes else None
    if config.neighbour_pairs:
        same = ids[:, None] == ids_all[None, :]
        pair_keep = ~same if pair_keep is None else pair_keep & ~same
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
    hn_inputs = _HardNegativeInputs(
        q=q, c=c, qs=qs, cs=cs, ids=ids, ids_all=ids_all, rows=rows, positive_scores=positive_scores,
        hashes=hashes, key=key)
    hn_fn = functools.partial(_hard_negatives, query_bank=query_bank, code_bank=code_bank, table=table,
                              host_table=host_table, axis_name=axis_name, encode_parts=encode_parts,
                              config=config)
    if not config.uses_hard_negatives:
        hn = _no_hard_negatives(n, k, d, q.dtype)
    elif config.scheduled:
        # One program: the in-batch branch skips the search and the re-encoding (lax.cond runs one branch).
        shapes = jax.eval_shape(hn_fn, params, hn_inputs)

        def like(x, s):  # the true branch's dtype and, inside shard_map, its device-varying axes
            return reencode.make_varying(x.astype(s.dtype), reencode.varying_axes(s))

        def skip(params, inputs):
            return jax.tree.map(like, _no_hard_negatives(n, k, d, q.dtype), shapes)

        hn = jax.lax.cond(config.hard_negative_active(step), hn_fn, skip, params, hn_inputs)
    else:
        hn = hn_fn(params, hn_inputs)

    loss_hn_rows = hn.loss_rows
    if config.uses_hard_negatives and config.hard_negative_loss == "joint":
        # One softmax over the global batch and the row's hard negatives (all invalid on the schedule's
        # in-batch steps, where this is L^B exactly). Reported as L^B (its in-batch part) and L^HN (what
        # the hard negatives add to it), so the two metrics still sum to the loss trained on.
        w = config.hard_negative_weight
        joint = 0.5 * (
            losses.joint_rows(q, c_all, rows, config.temperature, pair_keep, hn.c_neg, hn.code_hits.valid, w)
            + losses.joint_rows(c, q_all, rows, config.temperature, pair_keep, hn.q_neg, hn.query_hits.valid, w)
        )
        loss_share = config.bimodal_weight * jnp.sum(joint) / n_global
        loss_hn_rows = config.bimodal_weight * (joint - loss_b_rows) / max(w, 1e-30)
    else:
        loss_share = (
            config.bimodal_weight * jnp.sum(loss_b_rows) + config.hard_negative_weight * jnp.sum(loss_hn_rows)
        ) / n_global
    aux = Aux(
        q=qs, c=cs, code_hits=hn.code_hits, query_hits=hn.query_hits,
        c_neg=jax.lax.stop_gradient(hn.c_neg), q_neg=jax.lax.stop_gradient(hn.q_neg),
        code_refresh=hn.code_refresh, query_refresh=hn.query_refresh,
        loss_b_sum=jax.lax.stop_gradient(jnp.sum(loss_b_rows)),
        loss_hn_sum=jax.lax.stop_gradient(jnp.sum(loss_hn_rows)),
        in_batch_correct=in_batch_correct,
        positive_score_sum=jnp.sum(positive_scores),
        negative_score_sum=hn.negative_score_sum,
        valid_negatives=hn.valid_negatives,
        dropped_negatives=hn.dropped_negatives,
        hard_negative_step=hn.active,
        ids=ids,
        neighbour_rows=neighbour_rows,
        neighbour_score_sum=jax.lax.stop_gradient(neighbour_score_sum),
        plan_misses=plan_misses + hn.plan_misses,
    )
    return loss_share, aux

