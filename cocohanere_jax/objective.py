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
    encode = functools.partial(reencode.encode_rows, apply_fn, params, pad_id=pad_id)
    hashes = _hashes(table, config)
    # The batch's own token rows: gathered here by DataID from the device table when it holds them (the
    # host then sends DataIDs only), else the rows the host sent.
    if table.query_ids is not None and table.code_ids is not None:
        query_rows, code_rows = table.query_ids[ids], table.code_ids[ids]
    else:
        query_rows, code_rows = batch["query_ids"], batch["code_ids"]
    lq, lc = query_rows.shape[1], code_rows.shape[1]

    def encode_parts(parts, **padded_options):
        """Embeddings of [(token_ids, keys), ...]: length-aware in one pooled call, or padded one by one."""
        if config.length_buckets:
            return reencode.encode_pool(
                apply_fn, params, parts, pad_id=pad_id, chunk=config.length_chunk,
                buckets=reencode.bucket_lengths((lq, lc), config.length_buckets),
            )
        return [encode(tokens, keys, **padded_options) for tokens, keys in parts]

    # 1-2. Encode the local batch; L^B against the global batch.
    q, c = encode_parts([(query_rows, reencode.row_keys(key, reencode.STREAM_QUERY, rows)),
                         (code_rows, reencode.row_keys(key, reencode.STREAM_CODE, rows))])
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
        negative_options = dict(remat=config.remat, chunk=config.reencode_chunk)
        lookup = functools.partial(lookup_rows, table=table, host_table=host_table, axis_name=axis_name)
        if config.dedup_negatives:
            budget = max(1, math.ceil(config.reencode_fraction * n * k))

            def distinct(which, hits, stream):
                unique_ids, index, kept = reencode.dedup_neighbours(hits.ids, hits.valid, budget)
                # Unused budget slots borrow the first anchor's own (real) row; their outputs are unused.
                tokens = lookup(which, jnp.where(unique_ids >= 0, unique_ids, ids[0]))
                keys = reencode.row_keys(key, stream, jnp.maximum(unique_ids, 0))
                return (tokens, keys), index, hits._replace(valid=kept), jnp.sum(hits.valid & ~kept)

            c_part, c_index, code_hits, dropped_c = distinct("code", code_hits, reencode.STREAM_DEDUP_CODE)
            q_part, q_index, query_hits, dropped_q = distinct("query", query_hits, reencode.STREAM_DEDUP_QUERY)
            c_emb, q_emb = encode_parts([c_part, q_part], **negative_options)
            pad_row = jnp.zeros((1, d), c_emb.dtype)
            c_neg = jnp.concatenate([c_emb, pad_row])[c_index]  # [n, k, d]
            q_neg = jnp.concatenate([q_emb, pad_row])[q_index]
            dropped_negatives = dropped_c + dropped_q
        else:
            code_tokens = lookup("code", jnp.where(code_hits.valid, code_hits.ids, own)).reshape(n * k, -1)
            query_tokens = lookup("query", jnp.where(query_hits.valid, query_hits.ids, own)).reshape(n * k, -1)
            neg_rows = rows[:, None] * k + jnp.arange(k, dtype=jnp.int32)[None, :]
            c_neg, q_neg = encode_parts([
                (code_tokens, reencode.row_keys(key, reencode.STREAM_NEG_CODE, neg_rows)),
                (query_tokens, reencode.row_keys(key, reencode.STREAM_NEG_QUERY, neg_rows)),
            ], **negative_options)
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

