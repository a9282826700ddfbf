"""Where one of our train steps spends its time, per length bucket and pass (XLA:CPU's own op timings).

Builds our step as `benchmarks/train_step.py` does (the same workload: real standard-library rows, a bank
of ``--bank`` rows filled with the encoder's own embeddings), runs it a few times, traces one step with
``jax.profiler`` and sums the duration of every compiled op by where it sits in the program:

- ``first forward``: the length-aware call's forward (the embeddings the loss reads), per bucket length;
- ``second forward`` / ``backward``: the custom VJP's re-run of the chosen branch and its VJP, per bucket;
- ``other``: everything else (bank search, losses, optimizer update, gathers, the sort);
- ``unattributed``: ops whose HLO carries no metadata (copies between loop iterations and the like).

The bucket of an op is the ``lax.switch`` branch its HLO metadata names (``branch_<i>_fun``: the i-th
length of `reencode.bucket_lengths`), and the number of chunks that ran at it is counted from the first
forward's feed-forward matmuls. Op durations are XLA:CPU's per-op events (an op split over threads is
one event), so their sum can differ from the step's wall time.

    python -m benchmarks.step_profile --model codet5p-110m --size 2,10,128,256 --length_buckets 4+scan
    python -m benchmarks.step_profile --table RESULT.json [--into benchmarks/RESULTS.md:MARKER]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time
from typing import Any

from benchmarks import common


def op_metadata(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> its ``op_name`` metadata (where in the JAX program it comes from)."""
    return {m.group(1): m.group(2) for m in re.finditer(r'^\s*%(\S+) = .*?op_name="([^"]*)"', hlo_text, re.M)}


def classify(op_name: str) -> tuple[str, int | None]:
    """(pass, bucket index) of one op from its metadata: the custom VJP's backward runs under
    ``transpose(jvp(...))`` of the encoder inside the branch, its second forward under the branch's
    ``jvp(...)`` inside the outer ``transpose(jvp())``, the first forward under the outer ``jvp()``."""
    branch = re.search(r"branch_(\d+)_fun", op_name)
    if branch is None:
        return "other", None
    inner = op_name[branch.end():]
    if "transpose(jvp(" in inner:
        return "backward", int(branch.group(1))
    if "transpose(jvp())" in op_name[:branch.start()]:
        return "second forward", int(branch.group(1))
    return "first forward", int(branch.group(1))


# Trace events that wrap others (the executor, Python frames, thread-pool waits): not ops of their own.
WRAPPERS = ("ThunkExecutor", "$", "end:", "SlinkyThreadPool", "PjitFunction")


def aggregate(trace_file: str, meta: dict[str, str]) -> dict[tuple[str, int | None], dict[str, float]]:
    """Sum op durations (seconds) and count first-forward feed-forward matmuls per (pass, bucket)."""
    with gzip.open(trace_file) as f:
        events = json.load(f)["traceEvents"]
    out: dict[tuple[str, int | None], dict[str, float]] = collections.defaultdict(lambda: {"s": 0.0, "ffn_calls": 0})
    for e in events:
        if e.get("ph") != "X" or e["name"].startswith(WRAPPERS):
            continue
        # Ops without metadata (copies between loop iterations, the runtime's own) are counted, not dropped.
        key = classify(meta[e["name"]]) if e["name"] in meta else ("unattributed", None)
        out[key]["s"] += e["dur"] / 1e6
        if key[0] == "first forward" and re.search(r"/(wi|intermediate)/dot_general", meta[e["name"]]):
            out[key]["ffn_calls"] += 1
    return dict(out)


def markdown(path: str) -> str:
    """A result file as a markdown table, its title and file below."""
    payload = json.load(open(path, encoding="utf-8"))
    lines = ["| pass | bucket (tokens) | chunks | op s | share |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['pass']} | {r['bucket']} | {r['chunks']} | {r['op_s']:.2f} | {r['share']} |" for r in payload["rows"]]
    return "\n".join(lines) + f"\n\n{payload['title']} (`{path}`)\n"


def main(argv=None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", default=None, help="print a result file as markdown instead of running")
    parser.add_argument("--into", default=None, help="with --table: DOC:MARKER, write it between the markers")
    parser.add_argument("--model", default="codet5p-110m")
    parser.add_argument("--size", default="2,10,128,256", help="batch,k,query cap,code cap")
    parser.add_argument("--bank", type=int, default=512)
    parser.add_argument("--length_buckets", default="4+scan", help="one train_step --length_buckets value")
    parser.add_argument("--length_chunk", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="untimed steps before the traced one")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.table:
        text = markdown(args.table)
        if args.into:
            from benchmarks.lengths_table import write_into

            write_into(*args.into.rsplit(":", 1), text)
        else:
            print(text)
        return {"table": text}
    threads = common.pin_threads(args.threads)

    import jax

    import cocohanere_jax
    from benchmarks.train_step import Workload, fill_bank_from_model, make_ours, parse_variant
    from cocohanere_jax import reencode

    batch, k, lq, lc = (int(x) for x in args.size.split(","))
    nb, scan, plan = parse_variant(args.length_buckets)
    if nb == 0 or plan in (True, "iid"):
        raise SystemExit("step_profile: --length_buckets must name the bucketed chunks (N, N+scan, N+pack or "
                         "N+scan+pack; no +plan)")
    folder = common.model_folder(args.model, os.path.join(tempfile.gettempdir(), "cocohanere_bench_models"))
    enc = cocohanere_jax.load_encoder(folder, scan_layers=scan)
    work = Workload(int(enc.config.vocab_size), batch, lq, lc, args.bank, enc.dim, steps=args.steps + 2)
    work.pad_id = enc.pad_id
    fill_bank_from_model(work, enc)
    run, compile_s, _ = make_ours(enc, work, k, None, None, nb, args.length_chunk, plan)
    step_s = []
    for _ in range(args.steps):
        t = time.perf_counter()
        jax.block_until_ready(run())
        step_s.append(time.perf_counter() - t)
    with tempfile.TemporaryDirectory(prefix="step_profile_") as trace_dir:
        t = time.perf_counter()
        with jax.profiler.trace(trace_dir):
            jax.block_until_ready(run())
        traced_s = time.perf_counter() - t
        files = sorted(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz")))
        if not files:
            raise SystemExit(f"step_profile: jax.profiler wrote no trace.json.gz under {trace_dir}")
        parts = aggregate(files[-1], op_metadata(run.compiled.as_text()))
    lens = ((0,) if plan in ("pack", "pack_keep") else ()) + reencode.bucket_lengths((lq, lc), nb)  # packing's branch 0 skips
    layers = getattr(enc.config, "num_layers", None) or getattr(enc.config, "num_hidden_layers")
    total = sum(v["s"] for v in parts.values())
    table = []
    for (phase, b), v in sorted(parts.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1])):
        table.append({"pass": phase, "bucket": "-" if b is None else lens[b],
                      "chunks": int(v["ffn_calls"] // layers) if phase == "first forward" else "",
                      "op_s": round(v["s"], 3), "share": f"{v['s'] / total:.1%}"})
    title = (f"{args.model}, batch {batch}, k {k}, {lq}/{lc} tokens, bank {args.bank} (the encoder's embeddings), "
             f"--length_buckets {args.length_buckets}, chunks of {args.length_chunk} rows; steps before the trace "
             f"{', '.join(f'{s:.2f}' for s in step_s)} s, traced step {traced_s:.2f} s, ops {total:.2f} s; "
             f"{threads} threads; load {common.load_average()}")
    common.print_table(table, ["pass", "bucket", "chunks", "op_s", "share"], title)
    payload = {"benchmark": "step_profile", "title": title, "args": vars(args), "machine": common.machine_info(threads),
               "compile_s": compile_s, "step_s": step_s, "traced_step_s": traced_s, "op_s": total, "rows": table}
    out = args.out or common.default_out(f"step_profile_{args.model}_b{batch}_k{k}", False)
    common.write_json(out, payload)
    return payload


if __name__ == "__main__":
    main()
