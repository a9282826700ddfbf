"""kNN search cost: our jitted top-k against numpy (argpartition) and faiss-cpu ``IndexFlatIP``.

Exact maximum-inner-product search of 32 unit-norm queries (d=256) over banks of 8k, 64k and 1M unit-norm
entries, k=10, all float32, same thread count. Implementations:

* ``ours``: ``cocohanere_jax.bank.search`` jitted, as the train step calls it (empty-slot and own-DataID
  masks included; the bank is full so nothing is masked);
* ``ours_topk``: the bare ``jax.lax.top_k(keys @ bank.T, k)`` under jit;
* ``numpy``: ``keys @ bank.T``, ``np.argpartition`` then a sort of the k survivors;
* ``faiss``: ``faiss.IndexFlatIP.search`` with the library's defaults (index built outside the timed
  region; skipped with a note when faiss is not installed). In training the bank changes every step, so
  faiss would also pay for re-adding the changed rows; that is not timed here.
* ``faiss_blas``: the same with ``faiss.cvar.distance_compute_blas_threshold = 1``: faiss's BLAS (sgemm)
  path, which its defaults only take for many more queries than 32.

Results agree on the neighbour sets (checked, ties aside). Median of interleaved rounds.

    python -m benchmarks.search             # writes results/search.json
    python -m benchmarks.search --smoke     # small banks, seconds
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks import common

DEFAULT_SIZES = (8192, 65536, 1048576)
SMOKE_SIZES = (1024, 8192)


def measure(size: int, dim: int, queries: int, k: int, rounds: int, threads: int) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from cocohanere_jax import bank as bank_lib

    rng = np.random.default_rng(size)
    emb = rng.standard_normal((size, dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    keys = rng.standard_normal((queries, dim), dtype=np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)

    bank = bank_lib.Bank(embeddings=jnp.asarray(emb), ids=jnp.arange(size, dtype=jnp.int32) + queries,
                         ptr=jnp.zeros((), jnp.int32))
    anchor_ids = jnp.arange(queries, dtype=jnp.int32)  # not in the bank: nothing masked
    jkeys = jnp.asarray(keys)
    ours_fn = jax.jit(lambda b, q, a: bank_lib.search(b, q, k, anchor_ids=a))
    topk_fn = jax.jit(lambda e, q: jax.lax.top_k(q @ e.T, k))

    def numpy_search():
        scores = keys @ emb.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        part_scores = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-part_scores, axis=1)
        return np.take_along_axis(part, order, axis=1)

    fns = {
        "ours": lambda: ours_fn(bank, jkeys, anchor_ids),
        "ours_topk": lambda: topk_fn(bank.embeddings, jkeys),
        "numpy": numpy_search,
    }
    note = None
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
        index = faiss.IndexFlatIP(dim)
        index.add(emb)
        fns["faiss"] = lambda: index.search(keys, k)

        def faiss_blas():
            # faiss switches to its BLAS path only from distance_compute_blas_threshold queries on.
            default = faiss.cvar.distance_compute_blas_threshold
            faiss.cvar.distance_compute_blas_threshold = 1
            try:
                return index.search(keys, k)
            finally:
                faiss.cvar.distance_compute_blas_threshold = default

        fns["faiss_blas"] = faiss_blas
    except ImportError:
        note = "faiss not installed (pip install -r benchmarks/requirements.txt): faiss column skipped"
        print(note)
    times = common.interleaved(fns, rounds=rounds, warmup=2)

    # The neighbour sets agree (random unit vectors: ties have probability ~0).
    expected = numpy_search()
    got = np.asarray(ours_fn(bank, jkeys, anchor_ids).slots)
    agree = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(expected, got)]))
    row: dict[str, Any] = {"bank": size, "dim": dim, "queries": queries, "k": k, "ours_agreement_with_numpy": agree}
    if "faiss" in fns:
        _, faiss_ids = fns["faiss"]()
        row["faiss_agreement_with_numpy"] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(expected, faiss_ids)]))
    for name, ts in times.items():
        row[f"{name}_ms"] = 1e3 * common.summary(ts)["median_s"]
        row[f"{name}_min_ms"] = 1e3 * min(ts)
        row[f"{name}_times_s"] = ts
    if "faiss" in times:
        row["ratio_faiss_over_ours"] = common.paired_ratio(times["ours"], times["faiss"])
        row["ratio_faiss_blas_over_ours"] = common.paired_ratio(times["ours"], times["faiss_blas"])
    row["ratio_numpy_over_ours"] = common.paired_ratio(times["ours"], times["numpy"])
    if note:
        row["note"] = note
    return row


COLUMNS = ["bank", "ours_ms", "ours_topk_ms", "numpy_ms", "faiss_ms", "faiss_blas_ms", "ratio_faiss_over_ours",
           "ratio_faiss_blas_over_ours", "ratio_numpy_over_ours", "ours_agreement_with_numpy"]


def main(argv=None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="small banks (CI)")
    parser.add_argument("--sizes", default=None, help="comma-separated bank sizes")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    threads = common.pin_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (SMOKE_SIZES if args.smoke else DEFAULT_SIZES)
    rounds = args.rounds or (3 if args.smoke else 15)
    machine = common.machine_info(threads)
    rows = []
    for size in sizes:
        rows.append(measure(size, args.dim, args.queries, args.k, rounds, threads))
        common.print_table(rows[-1:], COLUMNS)
    common.print_table(rows, COLUMNS, title="kNN search (median ms; ratio = other time / our time, > 1 = ours faster)")
    payload = {"benchmark": "search", "smoke": args.smoke, "machine": machine, "rounds": rounds, "results": rows}
    common.write_json(args.out or common.default_out("search", args.smoke), payload)
    return payload


if __name__ == "__main__":
    main()
