"""One table from several `benchmarks.encoder_grad` runs of the same call (e.g. ``--dropout on|hidden|off``).

    python -m benchmarks.encoder_grad_table FILE [FILE ...]
    python -m benchmarks.encoder_grad_table --into benchmarks/RESULTS.md:MARKER FILE [FILE ...]

A column per run (headed by its ``--dropout``, with its result file below the table), a row per function
timed in any of them. A cell: the median seconds, the time of PyTorch padded to the cap divided by it in the
same run (``vs_torch_cap``, paired per round), and XLA's compiled scratch memory (``compiled_temp_gb``).
"""

from __future__ import annotations

import json
import os
import sys

from benchmarks.lengths_table import write_into

DROPOUT = {"on": "dropout on", "hidden": "attention dropout off, the rest on", "off": "no dropout"}


def table(paths: list[str]) -> str:
    runs = [json.load(open(p)) for p in paths]
    functions: list[str] = []
    for r in runs:
        functions += [row["function"] for row in r["rows"] if row["function"] not in functions]
    head = [DROPOUT.get(r["args"].get("dropout", "on"), r["args"].get("dropout")) for r in runs]
    lines = ["| function | " + " | ".join(head) + " |", "|---|" + "---:|" * len(runs)]
    for f in functions:
        cells = []
        for r in runs:
            row = next((x for x in r["rows"] if x["function"] == f), None)
            if row is None:
                cells.append("—")
                continue
            cell = f"{row['median_s']:.3g} s"
            if row.get("vs_torch_cap") is not None:
                cell += f", {row['vs_torch_cap']:.2f}x"
            if row.get("compiled_temp_gb") is not None:
                cell += f", {row['compiled_temp_gb']:.1f} GB"
            cells.append(cell)
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
    lines.append("")
    rounds = sorted({r["args"].get("rounds") for r in runs}, key=str)
    lines.append(f"Cells: median seconds ({'/'.join(map(str, rounds))} rounds), PyTorch at the cap's time / ours "
                 "(paired per round), "
                 "XLA's compiled scratch memory. " + "; ".join(
                     f"{h}: `{os.path.relpath(p)}` ({r['title'].split(';')[0]}; load {r['load_before'][0]}"
                     f" -> {r['load_after'][0]})" for h, r, p in zip(head, runs, paths)))
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    into = None
    if argv[:1] == ["--into"]:
        into, argv = argv[1], argv[2:]
    if not argv:
        raise SystemExit(__doc__)
    text = table(argv)
    if into:
        doc, _, name = into.rpartition(":")
        write_into(doc, name, text)
    else:
        print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
