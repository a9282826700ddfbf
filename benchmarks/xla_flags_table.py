"""The table of `benchmarks/run_xla_flags.sh`: one encode call under each XLA:CPU backend option.

    python -m benchmarks.xla_flags_table                       # benchmarks/results/xla_flags_*.json, run order
    python -m benchmarks.xla_flags_table FILE [FILE ...]

Each file is one `benchmarks.encoder_grad` run in its own process; its ``machine.xla_flags`` names the
options. The last column divides the run of the default options that ran first by each run's time (the
processes ran one after another, so these are ratios of medians, not paired rounds).
"""

from __future__ import annotations

import glob
import json
import os
import sys

FUNCTIONS = ("ours padded", "ours length-aware")


def table(paths: list[str]) -> str:
    runs = [json.load(open(p)) for p in paths]
    runs.sort(key=lambda r: r["machine"]["date"])
    medians = [{row["function"]: row["median_s"] for row in r["rows"]} for r in runs]
    base = next((m for r, m in zip(runs, medians) if not r["machine"].get("xla_flags")), None)
    lines = ["| XLA_FLAGS | " + " | ".join(f"{f} median s (rounds)" for f in FUNCTIONS)
             + " | 2048^3 matmul GFLOP/s | load start -> end | length-aware: default / this |",
             "|---|" + "---:|" * len(FUNCTIONS) + "---:|---|---:|"]
    for r, m in zip(runs, medians):
        cells = []
        for f in FUNCTIONS:
            row = next((x for x in r["rows"] if x["function"] == f), None)
            cells.append(f"{row['median_s']:.2f} ({', '.join(f'{t:.1f}' for t in row['rounds_s'])})" if row else "—")
        speed = (f"{base['ours length-aware'] / m['ours length-aware']:.2f}x"
                 if base and "ours length-aware" in m else "—")
        flags = r["machine"].get("xla_flags") or "(default)"
        lines.append(f"| `{flags}` | " + " | ".join(cells) + f" | {r['matmul_peak']['xla_gflops']:.0f} | "
                     f"{r['load_before'][0]} -> {r['load_after'][0]} | {speed} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    paths = argv or sorted(glob.glob(os.path.join(here, "xla_flags_*.json")))
    if not paths:
        raise SystemExit("xla_flags_table: no results; run `bash benchmarks/run_xla_flags.sh` first")
    print(table(paths))


if __name__ == "__main__":
    main(sys.argv[1:])
