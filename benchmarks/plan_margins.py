"""How tight should a length plan be? Work, miss rate and expected work per margin, on real lengths.

A length plan (`reencode.plan_lengths`) sizes each group for the pool's mean count of long rows plus
``margin`` standard deviations; a pool with more long rows than that runs the fallback (exact, slower). This
prints, for pools of the train step at k 10, the plan at each margin of `reencode.PLAN_MARGINS`, its
encoder work and the share of random pools it misses (both relative to the padded pool), and the expected
work counting a miss at the fallback's cost (``--fallback``), which `reencode.choose_plan` minimises
(``StepConfig.length_plan_margin=None``). Lengths: the standard-library corpus under the MiniLM tokenizer.

    python -m benchmarks.plan_margins --pools 20,80 --out benchmarks/results/plan_margins.json

``--neighbours``: the step's negatives pool is not a random draw. Its codes are the k nearest codes of the
batch's queries and its queries the k nearest queries of the batch's codes (bi-kNN), and alike code tends
to be alike in length. So each plan is also checked against real neighbour pools: every pair embedded by
the zero-shot all-MiniLM-L6-v2 (the real weights), the bank = every other pair, ``--draws`` random batches
of pool / k anchors; printed beside the random pools' miss rate, with how much more the count of long rows
varies in neighbour pools than in random ones (the variance ratio at each of the plan's boundaries).

    python -m benchmarks.plan_margins --pools 20,80 --neighbours --k 10 --out benchmarks/results/plan_neighbours.json

``--cluster k --correlation rho`` makes the plans as the step does for its negatives pools
(`StepConfig.length_plan_correlation`); ``--table FILE ...`` prints one table of several such runs: per
pool size, each run's plan at 3 standard deviations and at the margin chosen per pool, the miss rate the
plan expects and the one measured on neighbour pools, and the work expected on those pools (a pool that
breaks its plan counted at its fallback's work: ``--fallback``, the bucketed chunks by default, as the step
runs them since 2026-12-04, or the padded pool, 4/3 of its forward, as before).
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks import common


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", default="20,80", help="codes (= queries) per negatives pool, comma-separated: "
                        "batch x k on one device (2 x 10, 8 x 10)")
    parser.add_argument("--lq", type=int, default=128)
    parser.add_argument("--lc", type=int, default=256)
    parser.add_argument("--buckets", type=int, default=4, help="StepConfig.length_buckets (the plan's group count)")
    parser.add_argument("--neighbours", action="store_true", help="also check each plan on real kNN pools")
    parser.add_argument("--k", type=int, default=10, help="neighbours per anchor (--neighbours)")
    parser.add_argument("--draws", type=int, default=2048, help="batches drawn (--neighbours)")
    parser.add_argument("--cluster", type=int, default=1,
                        help="plan each pool as runs of this many rows of one length (reencode.plan_lengths' "
                             "cluster; the step passes k for its negatives pools), 1 = independent rows")
    parser.add_argument("--correlation", type=float, default=1.0,
                        help="length correlation within a cluster (StepConfig.length_plan_correlation)")
    parser.add_argument("--fallback", default="chunks", choices=("chunks", "padded"),
                        help="what a pool that breaks its plan runs (its work counts in the expected work): the "
                             "bucketed chunks of 8 rows, as the step does, or padded (the step before 2026-12-04)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from cocohanere_jax import reencode

    tok = AutoTokenizer.from_pretrained(common.minilm_folder())
    pairs = common.stdlib_pairs()
    q = common.token_rows(tok, [p[0] for p in pairs], args.lq)
    c = common.token_rows(tok, [p[1] for p in pairs], args.lc)
    stats = reencode.LengthStats.from_lengths((q != tok.pad_token_id).sum(1), (c != tok.pad_token_id).sum(1))
    groups = len([b for b in reencode.bucket_lengths((args.lq, args.lc), args.buckets) if b < args.lc]) + 1
    rows = []
    neighbours = _neighbour_pools(q, c, tok.pad_token_id, args.k) if args.neighbours else None
    print(f"{len(pairs)} stdlib pairs; lengths {args.lq}/{args.lc}; plans of at most {groups} groups")
    extra = " neighbour pools missed | variance ratio at the boundaries |" if neighbours else ""
    print("| pool | margin | plan: rows x length | work / padded | pools missed | expected work / padded |" + extra)
    print("|---|---:|---|---:|---:|---:|" + ("---:|---|" if neighbours else ""))
    for n in (int(x) for x in args.pools.split(",")):
        spec = [(n, "code", args.lc, args.cluster, args.correlation), (n, "query", args.lq, args.cluster, args.correlation)]
        padded = 2 * n * float(reencode._row_cost(args.lc))  # the pool padded to its width
        lens = reencode.bucket_lengths((args.lq, args.lc), args.buckets)
        # The fallback's work as `encode_pool` counts it (the chunks' second forward: 4/3), or the padded pool's.
        fallback = (reencode._bucketed_cost(spec, stats, lens, 8) if args.fallback == "chunks" else padded) * 4 / 3
        chosen, _ = reencode.choose_plan(spec, stats, margin=None, max_groups=groups, fallback=fallback)
        for m in reencode.PLAN_MARGINS:
            plan, expected = reencode.choose_plan(spec, stats, margin=m, max_groups=groups, fallback=fallback)
            miss = reencode.plan_miss_rate(plan, spec, stats)
            row = {"codes": n, "queries": n, "margin": m, "lengths": plan.lengths, "sizes": plan.sizes,
                   "work": plan.cost() / padded, "miss_rate": miss, "expected_work": expected / padded,
                   "fallback_work": fallback / padded, "chosen": plan == chosen}
            cells = ""
            if neighbours:
                real = neighbours(n, args.draws)
                random = reencode._sample_pools([s[:3] for s in spec], stats, args.draws)  # independent rows
                row["neighbour_miss_rate"] = float(np.mean(reencode.plan_breaks(plan, real)))
                # Var(rows longer than t) over neighbour pools / over random pools, at each boundary.
                row["variance_ratio"] = [
                    float(np.var((real > t).sum(1)) / max(np.var((random > t).sum(1)), 1e-12))
                    for t in plan.lengths[1:]]
                cells = (f" {row['neighbour_miss_rate']:.2%} | "
                         + ", ".join(f"{v:.1f}" for v in row["variance_ratio"]) + " |")
            rows.append(row)
            layout = ", ".join(f"{s}x{length}" for length, s in zip(plan.lengths, plan.sizes))
            print(f"| {n} codes + {n} queries | {m}{' (chosen)' if row['chosen'] else ''} | {layout} | "
                  f"{row['work']:.3f} | {miss:.2%} | {row['expected_work']:.3f} |" + cells, flush=True)
    payload = {"benchmark": "plan_margins", "machine": common.machine_info(1), "pairs": len(pairs),
               "args": vars(args), "rows": rows}
    if args.out:
        common.write_json(args.out, payload)
    return payload


def summary(paths: list[str]) -> str:
    """The markdown table of ``--table``: several ``--neighbours`` runs side by side."""
    import json

    lines = ["| pool | plan made for | margin | plan's work / padded | misses expected | misses on neighbour pools "
             "| work expected on neighbour pools |", "|---|---|---:|---:|---:|---:|---:|"]
    runs = [json.load(open(p)) for p in paths]
    for codes in sorted({r["codes"] for run in runs for r in run["rows"]}):
        for run in runs:
            a = run.get("args", {})
            made = ("independent rows" if a.get("cluster", 1) == 1
                    else f"runs of {a['cluster']}, correlation {a.get('correlation', 1.0):g}")
            for r in run["rows"]:
                if r["codes"] != codes or not (r["chosen"] or r["margin"] == 3.0):
                    continue
                miss, fallback = r["neighbour_miss_rate"], r.get("fallback_work", 4 / 3)
                real = (1 - miss) * r["work"] + miss * fallback
                margin = f"{r['margin']:g}" + (" (chosen)" if r["chosen"] else "")
                lines.append(f"| {codes} codes + {codes} queries | {made} | {margin} | {r['work']:.3f} | "
                             f"{r['miss_rate']:.1%} | {r['neighbour_miss_rate']:.1%} | {real:.3f} |")
    return "\n".join(lines)


def _neighbour_pools(q, c, pad_id: int, k: int):
    """A function (codes per pool, draws) -> [draws, 2 * codes] real lengths of the step's negatives pools
    (codes: the k nearest codes of each anchor's query, then queries: the k nearest queries of each
    anchor's code, own pair excluded), from zero-shot MiniLM embeddings of every pair."""
    import cocohanere_jax

    enc = cocohanere_jax.load_encoder(common.minilm_folder())
    to_enc = lambda ids: np.where(ids == pad_id, enc.pad_id, ids).astype(np.int32)  # noqa: E731
    eq, ec = enc.embed_ids(to_enc(q)), enc.embed_ids(to_enc(c))
    scores = eq @ ec.T  # [query i, code j]
    np.fill_diagonal(scores, -np.inf)
    code_of_query = np.argsort(-scores, axis=1)[:, :k]
    query_of_code = np.argsort(-scores.T, axis=1)[:, :k]
    lq, lc = (q != pad_id).sum(1), (c != pad_id).sum(1)
    same = np.corrcoef(lc, lc[code_of_query].mean(1))[0, 1]
    print(f"length correlation of a code with the mean of its query's {k} nearest codes: {same:.2f}")

    def pools(n: int, draws: int) -> np.ndarray:
        if n % k:
            raise SystemExit(f"plan_margins: --pools {n} is not a multiple of --k {k}")
        rng = np.random.default_rng(0)
        out = []
        for _ in range(draws):
            anchors = rng.choice(len(q), n // k, replace=False)
            out.append(np.concatenate([lc[code_of_query[anchors]].ravel(), lq[query_of_code[anchors]].ravel()]))
        return np.stack(out)

    return pools


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--table"]:
        print(summary(sys.argv[2:]))
    else:
        main()
