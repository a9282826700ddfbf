"""Contrastive losses of CoCoHaNeRe (docs/METHOD.md section 3).

All embeddings are L2-normalised rows, so ``a @ b`` is the cosine similarity; every similarity is divided
by ``temperature`` before the softmax. The two public losses are

* :func:`bimodal_loss` -- L^B, InfoNCE over in-batch negatives, both directions (query->code and
  code->query), averaged;
* :func:`hard_negative_loss` -- L^HN, InfoNCE of each anchor against its positive and its k retrieved (and
  re-encoded) hard negatives of the other modality, both directions, averaged.

A departure the step offers (``step.hard_negative_loss="joint"``, docs/METHOD.md section 9) puts each row's
hard negatives into L^B's own softmax instead (:func:`joint_rows`, the DPR / Tevatron way): one loss, one
positive term, so the hard negatives only add to the denominator.

Both are built on per-row terms (:func:`info_nce_rows`, :func:`hard_negative_rows`) that the data-parallel
step uses directly: each device evaluates its own rows against the *global* candidates and contributes
``sum(rows) / global_batch`` so that the sum over devices is exactly the global mean.

Masks are boolean, ``True`` = usable as a negative. Masked logits become ``-inf`` before the log-sum-exp,
so a masked negative contributes neither to the value nor to the gradient (the positive is always
present, so no row is ever all ``-inf``). A row whose hard negatives are all masked has L^HN = -log(1) = 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = [
    "info_nce_rows",
    "bimodal_loss",
    "hard_negative_rows",
    "hard_negative_loss",
    "joint_rows",
]


def info_nce_rows(
    anchors: Array,
    candidates: Array,
    labels: Array,
    temperature: float,
    negative_mask: Array | None = None,
) -> Array:
    """Per-row InfoNCE: ``-log softmax(anchors @ candidates.T / temperature)[i, labels[i]]``.

    Args:
      anchors: [n, d] unit-norm rows.
      candidates: [m, d] unit-norm rows; ``candidates[labels[i]]`` is the positive of ``anchors[i]``.
      labels: [n] int, index of each row's positive in ``candidates``.
      temperature: softmax temperature tau > 0.
      negative_mask: optional [n, m] bool, True where ``candidates[j]`` may serve as a negative of
        ``anchors[i]``. The positive column is always kept, whatever the mask says there.

    Returns:
      [n] float loss per anchor.
    """
    logits, positive_logit = _in_batch_logits(anchors, candidates, labels, temperature, negative_mask)
    return jax.nn.logsumexp(logits, axis=-1) - positive_logit


def _in_batch_logits(anchors, candidates, labels, temperature, negative_mask):
    """[n, m] logits (masked negatives at -inf, the positive always kept) and the [n] positive logits."""
    logits = (anchors @ candidates.T) / temperature
    is_positive = jnp.arange(candidates.shape[0])[None, :] == labels[:, None]
    if negative_mask is not None:
        logits = jnp.where(negative_mask | is_positive, logits, -jnp.inf)
    return logits, jnp.sum(jnp.where(is_positive, logits, 0.0), axis=-1)


def joint_rows(
    anchors: Array,
    candidates: Array,
    labels: Array,
    temperature: float,
    negative_mask: Array | None,
    hard_negatives: Array,
    hard_mask: Array | None = None,
    hard_weight: float = 1.0,
) -> Array:
    """Per-row InfoNCE over the in-batch candidates *and* the row's own hard negatives, in one softmax.

    ``-log(exp(s(a_i,p_i)) / (sum_j m_ij exp(s(a_i,c_j)) + w sum_r h_ir exp(s(a_i,n_ir))))``: the
    in-batch terms are those of :func:`info_nce_rows`; each valid hard negative adds ``w`` times its
    exponentiated score to the denominator (``w = hard_weight``; 0 gives :func:`info_nce_rows` exactly).

    Args:
      anchors, candidates, labels, temperature, negative_mask: as :func:`info_nce_rows`.
      hard_negatives: [n, k, d] unit-norm hard negatives of each anchor.
      hard_mask: optional [n, k] bool, True where ``hard_negatives[i, r]`` is valid.
      hard_weight: w >= 0, how many in-batch negatives one hard negative counts as.

    Returns:
      [n] float loss per anchor.
    """
    logits, positive_logit = _in_batch_logits(anchors, candidates, labels, temperature, negative_mask)
    hard = jnp.einsum("nd,nkd->nk", anchors, hard_negatives) / temperature
    keep = jnp.ones(hard.shape, bool) if hard_mask is None else hard_mask
    if hard_weight <= 0:
        keep = jnp.zeros(hard.shape, bool)
    else:
        hard = hard + jnp.log(jnp.asarray(hard_weight, hard.dtype))
    hard = jnp.where(keep, hard, -jnp.inf)
    return jax.nn.logsumexp(jnp.concatenate([logits, hard], axis=-1), axis=-1) - positive_logit


def bimodal_loss(
    q: Array,
    c: Array,
    temperature: float,
    negative_mask: Array | None = None,
) -> Array:
    """L^B: in-batch InfoNCE, mean over the batch of the average of both directions.

    ``L^B_q(i) = -log(exp(s(q_i,c_i)) / sum_j exp(s(q_i,c_j)))`` and symmetrically
    ``L^B_c(i) = -log(exp(s(c_i,q_i)) / sum_j exp(s(c_i,q_j)))`` with ``s(a,b) = a.b / temperature``.

    Args:
      q: [n, d] unit-norm query embeddings.
      c: [n, d] unit-norm code embeddings; ``(q[i], c[i])`` is a positive pair.
      temperature: softmax temperature tau > 0.
      negative_mask: optional [n, n] bool; ``negative_mask[i, j]`` says whether pair j is a usable
        negative for pair i, in both directions (``c_j`` for ``q_i`` and ``q_j`` for ``c_i``); the
        diagonal is always kept. Use it to drop same-text duplicates (false negatives).

    Returns:
      Scalar loss.
    """
    labels = jnp.arange(q.shape[0])
    loss_q = info_nce_rows(q, c, labels, temperature, negative_mask)
    loss_c = info_nce_rows(c, q, labels, temperature, negative_mask)
    return jnp.mean(0.5 * (loss_q + loss_c))


def hard_negative_rows(
    anchors: Array,
    positives: Array,
    negatives: Array,
    temperature: float,
    negative_mask: Array | None = None,
) -> Array:
    """Per-row hard-negative InfoNCE of one direction.

    ``-log(exp(s(a_i,p_i)) / (exp(s(a_i,p_i)) + sum_j m_ij exp(s(a_i,n_ij))))``.

    Args:
      anchors: [n, d] unit-norm rows.
      positives: [n, d] unit-norm rows, the positive of each anchor.
      negatives: [n, k, d] unit-norm rows, the hard negatives of each anchor.
      temperature: softmax temperature tau > 0.
      negative_mask: optional [n, k] bool, True where ``negatives[i, j]`` is a valid negative.

    Returns:
      [n] float loss per anchor (0 for a row without any valid negative).
    """
    positive_logit = jnp.sum(anchors * positives, axis=-1) / temperature  # [n]
    negative_logits = jnp.einsum("nd,nkd->nk", anchors, negatives) / temperature  # [n, k]
    # log(1 + sum_j exp(neg_j - pos)): exactly 0 for a row whose negatives are all masked.
    margins = negative_logits - positive_logit[:, None]
    if negative_mask is not None:
        margins = jnp.where(negative_mask, margins, -jnp.inf)
    zeros = jnp.zeros_like(positive_logit)[:, None]
    return jax.nn.logsumexp(jnp.concatenate([zeros, margins], axis=-1), axis=-1)


def hard_negative_loss(
    q: Array,
    c: Array,
    q_neg: Array,
    c_neg: Array,
    temperature: float,
    neg_mask: Array | tuple[Array, Array] | None = None,
) -> Array:
    """L^HN: mean over the batch of the average of the two hard-negative directions.

    ``L^HN_q(i)`` scores ``q_i`` against ``c_i`` and its hard negative codes ``c_neg[i]``;
    ``L^HN_c(i)`` scores ``c_i`` against ``q_i`` and its hard negative queries ``q_neg[i]``.

    Args:
      q: [n, d] unit-norm queries.
      c: [n, d] unit-norm codes, ``c[i]`` the positive of ``q[i]``.
      q_neg: [n, k, d] hard negative queries of ``c[i]``.
      c_neg: [n, k, d] hard negative codes of ``q[i]``.
      temperature: softmax temperature tau > 0.
      neg_mask: None (all valid), one [n, k] bool mask used for both directions, or a pair
        ``(q_neg_mask, c_neg_mask)`` in the same order as the ``q_neg, c_neg`` arguments.

    Returns:
      Scalar loss. Rows with no valid negative contribute 0 and still count in the mean over the batch,
      so the loss keeps the paper's normalisation while the bank is filling up.
    """
    if isinstance(neg_mask, (tuple, list)):
        q_neg_mask, c_neg_mask = neg_mask
    else:
        q_neg_mask = c_neg_mask = neg_mask
    loss_q = hard_negative_rows(q, c, c_neg, temperature, c_neg_mask)
    loss_c = hard_negative_rows(c, q, q_neg, temperature, q_neg_mask)
    return jnp.mean(0.5 * (loss_q + loss_c))
