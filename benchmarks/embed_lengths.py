"""Evaluation's embedding, length-aware against padded: `evaluate.embed_ids_sharded` on real code rows.

Evaluation and `train.py`'s validation embed every query and code of a codebase with
`evaluate.embed_ids_sharded`: blocks of ``--rows_per_device`` rows per device, sorted by length, each block
either through the length-aware chunks (`reencode.encode_rows_bucketed`: chunks of 16 rows, `lax.switch`
over 4 lengths per cap; the default on every platform) or in one call at the width (``length_buckets=0``,
as the train step runs off the CPU). This script times both on the same rows, interleaved round by round
in one process, and checks that they give the same embeddings:

    python -m benchmarks.embed_lengths --model codet5p-110m --rows 4096 --rounds 3
    python -m benchmarks.embed_lengths --smoke

The rows are real standard-library functions (MiniLM tokenizer, as the step benchmarks), at the 256-token
code cap; with ``--model codet5p-110m`` the weights are random (the shape is what is timed).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

from benchmarks import common


def main(argv=None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="codet5p-110m", help="minilm, codet5p-110m, codet5p-tiny")
    parser.add_argument("--rows", type=int, default=4096, help="code rows embedded per call of the function")
    parser.add_argument("--length", type=int, default=256, help="the cap")
    parser.add_argument("--rows_per_device", type=int, default=None, help="default: evaluate.EMBED_ROWS_PER_DEVICE")
    parser.add_argument("--buckets", default="0,4", help="comma-separated length_buckets values (0 = padded)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny model, few rows: seconds")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.rows, args.length, args.rounds = "codet5p-tiny", 40, 128, 1
    threads = common.pin_threads(args.threads)

    import jax
    import jax.numpy as jnp
    import numpy as np
    from transformers import AutoTokenizer

    import cocohanere_jax
    from cocohanere_jax import evaluate, sharding

    folder = common.model_folder(args.model, os.path.join(tempfile.gettempdir(), "cocohanere_bench_models"))
    enc = cocohanere_jax.load_encoder(folder, dtype=getattr(jnp, args.dtype))
    tokenizer = AutoTokenizer.from_pretrained(common.minilm_folder())
    pairs = common.stdlib_pairs()
    pick = np.random.default_rng(0).choice(len(pairs), args.rows, replace=args.rows > len(pairs))
    ids = common.token_rows(tokenizer, [pairs[i][1] for i in pick], args.length, getattr(enc.config, "vocab_size"))
    ids = np.where(ids == tokenizer.pad_token_id, enc.pad_id, ids).astype(np.int32)
    mesh = sharding.make_mesh(jax.devices())
    rows_per_device = args.rows_per_device or evaluate.EMBED_ROWS_PER_DEVICE
    machine = common.machine_info(threads)

    fns, compile_s, out = {}, {}, {}
    for nb in (int(v) for v in args.buckets.split(",") if v):
        name = "padded" if nb == 0 else f"length-aware ({nb})"

        def fn(nb=nb):
            return evaluate.embed_ids_sharded(enc, ids, mesh, rows_per_device=rows_per_device, length_buckets=nb)

        t = time.perf_counter()
        out[name] = fn()  # the first call compiles (one program for every block)
        compile_s[name] = round(time.perf_counter() - t, 3)
        fns[name] = fn
        print(f"{name}: first call (compile + one pass) {compile_s[name]} s", flush=True)
    times = common.interleaved(fns, rounds=args.rounds, warmup=0, rotate=True)
    first = next(iter(out))
    rows = []
    for name, ts in times.items():
        med = common.summary(ts)["median_s"]
        rows.append({"function": name, "median_s": med, "rounds_s": list(ts),
                     "rows_per_s": args.rows / med, "first_call_s": compile_s[name],
                     "max_abs_diff_vs_" + first.split(" ")[0]: float(np.abs(out[name] - out[first]).max()),
                     "speed_vs_" + first.split(" ")[0]: common.paired_ratio(ts, times[first])})
    real = float((ids != enc.pad_id).mean())
    common.print_table(rows, list(rows[0]), title=f"{args.model}, {args.rows} rows at {args.length} "
                       f"({real:.0%} real tokens), {len(mesh.devices.flat)} {mesh.devices.flat[0].platform} "
                       f"device(s), {rows_per_device} rows per device per call, {args.dtype}")
    payload = {"benchmark": "embed_lengths", "smoke": args.smoke, "machine": machine, "model": args.model, "rows": args.rows,
               "length": args.length, "rows_per_device": rows_per_device, "dtype": args.dtype,
               "real_token_fraction": real, "devices": [str(d) for d in mesh.devices.flat], "results": rows}
    common.write_json(args.out or common.default_out("embed_lengths", args.smoke), payload)
    return payload


if __name__ == "__main__":
    main()
