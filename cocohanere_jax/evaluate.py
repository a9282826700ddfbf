"""Code-search evaluation: every query ranked against the whole codebase; MRR and R@k.

The ranking is blocked over queries and over the codebase, so a 50k-candidate codebase never needs a
50k x 50k score matrix: the device holds one [query_block, code_block] tile at a time and keeps, per query,
the count of candidates that score above its target. Rank = 1 + that count (ties count in the query's
favour, as with a stable sort that puts the target first; with float scores ties are vanishingly rare).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

RECALL_AT = (1, 5, 10)


@dataclasses.dataclass(frozen=True)
class RetrievalTask:
    """Queries with the codebase index of their target, and the codebase, as texts.

    `skipped` counts queries whose key had no match in the codebase (reported, never silently dropped).
    """

    queries: Sequence[str]
    targets: np.ndarray  # int [n_queries]: index into `codebase`
    codebase: Sequence[str]
    skipped: int = 0

    @classmethod
    def from_keys(
        cls, queries: Sequence[str], query_keys: Sequence[str], codebase: Sequence[str], codebase_keys: Sequence[str]
    ) -> "RetrievalTask":
        """Matches each query to the codebase entry with the same key (CodeSearchNet: the `url`)."""
        index: dict[str, int] = {}
        for i, k in enumerate(codebase_keys):
            index.setdefault(k, i)
        keep = [i for i, k in enumerate(query_keys) if k in index]
        return cls(
            queries=[queries[i] for i in keep],
            targets=np.asarray([index[query_keys[i]] for i in keep], np.int64),
            codebase=list(codebase),
            skipped=len(query_keys) - len(keep),
        )


@jax.jit
def _count_above(
    q: jax.Array, target_score: jax.Array, target: jax.Array, codes: jax.Array, code_index: jax.Array, valid: jax.Array
) -> jax.Array:
    """Per query, how many (valid) codes of this block score strictly above the query's target.

    The target itself is excluded by index, not by score: its score in the tile may differ from
    `target_score` in the last bit (another summation order), which must not cost it a rank.
    """
    scores = jnp.einsum("qd,cd->qc", q, codes, preferred_element_type=jnp.float32)
    above = (scores > target_score[:, None]) & valid[None, :] & (code_index[None, :] != target[:, None])
    return jnp.sum(above, axis=1, dtype=jnp.int32)


def ranks(
    query_emb: np.ndarray,
    code_emb: np.ndarray,
    targets: np.ndarray,
    query_block: int = 1024,
    code_block: int = 8192,
) -> np.ndarray:
    """1-based rank of each query's target among all codes (scores = dot products), blocked.

    Blocks are padded to fixed shapes, so the jitted tile compiles once whatever the sizes.
    """
    query_emb = np.asarray(query_emb, np.float32)
    code_emb = np.asarray(code_emb, np.float32)
    targets = np.asarray(targets, np.int64)
    n, d = query_emb.shape
    m = code_emb.shape[0]
    if n == 0:
        return np.zeros((0,), np.int64)
    if targets.min() < 0 or targets.max() >= m:
        raise ValueError(f"targets must index the codebase of {m} entries, got range [{targets.min()}, {targets.max()}]")
    target_score = np.sum(query_emb * code_emb[targets], axis=1)
    qb, cb = min(query_block, n), min(code_block, m)
    out = np.zeros((n,), np.int64)
    for qs in range(0, n, qb):
        q = _pad_rows(query_emb[qs:qs + qb], qb)
        t = _pad_rows(target_score[qs:qs + qb], qb)
        tgt = _pad_rows(targets[qs:qs + qb], qb)
        count = jnp.zeros((qb,), jnp.int32)
        for cs in range(0, m, cb):
            codes = code_emb[cs:cs + cb]
            index = cs + np.arange(cb)
            count = count + _count_above(q, t, tgt, _pad_rows(codes, cb), index, index < m)
        out[qs:qs + qb] = 1 + np.asarray(count)[: min(qb, n - qs)]
    return out


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    if len(x) == rows:
        return x
    pad = np.zeros((rows - len(x),) + x.shape[1:], x.dtype)
    return np.concatenate([x, pad])


def metrics_from_ranks(r: np.ndarray, recall_at: Sequence[int] = RECALL_AT) -> dict[str, float]:
    """MRR and R@k from 1-based ranks."""
    r = np.asarray(r, np.float64)
    if r.size == 0:
        raise ValueError("no query to evaluate")
    out = {"mrr": float(np.mean(1.0 / r))}
    for k in recall_at:
        out[f"r@{k}"] = float(np.mean(r <= k))
    out["num_queries"] = int(r.size)
    return out


@dataclasses.dataclass(frozen=True)
class TokenizedTask:
    """A `RetrievalTask` tokenised once (evaluation runs many times during training)."""

    query_ids: np.ndarray  # int32 [n_queries, Lq]
    code_ids: np.ndarray  # int32 [n_codes, Lc]
    targets: np.ndarray
    skipped: int = 0


def tokenize_task(encoder, task: RetrievalTask, query_length: int = 128, code_length: int = 256) -> TokenizedTask:
    return TokenizedTask(
        encoder.tokenize(task.queries, query_length), encoder.tokenize(task.codebase, code_length),
        task.targets, task.skipped,
    )


def evaluate(
    encoder,
    task: RetrievalTask | TokenizedTask,
    params=None,
    query_length: int = 128,
    code_length: int = 256,
    batch_size: int = 64,
    code_embeddings: np.ndarray | None = None,
) -> dict[str, float]:
    """Embeds the queries and the whole codebase with `encoder` (optionally other params) and ranks.

    `code_embeddings` (from `embed_codebase` with the same encoder and params) skips embedding the codebase:
    valid and test of the GraphCodeBERT layout rank against the same codebase.
    Returns MRR, R@1/5/10, the number of queries, the codebase size and the skipped (unmatched) queries.
    """
    if isinstance(task, RetrievalTask):
        task = tokenize_task(encoder, task, query_length, code_length)
    enc = encoder if params is None else encoder.with_params(params)
    q = enc.embed_ids(task.query_ids, batch_size=batch_size)
    if code_embeddings is None:
        c = enc.embed_ids(task.code_ids, batch_size=batch_size)
    else:
        c = np.asarray(code_embeddings, np.float32)
        if c.shape[0] != len(task.code_ids):
            raise ValueError(f"code_embeddings has {c.shape[0]} rows for a codebase of {len(task.code_ids)}")
    result = metrics_from_ranks(ranks(q, c, task.targets))
    result.update(codebase_size=len(task.code_ids), skipped_queries=int(task.skipped))
    return result


def embed_codebase(encoder, task: TokenizedTask, params=None, batch_size: int = 64) -> np.ndarray:
    """float32 [n_codes, dim]: the codebase of `task` embedded (to pass to `evaluate` for several tasks)."""
    enc = encoder if params is None else encoder.with_params(params)
    return enc.embed_ids(task.code_ids, batch_size=batch_size)


def same_codebase(a: TokenizedTask, b: TokenizedTask) -> bool:
    """Whether two tokenised tasks rank against the same codebase (so one embedding serves both)."""
    return a.code_ids.shape == b.code_ids.shape and bool(np.array_equal(a.code_ids, b.code_ids))


def format_metrics(m: Mapping[str, float]) -> str:
    """One line: MRR and R@k as percentages-free decimals, as the paper reports them."""
    keys = ["mrr"] + [f"r@{k}" for k in RECALL_AT]
    return " ".join(f"{k}={m[k]:.4f}" for k in keys if k in m)
