"""Seconds for blocked MAP@R at POJ-104 test scale (12,000 programs, 24 labels x 500, d = 768) on random
clustered embeddings, and agreement with the full-matrix formula of CodeXGLUE's run.py on a subset.

    python -m experiments.map_at_r_scale [--n 12000 --labels 24 --dim 768]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def reference(emb: np.ndarray, labels: np.ndarray) -> float:
    """run.py's evaluation: full score matrix, self at -1e6, AP over the top R of each query."""
    s = emb @ emb.T
    np.fill_diagonal(s, -1e6)
    aps = []
    for i in range(len(labels)):
        r = int(np.sum(labels == labels[i])) - 1
        rel = labels[np.argsort(-s[i], kind="stable")[:r]] == labels[i]
        aps.append(np.sum(np.cumsum(rel) / np.arange(1, r + 1) * rel) / r)
    return float(np.mean(aps))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=12000)
    ap.add_argument("--labels", type=int, default=24)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--check", type=int, default=2000, help="rows of the subset checked against the reference")
    args = ap.parse_args(argv)
    from cocohanere_jax import clone_metrics

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(args.labels), args.n // args.labels)
    emb = rng.normal(size=(args.labels, args.dim))[labels] * 0.15 + rng.normal(size=(labels.size, args.dim))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    t0 = time.perf_counter()
    full = clone_metrics.map_at_r(emb, labels)
    seconds = time.perf_counter() - t0
    sub = rng.choice(labels.size, args.check, replace=False)
    got = clone_metrics.map_at_r(emb[sub], labels[sub])["map_at_r"]
    ref = reference(emb[sub], labels[sub])
    out = {"n": int(labels.size), "labels": args.labels, "dim": args.dim, "map_at_r": full["map_at_r"],
           "max_r": full["max_r"], "seconds": round(seconds, 1), "subset": args.check,
           "subset_blocked": got, "subset_reference": ref, "abs_diff": abs(got - ref)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
