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

# Sharded embedding: rows per device per call, static length buckets per cap, rows per switch chunk.
EMBED_ROWS_PER_DEVICE = 64
EMBED_LENGTH_BUCKETS = 4
EMBED_CHUNK = 16


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


def targets_only(task: RetrievalTask) -> RetrievalTask:
    """The task ranked against its queries' own target codes only (the CodeSearchNet-challenge setting:
    N queries against their N codes; fewer when queries share a target), not the whole codebase."""
    order = list(dict.fromkeys(int(t) for t in task.targets))
    index = {t: i for i, t in enumerate(order)}
    return RetrievalTask(
        queries=list(task.queries), targets=np.asarray([index[int(t)] for t in task.targets], np.int64),
        codebase=[task.codebase[t] for t in order], skipped=task.skipped,
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


_EMBEDDERS: dict = {}


def _sharded_embedder(encoder, mesh, width: int, length_buckets: int, chunk: int):
    """jit(shard_map(encode)) for [D * rows, width] id blocks, length-aware (``length_buckets`` > 0) or one padded
    call per block (0); cached per encoder module."""
    from jax.sharding import PartitionSpec as P

    from cocohanere_jax import reencode, sharding

    key = (id(encoder.module), encoder.pad_id, mesh, width, length_buckets, chunk if length_buckets else 0)
    if key not in _EMBEDDERS:
        apply_fn = reencode.as_apply_fn(encoder.module)
        buckets = reencode.bucket_lengths((width,), length_buckets)

        def body(params, ids):
            keys = jnp.zeros((ids.shape[0], 2), jnp.uint32)  # no dropout: the keys are never read
            if length_buckets:
                emb = reencode.encode_rows_bucketed(apply_fn, params, ids, keys, pad_id=encoder.pad_id,
                                                    buckets=buckets, chunk=chunk, deterministic=True)
            else:  # one call per block at the width
                emb = reencode.encode_rows(apply_fn, params, ids, keys, pad_id=encoder.pad_id, deterministic=True)
            return jax.lax.all_gather(emb, sharding.DATA_AXIS, tiled=True)

        _EMBEDDERS[key] = encoder.module, jax.jit(jax.shard_map(
            body, mesh=mesh, in_specs=(P(), P(sharding.DATA_AXIS)), out_specs=P(), check_vma=False))
    return _EMBEDDERS[key][1]


def embed_ids_sharded(encoder, ids: np.ndarray, mesh, params=None,
                      rows_per_device: int = EMBED_ROWS_PER_DEVICE, length_buckets: int = EMBED_LENGTH_BUCKETS,
                      chunk: int = EMBED_CHUNK) -> np.ndarray:
    """float32 [n, dim]: token rows embedded over the mesh, each device its share, one compiled program for
    every block; with ``length_buckets`` > 0 each row at (close to) its real length
    (`reencode.encode_rows_bucketed`), with 0 each block in one call at the width.

    ``length_buckets``: per cap, as ``step.length_buckets``. Length-aware on every platform (unlike the train
    step): forward only, it ran 1.07x as fast as the padded calls on an H200 too, after a compile about 15 s
    longer per width (benchmarks/RESULTS.md, "On a GPU"; `python -m benchmarks.embed_lengths`).

    Rows are sorted by length on the host and dealt round-robin to the devices (equal work per device);
    every call embeds ``devices * rows_per_device`` rows (the last block repeats a real row). Every process
    passes all rows and gets all embeddings; with several processes the mesh spans them all (each device
    still embeds only its share).
    """
    from cocohanere_jax import sharding

    ids = np.asarray(ids, np.int32)
    n, width = ids.shape
    out = np.zeros((n, encoder.dim), np.float32)
    if n == 0:
        return out
    params = encoder.params if params is None else params
    if jax.process_count() > 1:  # this process's copy (same values everywhere) -> the global mesh, via the host
        params = jax.tree.map(np.asarray, params)
    params = sharding.replicate(params, mesh)
    devices = mesh.shape[sharding.DATA_AXIS]
    block = devices * rows_per_device
    fn = _sharded_embedder(encoder, mesh, width, length_buckets, chunk)
    lengths = (ids != encoder.pad_id).sum(axis=1)
    order = np.argsort(-lengths, kind="stable")
    batch_sharding = sharding.batch_sharding(mesh)
    for start in range(0, n, block):
        rows = order[start:start + block]
        rows = np.concatenate([rows, np.repeat(rows[:1], block - len(rows))])
        # Round-robin: device d gets sorted rows d, d + D, ...
        dealt = rows.reshape(rows_per_device, devices).T.reshape(-1)
        x = ids[dealt]
        arr = jax.make_array_from_callback(x.shape, batch_sharding, lambda index, x=x: x[index])
        emb = fn(params, arr).addressable_data(0)  # replicated: this process's full copy
        out[dealt] = np.asarray(emb, np.float32)  # the repeats of a real row write it again
    return out


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
    mesh=None,
) -> dict[str, float]:
    """Embeds the queries and the whole codebase with `encoder` (optionally other params) and ranks.

    `code_embeddings` (from `embed_codebase` with the same encoder and params) skips embedding the codebase:
    valid and test of the GraphCodeBERT layout rank against the same codebase. With ``mesh`` the rows are
    embedded sharded over it (`embed_ids_sharded`; ``batch_size`` is then the rows per device per call).
    Returns MRR, R@1/5/10, the number of queries, the codebase size and the skipped (unmatched) queries.
    """
    if isinstance(task, RetrievalTask):
        task = tokenize_task(encoder, task, query_length, code_length)
    enc = encoder if params is None else encoder.with_params(params)
    embed = _embed_fn(enc, batch_size, mesh)
    q = embed(task.query_ids)
    if code_embeddings is None:
        c = embed(task.code_ids)
    else:
        c = np.asarray(code_embeddings, np.float32)
        if c.shape[0] != len(task.code_ids):
            raise ValueError(f"code_embeddings has {c.shape[0]} rows for a codebase of {len(task.code_ids)}")
    result = metrics_from_ranks(ranks(q, c, task.targets))
    result.update(codebase_size=len(task.code_ids), skipped_queries=int(task.skipped))
    return result


def _embed_fn(enc, batch_size: int, mesh):
    if mesh is None:
        return lambda ids: enc.embed_ids(ids, batch_size=batch_size)
    return lambda ids: embed_ids_sharded(enc, ids, mesh, rows_per_device=batch_size)


def embed_codebase(encoder, task: TokenizedTask, params=None, batch_size: int = 64, mesh=None) -> np.ndarray:
    """float32 [n_codes, dim]: the codebase of `task` embedded (to pass to `evaluate` for several tasks);
    with ``mesh``, sharded over it (`embed_ids_sharded`)."""
    enc = encoder if params is None else encoder.with_params(params)
    return _embed_fn(enc, batch_size, mesh)(task.code_ids)


def same_codebase(a: TokenizedTask, b: TokenizedTask) -> bool:
    """Whether two tokenised tasks rank against the same codebase (so one embedding serves both)."""
    return a.code_ids.shape == b.code_ids.shape and bool(np.array_equal(a.code_ids, b.code_ids))


def format_metrics(m: Mapping[str, float]) -> str:
    """One line: MRR and R@k as percentages-free decimals, as the paper reports them."""
    keys = ["mrr"] + [f"r@{k}" for k in RECALL_AT]
    return " ".join(f"{k}={m[k]:.4f}" for k in keys if k in m)
