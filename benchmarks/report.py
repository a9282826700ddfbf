"""Writes the measured part of benchmarks/RESULTS.md from the JSON results of the benchmark scripts.

    python -m benchmarks.report                        # results/*.json -> RESULTS.md (generated section)
    python -m benchmarks.report --results DIR --out F  # other results / output

Only the text between the ``<!-- generated:start -->`` and ``<!-- generated:end -->`` markers is
rewritten; the hand-written reading around it is kept. Every number in the generated section is read
from a result file (the file and the command that wrote it are named under each table); a result file
that is missing is reported as missing, never filled in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Mapping, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
START, END = "<!-- generated:start -->", "<!-- generated:end -->"

# (result file, what it is); run_all.sh writes all of them.
FILES = {
    "train_step": "train_step.json",
    "train_step_1thread": "train_step_1thread.json",
    "train_step_dedup": "train_step_dedup.json",
    "train_step_gpu": "train_step_gpu.json",  # the paper's configuration in bf16 on a GPU (train_step.py doc)
    "encode": "encode.json",
    "search": "search.json",
    "growth": "growth.json",
}
# The targets of issue 6 (CPU): ratio of our train-step throughput to the PyTorch reference's, MFU
# against the measured float32 matmul peak, and our search time against faiss flat at the largest bank.
TARGET_STEP_RATIO = 1.3
TARGET_MFU = 0.40


def _load(results: str, name: str) -> dict | None:
    path = os.path.join(results, FILES[name])
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, Callable[[Mapping], Any]]]) -> str:
    """Markdown table; columns are (header, format spec, getter)."""
    head = "| " + " | ".join(h for h, _, _ in columns) + " |"
    rule = "|" + "|".join("---:" if i else "---" for i in range(len(columns))) + "|"
    body = ["| " + " | ".join(_fmt(get(r), spec) for _, spec, get in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def _source(name: str, payload: Mapping[str, Any]) -> str:
    m = payload["machine"]
    load = f"load average {m.get('load_average_start')} -> {m.get('load_average_end')}"
    return (f"*`benchmarks/results/{FILES[name]}`: `python {m['command']}` at commit `{m.get('git_commit')}`, "
            f"{m['date']}, {m['threads']} thread(s), {load}.*")


def machine_section(payloads: Mapping[str, dict]) -> str:
    m = next(iter(payloads.values()))["machine"]
    versions = ", ".join(f"{k} {m[k]}" for k in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers",
                                                   "faiss") if m.get(k))
    return "\n".join([
        "### Machine",
        "",
        f"- CPU: {m['cpu']} ({', '.join(m.get('simd', [])) or 'no SIMD flags read'}), "
        f"{m['cores_visible']} cores visible, {m.get('memory_gib')} GiB; no accelerator "
        f"(JAX devices: {', '.join(m.get('jax_devices', []))}).",
        f"- Python {m['python']}; {versions}.",
        "- Every ratio compares two implementations timed in the same process, in interleaved rounds "
        "(median of the rounds; the ratio is the median of the per-round ratios).",
    ])


def targets_section(p: Mapping[str, dict]) -> str:
    rows = []
    for name, threads in (("train_step", "all cores"), ("train_step_1thread", "1 thread"),
                          ("train_step_dedup", "all cores")):
        if name not in p:
            continue
        for r in p[name]["results"]:
            ratio, mfu = r.get("ratio_ours_over_reference"), r.get("ours_mfu")
            cfg = f"{r['model']}, B {r['batch']}, k {r['k']}, {r['lq']}/{r['lc']} tokens, {threads}"
            if r.get("reencode_fraction") is not None:
                cfg += f", ours de-duplicated with re-encode budget {r['reencode_fraction']:g} x B*k"
                mfu = None  # model FLOPs count the full B*k re-encoding: not a utilisation here
            if mfu is None:
                if ratio is not None:
                    rows.append((f"train step >= {TARGET_STEP_RATIO}x PyTorch reference", cfg, f"{ratio:.2f}x",
                                 "yes" if ratio >= TARGET_STEP_RATIO else "**no**"))
                continue
            if ratio is not None:
                rows.append((f"train step >= {TARGET_STEP_RATIO}x PyTorch reference", cfg, f"{ratio:.2f}x",
                             "yes" if ratio >= TARGET_STEP_RATIO else "**no**"))
            rows.append((f"MFU >= {TARGET_MFU:.0%} of measured matmul peak", cfg, f"{mfu:.0%}",
                         "yes" if mfu >= TARGET_MFU else "**no**"))
    if "search" in p:
        big = max(p["search"]["results"], key=lambda r: r["bank"])
        for col, label in (("ratio_faiss_over_ours", "faiss IndexFlatIP, defaults"),
                           ("ratio_faiss_blas_over_ours", "faiss IndexFlatIP, BLAS path")):
            if col in big:
                rows.append((f"search no slower than faiss flat at {big['bank']:,} entries", label,
                             f"faiss time / ours = {big[col]:.2f}", "yes" if big[col] >= 1.0 else "**no**"))
    lines = ["### Targets (issue 6, CPU)", "", "| target | setting | measured | met |", "|---|---|---:|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


STEP_COLUMNS = [
    ("model", "", lambda r: r["model"]),
    ("B", "", lambda r: r["batch"]),
    ("k", "", lambda r: r["k"]),
    ("Lq/Lc", "", lambda r: f"{r['lq']}/{r['lc']}"),
    ("bank", "", lambda r: r["bank"]),
    ("compile s", ".1f", lambda r: r["compile_s"]),
    ("ours s/step", ".3g", lambda r: r["ours_step_s"]),
    ("reference s/step", ".3g", lambda r: r.get("reference_step_s")),
    ("ours pairs/s", ".3g", lambda r: r["ours_pairs_per_s"]),
    ("reference pairs/s", ".3g", lambda r: r.get("reference_pairs_per_s")),
    ("ours / reference", ".2f", lambda r: r.get("ratio_ours_over_reference")),
    ("model GFLOP/step", ".0f", lambda r: r["model_gflops_per_step"]),
    ("re-encode budget", "g", lambda r: r.get("reencode_fraction")),
    ("distinct negatives", ".2f", lambda r: r.get("distinct_negatives")),
    # With a re-encode budget the model FLOPs (full B*k re-encoding) are not what ran: no utilisation.
    ("ours MFU", ".0%", lambda r: None if r.get("reencode_fraction") is not None else r["ours_mfu"]),
    ("reference MFU", ".0%", lambda r: r.get("reference_mfu")),
]


def step_section(p: Mapping[str, dict]) -> str:
    out = ["### 1 and 4. Train step throughput and MFU (ours vs the PyTorch reference step)", ""]
    for name, label in (("train_step", "all cores"), ("train_step_1thread", "one thread"),
                        ("train_step_dedup", "all cores, ours with de-duplicated re-encoding (budget column)"),
                        ("train_step_gpu", "GPU")):
        if name not in p:
            out += [f"*{FILES[name]}: not measured.*", ""]
            continue
        peak = p[name]["matmul_peak"]
        after = p[name].get("matmul_peak_after", {})
        if name == "train_step_gpu":
            label = f"GPU: {', '.join(p[name]['machine'].get('jax_devices', []))}"
        out += [f"**{label}**; {peak.get('dtype', 'float32')} matmul peak measured in the same process: "
                f"{peak['peak_gflops']:.1f} GFLOP/s "
                f"at the start (XLA {_fmt(peak.get('xla_gflops'), '.1f')}, PyTorch {_fmt(peak.get('torch_gflops'), '.1f')}), "
                f"{_fmt(after.get('peak_gflops'), '.1f')} at the end. MFU = model GFLOP per step / step time / "
                "that peak (the start value).", "",
                _table(p[name]["results"], STEP_COLUMNS), "", _source(name, p[name]), ""]
    return "\n".join(out)


def encode_section(p: Mapping[str, dict]) -> str:
    if "encode" not in p:
        return "### 2. Encoding throughput\n\n*encode.json: not measured.*\n"
    cols = [
        ("model", "", lambda r: r["model"]),
        ("kind", "", lambda r: r["kind"]),
        ("sequences", "", lambda r: r["sequences"]),
        ("batch", "", lambda r: r["batch"]),
        ("max tokens", "", lambda r: r.get("max_length")),
        ("mean tokens", ".1f", lambda r: r["mean_tokens"]),
        ("ours seq/s", ".3g", lambda r: r["ours_seq_per_s"]),
        ("reference seq/s", ".3g", lambda r: r["reference_seq_per_s"]),
        ("reference, length-sorted seq/s", ".3g", lambda r: r.get("reference_sorted_seq_per_s")),
        ("ours / reference", ".2f", lambda r: r["ratio_ours_over_reference"]),
        ("ours / sorted reference", ".2f", lambda r: r.get("ratio_ours_over_reference_sorted")),
        ("max abs diff", ".1e", lambda r: r["max_abs_diff_vs_reference"]),
    ]
    return "\n".join(["### 2. Encoding throughput (`load_encoder(...).encode` vs transformers under "
                      "`torch.inference_mode`)", "", _table(p["encode"]["results"], cols), "",
                      _source("encode", p["encode"]), ""])


def search_section(p: Mapping[str, dict]) -> str:
    if "search" not in p:
        return "### 3. kNN search\n\n*search.json: not measured.*\n"
    cols = [
        ("bank", "", lambda r: f"{r['bank']:,}"),
        ("ours ms", ".1f", lambda r: r["ours_ms"]),
        ("bare top_k ms", ".1f", lambda r: r.get("ours_topk_ms")),
        ("numpy ms", ".1f", lambda r: r["numpy_ms"]),
        ("faiss ms", ".1f", lambda r: r.get("faiss_ms")),
        ("faiss BLAS ms", ".1f", lambda r: r.get("faiss_blas_ms")),
        ("faiss / ours", ".2f", lambda r: r.get("ratio_faiss_over_ours")),
        ("faiss BLAS / ours", ".2f", lambda r: r.get("ratio_faiss_blas_over_ours")),
        ("numpy / ours", ".2f", lambda r: r["ratio_numpy_over_ours"]),
        ("same neighbours as numpy", ".3f", lambda r: r["ours_agreement_with_numpy"]),
    ]
    r0 = p["search"]["results"][0]
    return "\n".join([f"### 3. kNN search ({r0['queries']} queries, d = {r0['dim']}, k = {r0['k']}, float32, exact)",
                      "", _table(p["search"]["results"], cols), "", "![search time](search.png)", "",
                      _source("search", p["search"]), ""])


def growth_section(p: Mapping[str, dict]) -> str:
    if "growth" not in p:
        return "### 5. Cost growth\n\n*growth.json: not measured.*\n"
    g = p["growth"]
    cfg = g["config"]
    cols = [c for c in STEP_COLUMNS if c[0] not in ("model", "Lq/Lc", "model GFLOP/step")]
    return "\n".join([
        f"### 5. Cost growth ({cfg['model']}, B {cfg['batch']}, {cfg['lq']}/{cfg['lc']} tokens)", "",
        f"Step time as k grows (bank {cfg['banks'][0]:,}; k = 0 is the in-batch baseline: no search, no "
        "re-encoding):", "", _table(g["k_sweep"], cols), "",
        f"Step time as the bank grows (k = {cfg['ks'][-1]}):", "", _table(g["bank_sweep"], cols), "",
        "![step time vs k](growth_k.png) ![step time vs bank](growth_bank.png)", "",
        _source("growth", g), ""])


def generate(results: str) -> str:
    payloads = {name: d for name in FILES if (d := _load(results, name)) is not None}
    if not payloads:
        raise SystemExit(f"report.py: no result files in {results}; run benchmarks/run_all.sh first")
    missing = [FILES[n] for n in FILES if n not in payloads]
    parts = [START, "", "<!-- written by `python -m benchmarks.report` from benchmarks/results/*.json -->", "",
             machine_section(payloads), "", targets_section(payloads), "", step_section(payloads),
             encode_section(payloads), "", search_section(payloads), "", growth_section(payloads)]
    if missing:
        parts += ["", f"*Missing result files: {', '.join(missing)}.*"]
    parts += ["", END]
    return "\n".join(parts)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=os.path.join(HERE, "results"))
    parser.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = parser.parse_args(argv)
    generated = generate(args.results)
    text = f"# Benchmarks\n\n{START}\n{END}\n"
    if os.path.isfile(args.out):
        with open(args.out, encoding="utf-8") as f:
            text = f.read()
    if START not in text or END not in text:
        raise SystemExit(f"report.py: {args.out} has no {START} / {END} markers; add them where the tables go")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(head + generated + tail)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
