"""Metrics of the code-to-code tasks and XLCoST: MAP@R (POJ-104), threshold precision / recall / F1
(BigCloneBench), MRR (XLCoST).

**MAP@R** (Musgrave et al. 2020; CodeXGLUE POJ-104 ``evaluator/evaluator.py`` and ``code/run.py``): every
program queries all the others (itself excluded); R_i = the number of other programs with its label;
with the R_i nearest neighbours ranked by similarity,

    AP@R_i = (1 / R_i) * sum_{k=1..R_i} P@k * rel_k,     P@k = (relevant among the first k) / k,
    MAP@R  = mean_i AP@R_i.

Programs whose label has no other member (R_i = 0) are not queries (the official code would divide by
zero) and are counted in ``singletons``. The neighbours are found blocked: one [query_block, code_block]
score tile at a time and a running top-R_max per query, so 50k programs never need a 50k x 50k matrix.
Ties in score go to the lower index (``jax.lax.top_k``); the official code sorts with an unspecified tie
order.

**BigCloneBench** (CodeXGLUE ``evaluator/evaluator.py``: sklearn ``precision_score`` / ``recall_score`` /
``f1_score`` of the clone class): a pair is predicted a clone when the similarity of its two embeddings is
``> threshold``; the threshold is the one with the best F1 on valid (exact sweep over every distinct valid
score, or over a given grid as CodeXGLUE's ``run.py`` does with 0.01 .. 0.99), then applied once to test.
``F1 = 2 TP / (2 TP + FP + FN)``; a metric whose denominator is 0 is 0 (sklearn's zero_division default).

**XLCoST MRR** (XLCoST ``code/run.py`` adapted from CodeXGLUE NL-code-search-Adv, and its evaluator):
each query is ranked against every code of the split; valid MRR = mean 1/rank; the test evaluator reads
the top 100 predictions, so a target ranked below 100 scores 0 (``mrr@100``). Ranks come from
`cocohanere_jax.evaluate.ranks` (blocked; ties count in the query's favour, the official code counts
them against it: with float scores ties are vanishingly rare).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cocohanere_jax import evaluate

# ----------------------------------------------------------------------------------------------
# MAP@R


@functools.partial(jax.jit, static_argnames=("k",))
def _merge_top_k(top_vals, top_idx, q, q_index, codes, code_index, code_valid, k: int):
    """One tile: scores of the query block against a code block, merged into the running top-k."""
    scores = jnp.einsum("qd,cd->qc", q, codes, preferred_element_type=jnp.float32)
    usable = code_valid[None, :] & (code_index[None, :] != q_index[:, None])
    scores = jnp.where(usable, scores, -jnp.inf)
    vals = jnp.concatenate([top_vals, scores], axis=1)
    idx = jnp.concatenate([top_idx, jnp.broadcast_to(code_index[None, :], scores.shape)], axis=1)
    new_vals, pos = jax.lax.top_k(vals, k)
    return new_vals, jnp.take_along_axis(idx, pos, axis=1)


def nearest_neighbours(emb: np.ndarray, k: int, query_block: int = 512, code_block: int = 4096) -> np.ndarray:
    """int64 [N, k]: for each row, the indices of its k most similar other rows (dot product), best first.

    Blocked over queries and candidates (device memory O(query_block * (k + code_block))); ties go to the
    lower index; the row itself is never its own neighbour.
    """
    emb = np.asarray(emb, np.float32)
    n = emb.shape[0]
    if not 0 < k < n:
        raise ValueError(f"nearest_neighbours needs 0 < k < N (the other rows), got k={k}, N={n}")
    qb, cb = min(query_block, n), min(code_block, n)
    out = np.zeros((n, k), np.int64)
    for qs in range(0, n, qb):
        q = evaluate._pad_rows(emb[qs:qs + qb], qb)
        q_index = qs + np.arange(qb)
        top_vals = jnp.full((qb, k), -jnp.inf, jnp.float32)
        top_idx = jnp.full((qb, k), -1, jnp.int32)
        for cs in range(0, n, cb):
            code_index = cs + np.arange(cb)
            top_vals, top_idx = _merge_top_k(top_vals, top_idx, q, q_index, evaluate._pad_rows(emb[cs:cs + cb], cb),
                                             code_index, code_index < n, k=k)
        out[qs:qs + qb] = np.asarray(top_idx)[: min(qb, n - qs)]
    return out


def average_precision_at_r(neighbour_labels: np.ndarray, query_labels: np.ndarray, r: np.ndarray) -> np.ndarray:
    """float64 [n]: AP@R of each query from the labels of its ranked neighbours ([n, >= max r])."""
    rel = neighbour_labels == np.asarray(query_labels)[:, None]
    rel = rel & (np.arange(rel.shape[1])[None, :] < np.asarray(r)[:, None])
    precision = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)[None, :]
    return np.sum(precision * rel, axis=1) / np.maximum(r, 1)


def map_at_r(emb: np.ndarray, labels: Sequence | np.ndarray, *, query_block: int = 512,
             code_block: int = 4096) -> dict[str, float]:
    """MAP@R of an embedding matrix with one label per row (every row queries all the others).

    Args:
      emb: [N, d] embeddings (unit rows: dot = cosine).
      labels: [N] labels (any hashable values: ints, the strings of POJ-104).
      query_block, code_block: tile sizes.

    Returns:
      ``map_at_r``, ``num_queries`` (rows with R >= 1), ``singletons`` (rows with R = 0, not queried),
      ``num_labels``, ``max_r``.
    """
    emb = np.asarray(emb, np.float32)
    _, lab = np.unique(np.asarray(labels), return_inverse=True)
    if lab.shape[0] != emb.shape[0]:
        raise ValueError(f"map_at_r: {emb.shape[0]} embeddings but {lab.shape[0]} labels")
    r = np.bincount(lab)[lab] - 1
    queried = r > 0
    if not queried.any():
        raise ValueError("map_at_r: no label has two or more programs, nothing to query")
    k = int(r.max())
    nn = nearest_neighbours(emb, k, query_block, code_block)
    ap = average_precision_at_r(lab[nn[queried]], lab[queried], r[queried])
    return {"map_at_r": float(np.mean(ap)), "num_queries": int(queried.sum()), "singletons": int((~queried).sum()),
            "num_labels": int(lab.max() + 1), "max_r": k}


def map_at_r_from_predictions(answers: Mapping[str, Sequence[str]], predictions: Mapping[str, Sequence[str]]) -> float:
    """The formula of CodeXGLUE's POJ-104 evaluator on its file contents: for each index, ``answers`` = the
    indices of the other programs with its label (R of them), ``predictions`` = its top R retrieved, best
    first; AP = sum over hits at rank k of (hits so far) / k, divided by R; the mean over indices."""
    scores = []
    for key, answer in answers.items():
        if key not in predictions:
            raise KeyError(f"no prediction for index {key!r}")
        pred = list(predictions[key])
        if len(pred) != len(answer):
            raise ValueError(f"index {key!r}: {len(pred)} predictions for {len(answer)} answers (need top R)")
        gold, hits, total = set(answer), 0, 0.0
        for rank, p in enumerate(pred, start=1):
            if p in gold:
                hits += 1
                total += hits / rank
        scores.append(total / len(gold))
    return float(np.mean(scores))


# ----------------------------------------------------------------------------------------------
# BigCloneBench: pair similarity, a threshold chosen on valid, precision / recall / F1


def pair_scores(emb: np.ndarray, left: np.ndarray, right: np.ndarray, block: int = 65536) -> np.ndarray:
    """float32 [P]: dot product of the embeddings of each pair (rows ``left[p]``, ``right[p]``), in blocks."""
    emb = np.asarray(emb, np.float32)
    left, right = np.asarray(left, np.int64), np.asarray(right, np.int64)
    out = np.empty(left.shape[0], np.float32)
    for s in range(0, left.shape[0], block):
        out[s:s + block] = np.einsum("pd,pd->p", emb[left[s:s + block]], emb[right[s:s + block]])
    return out


def precision_recall_f1(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of class 1 (sklearn's binary average; 0 where a denominator is 0)."""
    t, p = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    tp = int(np.sum(t & p))
    fp = int(np.sum(~t & p))
    fn = int(np.sum(t & ~p))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def choose_threshold(scores: np.ndarray, labels: np.ndarray, grid: Sequence[float] | None = None) -> tuple[float, float]:
    """``(threshold, f1)``: the threshold whose prediction ``scores > threshold`` has the best F1 on these
    (valid) pairs.

    ``grid=None``: exact, over every cut between distinct scores (O(P log P)); the threshold is the midpoint
    of the two scores around the cut; among equal F1 the highest threshold wins. With a ``grid`` (CodeXGLUE's
    ``run.py``: ``[i / 100 for i in range(1, 100)]``), the first grid value with the best F1 wins.
    """
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels).astype(bool)
    if s.shape != y.shape or s.ndim != 1 or s.size == 0:
        raise ValueError(f"choose_threshold needs equal-length 1-d scores and labels, got {s.shape} and {y.shape}")
    positives = int(y.sum())
    if grid is not None:
        best_t, best_f1 = float(grid[0]), -1.0
        for t in grid:
            f1 = precision_recall_f1(y, s > t)["f1"]
            if f1 > best_f1:
                best_t, best_f1 = float(t), f1
        return best_t, best_f1
    order = np.argsort(-s, kind="stable")
    ss, ys = s[order], y[order]
    n = s.size
    # Cut after the first k sorted scores (k predicted clones): possible when k = 0, k = n or ss[k-1] > ss[k].
    k = np.arange(n + 1)
    tp = np.concatenate([[0], np.cumsum(ys)])
    possible = np.ones(n + 1, bool)
    possible[1:n] = ss[:-1] > ss[1:]
    denom = k + positives  # 2 TP + FP + FN = (TP + FP) + (TP + FN)
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    f1 = np.where(possible, f1, -1.0)
    best = int(np.argmax(f1))  # first max = fewest predicted clones = highest threshold
    if best == 0:
        t = ss[0]
    elif best == n:
        t = ss[-1] - 1.0
    else:
        t = 0.5 * (ss[best - 1] + ss[best])
    return float(t), float(f1[best])


def threshold_f1(valid_scores: np.ndarray, valid_labels: np.ndarray, test_scores: np.ndarray,
                 test_labels: np.ndarray, grid: Sequence[float] | None = None) -> dict[str, float]:
    """BigCloneBench protocol: the threshold chosen on valid (`choose_threshold`), then test precision,
    recall and F1 at it. Returns ``threshold``, ``valid_f1``, ``precision``, ``recall``, ``f1``, counts."""
    t, valid_f1 = choose_threshold(valid_scores, valid_labels, grid)
    out = precision_recall_f1(test_labels, np.asarray(test_scores, np.float64) > t)
    out.update(threshold=t, valid_f1=valid_f1, num_valid_pairs=int(np.size(valid_labels)),
               num_test_pairs=int(np.size(test_labels)))
    return out


# ----------------------------------------------------------------------------------------------
# XLCoST: MRR (valid: full rank; test evaluator: top 100)

XLCOST_CUTOFF = 100


def xlcost_mrr(query_emb: np.ndarray, code_emb: np.ndarray, targets: np.ndarray | None = None,
               cutoff: int = XLCOST_CUTOFF, **blocks) -> dict[str, float]:
    """MRR of each query's target among all codes of the split; ``targets`` defaults to ``arange(n)`` (XLCoST:
    query i is answered by code i). Returns ``mrr`` (full rank, XLCoST's validation), ``mrr@<cutoff>``
    (its test evaluator: 0 beyond the top ``cutoff``), R@1/5/10 and ``num_queries``."""
    q = np.asarray(query_emb, np.float32)
    targets = np.arange(q.shape[0]) if targets is None else np.asarray(targets, np.int64)
    r = evaluate.ranks(q, code_emb, targets, **blocks)
    out = evaluate.metrics_from_ranks(r)
    out[f"mrr@{cutoff}"] = float(np.mean(np.where(r <= cutoff, 1.0 / r, 0.0)))
    return out


def mrr_from_predictions(answers: Mapping[str, str], predictions: Mapping[str, Sequence[str]]) -> float:
    """The formula of CodeXGLUE NL-code-search-Adv's evaluator (which XLCoST's NL code search uses): per
    query url, 1 / (1-based position of its answer idx among the predicted idx list), 0 if absent; mean."""
    scores = []
    for url, answer in answers.items():
        if url not in predictions:
            raise KeyError(f"no prediction for url {url!r}")
        pred = list(predictions[url])
        scores.append(1.0 / (pred.index(answer) + 1) if answer in pred else 0.0)
    return float(np.mean(scores))
