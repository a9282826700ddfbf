"""The table of `benchmarks/run_xla_flags.sh`: one encode call under each XLA:CPU backend option.

    python -m benchmarks.xla_flags_table                       # benchmarks/results/xla_flags_*.json, run order
    python -m benchmarks.xla_flags_table FILE [FILE ...]

Each file is one `benchmarks.encoder_grad` run (`run_xla_flags.sh`) or one `benchmarks.train_step` run
(`run_xla_flags_step.sh`: a column per step it timed) in its own process; its ``machine.xla_flags`` names the
options. The last column divides the run of the default options that ran first by each run's time, for
the last column's function or step (the processes ran one after another, so these are ratios of medians,
not paired rounds).
"""

from __future__ import annotations

import glob
import json
import os
import sys

FUNCTIONS = ("ours padded", "ours length-aware")


def timings(run: dict) -> dict[str, tuple[float, list[float]]]:
    """{function or step: (median s, per-round s)} of one run's file."""
    if run.get("benchmark") == "train_step":
        r = run["results"][0]
        return {key[: -len("_step_s")]: (r[key], r[key[: -len("_step_s")] + "_times_s"])
                for key in r if key.startswith("ours_") and key.endswith("_step_s") and key != "ours_step_s"}
    return {row["function"]: (row["median_s"], row["rounds_s"]) for row in run["rows"]}


def table(paths: list[str]) -> str:
    runs = [json.load(open(p)) for p in paths]
    runs.sort(key=lambda r: r["machine"]["date"])
    times = [timings(r) for r in runs]
    names = list(FUNCTIONS) if all(r.get("benchmark") != "train_step" for r in runs) else list(
        dict.fromkeys(n for t in times for n in t))
    last = names[-1]
    base = next((t for r, t in zip(runs, times) if not r["machine"].get("xla_flags")), None)
    lines = ["| XLA_FLAGS | " + " | ".join(f"{f} median s (rounds)" for f in names)
             + f" | 2048^3 matmul GFLOP/s | load start -> end | {last.removeprefix('ours ')}: default / this |",
             "|---|" + "---:|" * len(names) + "---:|---|---:|"]
    for r, t in zip(runs, times):
        cells = [f"{t[f][0]:.2f} ({', '.join(f'{x:.1f}' for x in t[f][1])})" if f in t else "—" for f in names]
        speed = f"{base[last][0] / t[last][0]:.2f}x" if base and last in base and last in t else "—"
        flags = r["machine"].get("xla_flags") or "(default)"
        load = ((r["load_before"][0], r["load_after"][0]) if "load_before" in r else
                (r["machine"]["load_average_start"][0], r["machine"]["load_average_end"][0]))
        lines.append(f"| `{flags}` | " + " | ".join(cells) + f" | {r['matmul_peak']['xla_gflops']:.0f} | "
                     f"{load[0]} -> {load[1]} | {speed} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    paths = argv or sorted(glob.glob(os.path.join(here, "xla_flags_*.json")))
    if not paths:
        raise SystemExit("xla_flags_table: no results; run `bash benchmarks/run_xla_flags.sh` first")
    print(table(paths))


if __name__ == "__main__":
    main(sys.argv[1:])
