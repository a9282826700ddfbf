"""Host-side input pipeline: tokenised arrays cached on disk, and a resumable batch iterator.

* `cached_tokenize` turns texts into a fixed-length int32 array [n, L] through the encoder's
  ``tokenize(texts, max_length) -> np.int32 [n, max_length]`` (ids padded with the pad id, truncated)
  and caches it on disk. The cache key is the tokenizer fingerprint, the length and a digest of the
  texts, so a different tokenizer, length or dataset never reads a stale file. The token table built
  from those arrays (row i = DataID i) is `cocohanere_jax.token_table`.
* `BatchIterator` yields the DataIDs of this process's slice of each global batch. Epoch e is a
  permutation drawn from ``PCG64(SeedSequence([seed, e]))`` raw outputs (argsort), which depends
  only on (seed, epoch, N): stopping after step n, saving `state()` and `restore()`-ing it into a
  fresh iterator gives exactly the batches an uninterrupted run would, with any process count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

Tokenize = Callable[[Sequence[str], int], np.ndarray]

_CACHE_FORMAT = 1
_STATE_VERSION = 1


def texts_digest(texts: Sequence[str]) -> str:
    """sha256 over the texts (each length-prefixed, so that boundaries matter)."""
    h = hashlib.sha256()
    h.update(str(len(texts)).encode())
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Tokenisation with an on-disk cache


def _check_ids(ids: Any, n: int, max_length: int, what: str) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.shape != (n, max_length):
        raise ValueError(f"tokenize returned shape {arr.shape} for {n} {what} at max_length={max_length}; "
                         f"expected ({n}, {max_length}) (pad to max_length and truncate)")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"tokenize returned dtype {arr.dtype}; expected integer token ids")
    if arr.size and (arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max):
        raise ValueError("tokenize returned ids outside the int32 range")
    return arr.astype(np.int32, copy=False)


def tokenize_in_chunks(texts: Sequence[str], tokenize: Tokenize, max_length: int, *,
                       chunk_size: int = 4096, what: str = "texts") -> np.ndarray:
    """int32 [len(texts), max_length] by calling `tokenize` on chunks (bounded memory)."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    out = np.empty((len(texts), max_length), dtype=np.int32)
    t0 = time.time()
    for s in range(0, len(texts), chunk_size):
        chunk = list(texts[s:s + chunk_size])
        out[s:s + len(chunk)] = _check_ids(tokenize(chunk, max_length), len(chunk), max_length, what)
    if len(texts) > chunk_size:
        log.info("tokenised %d %s to length %d in %.1fs", len(texts), what, max_length, time.time() - t0)
    return out


def cache_key(fingerprint: str, max_length: int, digest: str) -> str:
    payload = json.dumps({"format": _CACHE_FORMAT, "fingerprint": fingerprint, "max_length": max_length,
                          "texts": digest}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def cached_tokenize(texts: Sequence[str], tokenize: Tokenize, fingerprint: str, max_length: int,
                    cache_dir: str | os.PathLike | None = None, *, name: str = "texts",
                    chunk_size: int = 4096) -> np.ndarray:
    """`tokenize_in_chunks`, read from / written to ``cache_dir`` when given.

    Cache file: ``cache_dir/<name>-<key>.npy`` with key = sha256(fingerprint, max_length, digest of
    the texts). Writes are atomic (temp file + rename), so concurrent processes sharing the
    directory at worst tokenise twice. A file whose shape or dtype is wrong is rebuilt.
    """
    if not fingerprint:
        raise ValueError("cached_tokenize needs a non-empty tokenizer fingerprint")
    if cache_dir is None:
        return tokenize_in_chunks(texts, tokenize, max_length, chunk_size=chunk_size, what=name)
    cache_dir = Path(cache_dir)
    digest = texts_digest(texts)
    path = cache_dir / f"{name}-{cache_key(fingerprint, max_length, digest)}.npy"
    if path.is_file():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.shape == (len(texts), max_length) and arr.dtype == np.int32:
                log.info("token cache hit: %s", path)
                return arr
            log.warning("token cache %s has shape %s dtype %s; rebuilding", path, arr.shape, arr.dtype)
        except (OSError, ValueError) as e:
            log.warning("token cache %s unreadable (%s); rebuilding", path, e)
    arr = tokenize_in_chunks(texts, tokenize, max_length, chunk_size=chunk_size, what=name)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{name}-", suffix=".npy.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    meta = {"fingerprint": fingerprint, "max_length": max_length, "texts_sha256": digest, "n": len(texts)}
    with open(path.with_suffix(".json"), "w") as f:
        json.dump(meta, f, indent=1)
    return arr


# ----------------------------------------------------------------------------------------------
# Resumable batch iterator


def epoch_permutation(num_examples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """int32 [num_examples]: the order of epoch `epoch`, a function of (seed, epoch, N) only.

    Built from the raw 64-bit outputs of PCG64 seeded by SeedSequence([seed, epoch]) (both stable
    across NumPy versions) and argsorted, so it does not depend on Generator.permutation's algorithm.
    """
    if not shuffle:
        return np.arange(num_examples, dtype=np.int32)
    bits = np.random.PCG64(np.random.SeedSequence([seed, epoch]))
    keys = bits.random_raw(num_examples)
    return np.argsort(keys, kind="stable").astype(np.int32)


class BatchIterator:
    """Seeded, epoch-aware iterator over DataIDs; each process gets its slice of the global batch.

    Global batch t of epoch e is ``perm_e[t*B:(t+1)*B]``; process p of P gets the contiguous slice
    ``[p*B/P, (p+1)*B/P)`` of it (the layout `jax.make_array_from_process_local_data` expects for a
    batch sharded over a data axis in process order). The last incomplete batch of an epoch is dropped
    (the step's shapes are static). Iterates forever unless `num_epochs` is set.
    """

    def __init__(self, num_examples: int, global_batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, *, shuffle: bool = True,
                 num_epochs: int | None = None):
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if global_batch_size % process_count:
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by process_count "
                             f"{process_count}")
        if num_examples < global_batch_size:
            raise ValueError(f"num_examples {num_examples} < global_batch_size {global_batch_size}: no batch would "
                             "ever be produced (the last incomplete batch of an epoch is dropped)")
        self.num_examples = num_examples
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.shuffle = shuffle
        self.num_epochs = num_epochs
        self.local_batch_size = global_batch_size // process_count
        self.steps_per_epoch = num_examples // global_batch_size
        self.epoch = 0
        self.position = 0   # index of the next global batch within the epoch
        self._perm_epoch = -1
        self._perm = np.empty(0, np.int32)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = epoch_permutation(self.num_examples, self.seed, epoch, self.shuffle)
            self._perm_epoch = epoch
        return self._perm

    def global_batch(self, epoch: int, position: int) -> np.ndarray:
        """int32 [global_batch_size]: DataIDs of global batch `position` of `epoch`."""
        if not 0 <= position < self.steps_per_epoch:
            raise IndexError(f"position {position} not in [0, {self.steps_per_epoch})")
        perm = self._permutation(epoch)
        return perm[position * self.global_batch_size:(position + 1) * self.global_batch_size]

    @property
    def step(self) -> int:
        """Global batches produced so far."""
        return self.epoch * self.steps_per_epoch + self.position

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> np.ndarray:
        if self.num_epochs is not None and self.epoch >= self.num_epochs:
            raise StopIteration
        ids = self.global_batch(self.epoch, self.position)
        lo = self.process_index * self.local_batch_size
        local = ids[lo:lo + self.local_batch_size].copy()
        self.position += 1
        if self.position == self.steps_per_epoch:
            self.epoch += 1
            self.position = 0
        return local

    def state(self) -> dict[str, Any]:
        """JSON-serialisable position; save it with the checkpoint (e.g. orbax JsonSave)."""
        return {"version": _STATE_VERSION, "epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_examples": self.num_examples, "global_batch_size": self.global_batch_size,
                "drop_remainder": True, "shuffle": self.shuffle}  # drop_remainder: format v1

    def restore(self, state: dict[str, Any]) -> None:
        """Continues from `state`. The global order must be the same (seed, N, batch size, shuffle,
        remainder policy); the process layout may differ (e.g. resuming on more hosts)."""
        if "lookahead" in state:
            raise ValueError("this checkpoint was written with config.train.lookahead_batches="
                             f"{state['lookahead'][0]}; resume it with the same setting, or start a new workdir")
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"iterator state version {state.get('version')!r}; expected {_STATE_VERSION}")
        for key in ("seed", "num_examples", "global_batch_size", "shuffle"):
            if state[key] != getattr(self, key):
                raise ValueError(f"iterator state has {key}={state[key]!r} but this iterator has "
                                 f"{getattr(self, key)!r}; resuming would change the data order")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.steps_per_epoch:
            raise ValueError(f"iterator state epoch {epoch} position {position} out of range "
                             f"(steps_per_epoch {self.steps_per_epoch})")
        self.epoch, self.position = epoch, position


# ----------------------------------------------------------------------------------------------
# Look-ahead neighbour batches: the coming window's pairs, regrouped by nearest neighbours


def neighbour_groups(embeddings: np.ndarray, group_size: int, groups: np.ndarray | None = None,
                     keys: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, dict[str, float]]:
    """Greedy nearest-neighbour grouping of a window: (order [W] int, statistics).

    Anchors are taken in window order; each unassigned anchor takes its ``group_size - 1`` most similar
    unassigned rows (cosine of the L2-normalised ``embeddings`` [W, d]) as its group, and ``order`` lists the
    groups one after another. With ``groups`` [W] a neighbour must share the anchor's group (its language);
    a row that shares any of ``keys`` ([W] hashes, e.g. of the query and the code) with the anchor is never
    its neighbour (a duplicate is masked out of L^B, so it would be no negative). When too few rows are
    allowed (the window's tail, a small language) the group is filled with the nearest rows left regardless
    (counted in ``fallback``). Every row appears exactly once in ``order``.
    """
    w = len(embeddings)
    if group_size < 1 or w % group_size:
        raise ValueError(f"window of {w} rows does not split into groups of {group_size}")
    e = np.asarray(embeddings, np.float32)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    sim = e @ e.T
    free = np.ones(w, bool)
    order, scores, fallback = [], [], 0
    for a in range(w):
        if not free[a]:
            continue
        free[a] = False
        order.append(a)
        need = group_size - 1
        if not need:
            continue
        allowed = free.copy()
        if groups is not None:
            allowed &= groups == groups[a]
        for key in keys:
            allowed &= key != key[a]
        picked = _nearest(sim[a], allowed, need)
        if len(picked) < need:  # not enough allowed rows left: the nearest free ones, whatever they are
            rest = free.copy()
            rest[picked] = False
            more = _nearest(sim[a], rest, need - len(picked))
            fallback += len(more)
            picked = np.concatenate([picked, more])
        free[picked] = False
        order.extend(int(i) for i in picked)
        scores.extend(float(sim[a, i]) for i in picked)
    stats = {"lookahead_score": float(np.mean(scores)) if scores else 0.0,
             "lookahead_fallback": fallback / max(1, w - w // group_size)}
    return np.asarray(order, np.int32), stats


def language_batches(languages: np.ndarray, group_size: int, batch_size: int) -> tuple[np.ndarray, dict[str, float]]:
    """Batches of one language each, from a grouped window: (order [W] int, statistics).

    ``languages`` [W] is the language of each row of a window already laid out in groups of ``group_size``
    (`neighbour_groups`' order; 1: no groups). Groups stay whole: they are sorted by their anchor's (first
    row's) language, stably, languages in order of first appearance, and cut into batches of
    ``batch_size`` rows, so every batch is one language except where a language's rows run out inside a
    batch (at most one such batch per language boundary, counted in ``language_batches_mixed``, the
    fraction of the window's batches with more than one language). The batches are then interleaved,
    each language's batches spread evenly over the window (a stable sort on (rank within its language +
    1/2) / its language's batches), so that no language waits for the others. Deterministic.
    """
    w = len(languages)
    if group_size < 1 or batch_size % group_size or w % batch_size:
        raise ValueError(f"a window of {w} rows in groups of {group_size} does not cut into batches of {batch_size}")
    anchors = np.asarray(languages)[::group_size]
    _, first, inverse = np.unique(anchors, return_index=True, return_inverse=True)
    units = np.argsort(np.argsort(first)[inverse], kind="stable")  # groups, one language after another
    rows = (units[:, None] * group_size + np.arange(group_size)).reshape(-1)
    batches = rows.reshape(-1, batch_size)
    lang = np.asarray(languages)[batches]
    mixed = int(np.sum(np.any(lang != lang[:, :1], axis=1)))
    primary = lang[:, 0]
    rank = np.zeros(len(batches))
    for value in np.unique(primary):
        where = np.flatnonzero(primary == value)
        rank[where] = (np.arange(len(where)) + 0.5) / len(where)
    order = batches[np.argsort(rank, kind="stable")].reshape(-1)
    return order.astype(np.int32), {"language_batches_mixed": mixed / len(batches)}


def _nearest(row: np.ndarray, allowed: np.ndarray, n: int) -> np.ndarray:
    """Indices of the (at most) n largest entries of ``row`` where ``allowed``, most similar first."""
    idx = np.flatnonzero(allowed)
    if len(idx) > n:
        idx = idx[np.argpartition(-row[idx], n - 1)[:n]]
    return idx[np.argsort(-row[idx], kind="stable")]


class LookaheadBatches:
    """A `BatchIterator` whose batches are regrouped, window by window, into nearest-neighbour groups.

    At the start of each window the next ``window_batches`` global batches of the inner iterator (never
    across an epoch boundary) are taken together, their queries embedded by ``embed(global DataIDs) ->
    [W, d]`` (the model being trained, without dropout), and the window's rows regrouped by
    `neighbour_groups`: every batch is ``B / group_size`` groups, each an anchor and its nearest neighbours
    in the window. Every pair is still trained exactly once per epoch, in the same windows; only which
    pairs share a batch changes, so each pair's in-batch negatives include its window's nearest pairs.

    `state()` holds the window (its regrouped DataIDs and how many of its batches were drawn) beside the
    inner iterator's position at the window's start: a restore continues the same window in the same order,
    whatever the parameters are now (exact resume).
    """

    _VERSION = 1

    def __init__(self, inner: BatchIterator, window_batches: int, group_size: int,
                 embed: Callable[[np.ndarray], np.ndarray], groups: np.ndarray | None = None,
                 keys: Sequence[np.ndarray] = (), languages: np.ndarray | None = None):
        if window_batches < 1:
            raise ValueError(f"config.train.lookahead_batches={window_batches} must be >= 1 (0 turns it off)")
        if group_size < 1 or inner.global_batch_size % group_size:
            raise ValueError(f"config.train.lookahead_group={group_size} must divide "
                             f"config.train.global_batch_size={inner.global_batch_size}")
        self.inner, self.window_batches, self.group_size = inner, window_batches, group_size
        self.embed, self.groups, self.keys = embed, groups, tuple(keys)
        self.languages = languages  # [N] per DataID: every batch one language (`language_batches`); None: off
        self.window = np.empty(0, np.int32)  # regrouped global DataIDs of the current window
        self.drawn = 0  # batches of the window drawn so far
        self.start_state = inner.state()  # the inner position at the window's start
        self.stats: dict[str, float] = {}  # of the last window: lookahead_score, lookahead_fallback

    def __getattr__(self, name):  # steps_per_epoch, global_batch_size, ...: the inner iterator's
        return getattr(self.inner, name)

    def __iter__(self) -> "LookaheadBatches":
        return self

    def _fill(self) -> None:
        inner = self.inner
        if inner.num_epochs is not None and inner.epoch >= inner.num_epochs:
            raise StopIteration
        self.start_state = inner.state()
        n = min(self.window_batches, inner.steps_per_epoch - inner.position)
        ids = np.concatenate([inner.global_batch(inner.epoch, inner.position + i) for i in range(n)])
        for _ in range(n):
            next(inner)
        if self.group_size > 1:  # groups of 1 are the window as it is: nothing to embed
            emb = np.asarray(self.embed(ids))
            if emb.shape[0] != len(ids):
                raise ValueError(f"embed returned {emb.shape[0]} rows for a window of {len(ids)} DataIDs")
            order, self.stats = neighbour_groups(
                emb, self.group_size, None if self.groups is None else self.groups[ids], [k[ids] for k in self.keys])
            ids = ids[order]
        else:
            self.stats = {}
        if self.languages is not None:
            order, stats = language_batches(self.languages[ids], self.group_size, self.inner.global_batch_size)
            ids, self.stats = ids[order], {**self.stats, **stats}
        self.window, self.drawn = ids, 0

    def __next__(self) -> np.ndarray:
        b = self.inner.global_batch_size
        if self.drawn * b >= len(self.window):
            self._fill()
        ids = self.window[self.drawn * b:(self.drawn + 1) * b]
        self.drawn += 1
        lo = self.inner.process_index * self.inner.local_batch_size
        return ids[lo:lo + self.inner.local_batch_size].copy()

    def state(self) -> dict[str, Any]:
        # epoch / position: where the next batch's pairs come from in the iterator's order (its window's
        # start plus the batches drawn), as the plain iterator's state says (e.g. for a skipped batch's record).
        if self.drawn * self.inner.global_batch_size < len(self.window):
            epoch, position = self.start_state["epoch"], self.start_state["position"] + self.drawn
        else:
            epoch, position = self.inner.epoch, self.inner.position
        return {"version": self._VERSION, "lookahead": [self.window_batches, self.group_size],
                "language_batches": self.languages is not None,
                "epoch": epoch, "position": position,
                "inner": self.start_state, "after_window": self.inner.state(),
                "window": [int(i) for i in self.window], "drawn": self.drawn}

    def restore(self, state: dict[str, Any]) -> None:
        if "lookahead" not in state:
            raise ValueError("this checkpoint was written without config.train.lookahead_batches; resume it with "
                             "the same setting (0), or start a new workdir")
        if state.get("version") != self._VERSION or list(state["lookahead"]) != [self.window_batches, self.group_size]:
            raise ValueError(f"checkpoint written with look-ahead (window batches, group) = {state['lookahead']}, "
                             f"this run has {[self.window_batches, self.group_size]}: resuming would change "
                             "the data order")
        if state.get("language_batches", False) != (self.languages is not None):
            raise ValueError(f"checkpoint written with config.train.language_batches={state.get('language_batches', False)}, "
                             f"this run has {self.languages is not None}: resuming would change the data order")
        self.inner.restore(state["after_window"])
        self.start_state = state["inner"]
        self.window = np.asarray(state["window"], np.int32)
        self.drawn = int(state["drawn"])
