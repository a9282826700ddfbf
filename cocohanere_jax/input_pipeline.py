"""Host-side input pipeline: tokenised arrays, the token table, a resumable batch iterator.

* `cached_tokenize` turns texts into a fixed-length int32 array [n, L] through the encoder's
  ``tokenize(texts, max_length) -> np.int32 [n, max_length]`` (ids padded with the pad id, truncated)
  and caches it on disk. The cache key is the tokenizer fingerprint, the length and a digest of the
  texts, so a different tokenizer, length or dataset never reads a stale file.
* `TokenTable` holds ``query_ids`` [N, Lq] and ``code_ids`` [N, Lc] (int32) and ``code_hash`` /
  ``query_hash`` [N] (int32 hash of the whitespace-normalised text, for masking same-text
  duplicates among hard negatives). Row i is DataID i: the memory bank stores DataIDs and the step
  re-encodes ``table.code_ids[ids]`` for the neighbours it retrieves.
* `BatchIterator` yields the DataIDs of this process's slice of each global batch. Epoch e is a
  permutation drawn from ``PCG64(SeedSequence([seed, e]))`` raw outputs (argsort), which depends
  only on (seed, epoch, N): stopping after step n, saving `state()` and `restore()`-ing it into a
  fresh iterator gives exactly the batches an uninterrupted run would, with any process count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
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


# ----------------------------------------------------------------------------------------------
# Hashes


def _normalize(text: str) -> str:
    return " ".join(text.split())


def text_hash(texts: Sequence[str]) -> np.ndarray:
    """int32 [n]: a stable 32-bit hash (blake2b) of each whitespace-normalised text.

    Equal texts up to whitespace get equal hashes. Distinct texts collide with probability about
    n^2 / 2^33 per dataset (a handful in 250k rows); a collision only masks one extra negative.
    """
    out = np.empty(len(texts), dtype=np.int32)
    for i, t in enumerate(texts):
        d = hashlib.blake2b(_normalize(t).encode("utf-8"), digest_size=4).digest()
        out[i] = int.from_bytes(d, "little", signed=True)
    return out


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
# Token table


@dataclasses.dataclass(frozen=True)
class TokenTable:
    """Token rows of the training set; row i is DataID i."""

    query_ids: np.ndarray   # int32 [N, Lq]
    code_ids: np.ndarray    # int32 [N, Lc]
    code_hash: np.ndarray   # int32 [N], hash of whitespace-normalised code
    query_hash: np.ndarray  # int32 [N], hash of whitespace-normalised query
    fingerprint: str

    def __post_init__(self):
        n = self.query_ids.shape[0]
        for name in ("query_ids", "code_ids", "code_hash", "query_hash"):
            a = getattr(self, name)
            if a.dtype != np.int32 or a.shape[0] != n:
                raise ValueError(f"TokenTable.{name}: dtype {a.dtype} rows {a.shape[0]}; need int32 with {n} rows")
        if self.query_ids.ndim != 2 or self.code_ids.ndim != 2:
            raise ValueError("TokenTable: query_ids and code_ids must be 2-D")

    def __len__(self) -> int:
        return self.query_ids.shape[0]

    @property
    def query_length(self) -> int:
        return self.query_ids.shape[1]

    @property
    def code_length(self) -> int:
        return self.code_ids.shape[1]

    def _check(self, data_ids) -> np.ndarray:
        ids = np.asarray(data_ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"DataIDs must be integers, got {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"DataIDs outside [0, {len(self)}): min {ids.min()}, max {ids.max()}")
        return ids

    def rows(self, data_ids) -> tuple[np.ndarray, np.ndarray]:
        """(query_ids[ids], code_ids[ids]) for valid DataIDs (negative ids raise: mask them first)."""
        ids = self._check(data_ids)
        return self.query_ids[ids], self.code_ids[ids]

    def codes(self, data_ids) -> np.ndarray:
        return self.code_ids[self._check(data_ids)]

    def queries(self, data_ids) -> np.ndarray:
        return self.query_ids[self._check(data_ids)]


def build_token_table(queries: Sequence[str], codes: Sequence[str], tokenize: Tokenize, fingerprint: str,
                      query_length: int = 128, code_length: int = 256,
                      cache_dir: str | os.PathLike | None = None, *, chunk_size: int = 4096) -> TokenTable:
    """Tokenises the training set (row i = DataID i) through `tokenize`, cached in `cache_dir`."""
    if len(queries) != len(codes):
        raise ValueError(f"{len(queries)} queries but {len(codes)} codes")
    if not queries:
        raise ValueError("build_token_table: empty training set")
    q = cached_tokenize(queries, tokenize, fingerprint, query_length, cache_dir, name="query", chunk_size=chunk_size)
    c = cached_tokenize(codes, tokenize, fingerprint, code_length, cache_dir, name="code", chunk_size=chunk_size)
    return TokenTable(q, c, text_hash(codes), text_hash(queries), fingerprint)


def token_table_from_pairs(pairs, tokenize: Tokenize, fingerprint: str, query_length: int = 128,
                           code_length: int = 256, cache_dir: str | os.PathLike | None = None) -> TokenTable:
    """`build_token_table` for a `cocohanere_data.records.Pairs` (whose data_id is the row index)."""
    return build_token_table(pairs.queries, pairs.codes, tokenize, fingerprint, query_length, code_length, cache_dir)


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
    batch sharded over a data axis in process order). With ``drop_remainder=False`` the last batch
    of an epoch is padded to B with -1 (mask those rows). Iterates forever unless `num_epochs` is set.
    """

    def __init__(self, num_examples: int, global_batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, drop_remainder: bool = True, *, shuffle: bool = True,
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
        if drop_remainder and num_examples < global_batch_size:
            raise ValueError(f"num_examples {num_examples} < global_batch_size {global_batch_size} with "
                             "drop_remainder=True: no batch would ever be produced")
        self.num_examples = num_examples
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.drop_remainder = drop_remainder
        self.shuffle = shuffle
        self.num_epochs = num_epochs
        self.local_batch_size = global_batch_size // process_count
        self.steps_per_epoch = (num_examples // global_batch_size if drop_remainder
                                else math.ceil(num_examples / global_batch_size))
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
        """int32 [global_batch_size]: DataIDs of global batch `position` of `epoch` (-1 = padding)."""
        if not 0 <= position < self.steps_per_epoch:
            raise IndexError(f"position {position} not in [0, {self.steps_per_epoch})")
        perm = self._permutation(epoch)
        ids = perm[position * self.global_batch_size:(position + 1) * self.global_batch_size]
        if ids.shape[0] < self.global_batch_size:
            ids = np.concatenate([ids, np.full(self.global_batch_size - ids.shape[0], -1, np.int32)])
        return ids

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
                "drop_remainder": self.drop_remainder, "shuffle": self.shuffle}

    def restore(self, state: dict[str, Any]) -> None:
        """Continues from `state`. The global order must be the same (seed, N, batch size, shuffle,
        remainder policy); the process layout may differ (e.g. resuming on more hosts)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"iterator state version {state.get('version')!r}; expected {_STATE_VERSION}")
        for key in ("seed", "num_examples", "global_batch_size", "drop_remainder", "shuffle"):
            if state[key] != getattr(self, key):
                raise ValueError(f"iterator state has {key}={state[key]!r} but this iterator has "
                                 f"{getattr(self, key)!r}; resuming would change the data order")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.steps_per_epoch:
            raise ValueError(f"iterator state epoch {epoch} position {position} out of range "
                             f"(steps_per_epoch {self.steps_per_epoch})")
        self.epoch, self.position = epoch, position


def clear_token_cache(cache_dir: str | os.PathLike) -> None:
    """Deletes a token cache directory."""
    shutil.rmtree(cache_dir, ignore_errors=True)
