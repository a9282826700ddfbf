"""How tight should a length plan be? Work, miss rate and expected work per margin, on real lengths.

A length plan (`reencode.plan_lengths`) sizes each group for the pool's mean count of long rows plus
``margin`` standard deviations; a pool with more long rows than that runs padded (exact, slower). This
prints, for pools of the train step at k 10, the plan at each margin of `reencode.PLAN_MARGINS`, its
encoder work and the share of random pools it misses (both relative to the padded pool), and the expected
work counting a miss at the padded fallback's cost, which `reencode.choose_plan` minimises
(``StepConfig.length_plan_margin=None``). Lengths: the standard-library corpus under the MiniLM tokenizer.

    python -m benchmarks.plan_margins --pools 20,80 --out benchmarks/results/plan_margins.json
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
    print(f"{len(pairs)} stdlib pairs; lengths {args.lq}/{args.lc}; plans of at most {groups} groups")
    print("| pool | margin | plan: rows x length | work / padded | pools missed | expected work / padded |")
    print("|---|---:|---|---:|---:|---:|")
    for n in (int(x) for x in args.pools.split(",")):
        spec = [(n, "code", args.lc), (n, "query", args.lq)]
        padded = 2 * n * float(reencode._row_cost(args.lc))  # the pool padded to its width, as the fallback runs
        chosen, _ = reencode.choose_plan(spec, stats, margin=None, max_groups=groups)
        for m in reencode.PLAN_MARGINS:
            plan, expected = reencode.choose_plan(spec, stats, margin=m, max_groups=groups)
            miss = reencode.plan_miss_rate(plan, spec, stats)
            row = {"codes": n, "queries": n, "margin": m, "lengths": plan.lengths, "sizes": plan.sizes,
                   "work": plan.cost() / padded, "miss_rate": miss, "expected_work": expected / padded,
                   "chosen": plan == chosen}
            rows.append(row)
            layout = ", ".join(f"{s}x{length}" for length, s in zip(plan.lengths, plan.sizes))
            print(f"| {n} codes + {n} queries | {m}{' (chosen)' if row['chosen'] else ''} | {layout} | "
                  f"{row['work']:.3f} | {miss:.2%} | {row['expected_work']:.3f} |")
    payload = {"benchmark": "plan_margins", "machine": common.machine_info(1), "pairs": len(pairs), "rows": rows}
    if args.out:
        common.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
