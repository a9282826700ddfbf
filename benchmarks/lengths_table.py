"""Markdown table of a `train_step --length_buckets ... --reference_padding ...` result file (issue 16).

    python -m benchmarks.lengths_table benchmarks/results/train_step_lengths_*.json
    python -m benchmarks.lengths_table --into benchmarks/RESULTS.md:lengths-k10 FILE [FILE ...]
    python -m benchmarks.lengths_table --plot benchmarks/lengths_k10.png FILE [FILE ...]

``--into DOC:NAME`` writes the tables between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in DOC;
``--plot PNG`` draws every step's real-token MFU per configuration (a step that did not run is marked).
"""

from __future__ import annotations

import json
import sys

from benchmarks import common

REFERENCES = [("reference", "reference (cap)"), ("reference_longest", "reference (longest)")]


def labels(row: dict) -> list[tuple[str, str]]:
    """(key, name) of every step in a result row: ours length-aware (scanned or not), ours padded, the references."""
    ours = sorted({k.removesuffix("_step_s").removesuffix("_failed") for k in row
                   if k.startswith("ours_b") and k.endswith(("_step_s", "_failed"))},
                  key=lambda k: ("_scan" in k, "_plan" in k, "_iid" in k, "_pack" in k, k))
    out = []
    for key in ours:
        nb, *options = key[len("ours_b"):].split("_")
        notes = [f"chunks of {o[1:]} row{'s' if o[1:] != '1' else ''}" if o[:1] == "c" and o[1:].isdigit() else
                 {"scan": "layers scanned", "plan": "length plans", "iid": "planned for independent rows",
                  "pack": "packed rows", "keep": "kept activations"}[o]
                 for o in options]
        out.append((key, f"ours length-aware ({', '.join([nb] + notes)})"))
    # "ours_*" without "ours_compile_s" is measure()'s alias of the first step, not a padded step.
    padded = [("ours", "ours padded")] if "ours_compile_s" in row or "ours_failed" in row else []
    scanned = [("ours_scan", "ours padded (layers scanned)")] if any(
        k in row for k in ("ours_scan_step_s", "ours_scan_failed")) else []
    return out + scanned + padded + REFERENCES


def gemm_speeds(payload: dict) -> str:
    """The float32 (or --dtype) matmul speed of XLA and of PyTorch measured in the run's process(es): the
    ratios between implementations depend on it as much as on the step (it differs from host to host)."""
    peaks = payload.get("matmul_peak")
    peaks = [p for p in (peaks if isinstance(peaks, list) else [peaks]) if p]
    if not peaks:
        return ""
    def spread(key: str) -> str:
        values = [p[key] for p in peaks if p.get(key)]
        if not values:
            return "not measured"
        low, high = f"{min(values):.0f}", f"{max(values):.0f}"
        return low if low == high else f"{low}-{high}"

    return (f"; {peaks[0].get('dtype', 'float32')} {peaks[0].get('size')}^3 matmul: XLA {spread('xla_gflops')}, "
            f"PyTorch {spread('torch_gflops')} GFLOP/s")


def seconds(value: float, decimals: int) -> str:
    """``decimals`` decimals, or 2 significant digits (trailing zeros kept) below 1 s: a GPU step's 0.084 s
    is not "0.1", nor 0.698 s "0.7"."""
    return f"{value:.{decimals}f}" if value >= 1 else f"{value:#.2g}"


def table(path: str) -> str:
    payload = json.load(open(path))
    lines = []
    for row in payload["results"]:
        m = payload["machine"]
        model = {"minilm": "MiniLM", "minilm-shape": "MiniLM shape", "codet5p-110m": "CodeT5+ 110M shape"}.get(row["model"], row["model"])
        isolated = row.get("isolated", False)
        present = [(key, name) for key, name in labels(row) if f"{key}_step_s" in row]
        order = ("each step in its own process, twice, in mirrored order A B C C B A (`--isolate --isolate_order "
                 "mirror`: a drifting machine weighs on every step alike; ratios of medians)"
                 if payload.get("isolate_order") == "mirror" else
                 "each step in its own process, one after another (`--isolate`; ratios of medians)")
        memory = f"{order}, peak RSS in the table" if isolated else f"peak RSS {row['process_max_rss_gb']:.1f} GB"
        if payload.get("partial"):  # written after a child, by a run that did not finish
            memory += "; PARTIAL: the run stopped before its last step"
        fill = " (our encoder's embeddings of its rows)" if row.get("bank_fill") == "model" else ""
        chunk = row.get("length_chunk", 8)
        if chunk != 8:  # the default (StepConfig.length_chunk) goes unsaid
            fill += f"; length chunks of {chunk} rows"
        lines.append(f"{model}, batch {row['batch']}, k {row['k']}, {row['lq']}/{row['lc']} tokens, bank {row['bank']}{fill}; "
                     f"real tokens {row['real_token_fraction']['query']:.0%} of a query row, "
                     f"{row['real_token_fraction']['code']:.0%} of a code row; load average "
                     f"{m.get('load_average_start')} at the start{gemm_speeds(payload)}; {memory} (`{path}`):")
        lines.append("")
        rounds = len(row[f"{present[0][0]}_times_s"])
        gpu = isolated and any(f"{key}_peak_gpu_gb" in row for key, _ in present)
        lines.append(f"| step | median s ({rounds} rounds) | rounds s | real-token MFU | compile s | vs reference (cap) "
                     "| vs reference (longest) | speed vs ours padded |" + (" peak RSS GB |" if isolated else "")
                     + (" peak GPU GB |" if gpu else ""))
        lines.append("|---|---:|---|---:|---:|---:|---:|---:|" + ("---:|" if isolated else "") + ("---:|" if gpu else ""))
        padded = "ours_compile_s" in row
        for key, name in present:
            ratio = lambda r: row.get(f"ratio_{key}_over_{r}")  # noqa: E731
            fmt = lambda v: "" if v is None else f"{v:.2f}x"  # noqa: E731
            compile_s = row.get(f"{key}_compile_s")
            if key == "ours" or not padded:
                vs_padded = None
            elif isolated:
                vs_padded = row["ours_step_s"] / row[f"{key}_step_s"]
            else:
                vs_padded = common.paired_ratio(row[f"{key}_times_s"], row["ours_times_s"])
            lines.append(
                f"| {name} | {seconds(row[f'{key}_step_s'], 2)} | "
                f"{', '.join(seconds(t, 1) for t in row[f'{key}_times_s'])} "
                f"| {row[f'{key}_real_mfu']:.1%} | {'' if compile_s is None else f'{compile_s:.0f}'} "
                f"| {fmt(ratio('reference'))} | {fmt(ratio('reference_longest'))} | {fmt(vs_padded)} |"
                + (f" {row[f'{key}_max_rss_gb']:.1f} |" if isolated else "")
                + (f" {row.get(f'{key}_peak_gpu_gb', float('nan')):.1f} |" if gpu else ""))
        for key, name in labels(row):
            if f"{key}_failed" in row:
                lines.append(f"| {name} | did not run: {row[f'{key}_failed']} |" + " |" * (6 + isolated + gpu))
        lines.append("")
    return "\n".join(lines)


def write_into(doc: str, name: str, text: str) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    content = open(doc, encoding="utf-8").read()
    if begin not in content or end not in content:
        raise SystemExit(f"{doc}: no {begin} ... {end} markers to write between")
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(doc, "w", encoding="utf-8") as f:
        f.write(f"{head}{begin}\n{text.rstrip()}\n{end}{tail}")


def plot(paths: list[str], out: str) -> dict[str, list]:
    """Grouped bars: the real-token MFU of every step of every result row (one group per configuration).

    Returns what was drawn: ``{"bars": [(configuration, step, MFU)], "marked": [(configuration, step, text)]}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = []  # (configuration label, [(step name, MFU or None, why not)])
    for path in paths:
        for row in json.load(open(path))["results"]:
            model = {"minilm": "MiniLM", "minilm-shape": "MiniLM shape", "codet5p-110m": "CodeT5+"}.get(row["model"], row["model"])
            bars = [(name, row.get(f"{key}_real_mfu"), row.get(f"{key}_failed", ""))
                    for key, name in labels(row) if f"{key}_step_s" in row or f"{key}_failed" in row]
            groups.append((f"{model}\nB {row['batch']}, k {row['k']}\n{row['lq']}/{row['lc']}", bars))
    names = list(dict.fromkeys(name for _, bars in groups for name, _, _ in bars))
    if not names:
        raise SystemExit(f"lengths_table --plot: no step results in {', '.join(paths) or 'no files'}")
    width = 0.8 / len(names)
    drawn: dict[str, list] = {"bars": [], "marked": []}
    fig, ax = plt.subplots(figsize=(1.6 * len(groups) + 2.5, 4.2))
    for j, name in enumerate(names):
        for i, (_, bars) in enumerate(groups):
            hit = [b for b in bars if b[0] == name]
            if not hit:
                continue
            x = i + (j - (len(names) - 1) / 2) * width
            _, mfu, failed = hit[0]
            config = groups[i][0].replace("\n", " ")
            if mfu is None:
                text = "OOM" if "out of memory" in failed else "failed"
                ax.text(x, 0.005, text, rotation=90, ha="center", va="bottom", fontsize=7)
                drawn["marked"].append((config, name, text))
            else:
                drawn["bars"].append((config, name, mfu))
                ax.bar(x, 100 * mfu, width, color=f"C{j}", label=name if i == min(
                    k for k, (_, b) in enumerate(groups) if any(n == name and m is not None for n, m, _ in b)) else None)
    ax.set_xticks(range(len(groups)), [g for g, _ in groups], fontsize=8)
    ax.set_ylabel("real-token MFU (%)")
    ax.set_title("train step, real (non-pad) tokens only; each configuration's own host", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return drawn


if __name__ == "__main__":
    args = sys.argv[1:]
    into = png = None
    while args[:1] in (["--into"], ["--plot"]):
        if args[0] == "--into":
            into = args[1]
        else:
            png = args[1]
        args = args[2:]
    if png:
        plot(args, png)
        print("wrote", png)
    text = "\n".join(table(p) for p in args)
    if png and not into:
        sys.exit(0)
    if into:
        doc, _, name = into.rpartition(":")
        write_into(doc, name, text)
    else:
        print(text)
