"""Where the train step's encoder time goes: one encode call, forward + backward, ours against PyTorch.

The train step's cost is its encoder calls. This script times one such call alone (the gradient of the
sum of the embeddings of ``--rows`` real standard-library functions at the ``--length`` cap, dropout on,
w.r.t. every parameter), so that the differences between the step benchmarks
(`benchmarks/train_step.py`) can be taken apart:

- ``torch cap`` / ``torch longest``: the PyTorch model (the same weights) on the rows padded to the cap,
  or cut to the longest row (the two references of the step benchmark);
- ``ours one call``: ``module.apply`` on all rows at the cap, one dropout key (the plainest JAX program);
- ``ours padded``: `reencode.encode_rows` at the cap, a dropout key per row (what our padded step runs);
- ``ours padded chunks`` / ``ours padded remat chunks``: the same rows in chunks of ``--chunk`` rows
  (``jax.lax.map``), with an ordinary backward pass (every chunk's activations kept) / with each chunk's
  forward re-run in the backward pass (``jax.checkpoint``, as the length-aware call's custom VJP does):
  which of the length-aware call's gains on CPU come from its lengths and which from its chunks;
- ``ours length-aware``: `reencode.encode_rows_bucketed` (what our default step runs: sorted chunks,
  `lax.switch` over bucket lengths, the custom VJP that re-runs the chosen branch's forward);
- ``ours length-aware fwd``: the same, forward only (so the backward's re-run forward can be read off);
- ``ours one call fwd``, ``ours padded fwd``: those two calls forward only (`Encoder.embed_ids` makes one
  ``apply`` per block: on the GPU the backward of one call ran 3.8x slower than the vmapped rows);
- ``ours padded [float32 probs]``, ``ours padded [compute probs]`` (the second with ``--dtype bfloat16``):
  ``ours padded`` with attention's custom VJP (``load_encoder(attention_probs="float32" / "compute")``:
  only the probabilities, in float32 / the compute dtype, and the dropout mask kept for the backward pass);
- ``ours length plan``: `reencode.encode_rows_planned` along the `LengthPlan` that `reencode.plan_lengths`
  makes for ``--rows`` rows from the length histogram of the corpus the rows are drawn from (what the
  step runs with ``step.length_plan``: a few static groups, an ordinary backward pass, no second forward).

Every function runs in one process, interleaved round by round on the same rows; the rounds rotate and
odd rounds run in reverse (``common.interleaved(rotate=True)``: in a fixed order the same PyTorch call
measured 3-15% slower right after a JAX call than right after a PyTorch one); ratios are paired per round. When the longest
row reaches the cap, ``torch longest`` is the same computation as ``torch cap``: the two are then a
measure of the timing noise. Model FLOPs (2 per multiply-add, forward + backward = 3x forward) count
real tokens only for the real-token MFU, against the matmul peak (in ``--dtype``) measured in the same run.

On a GPU (both frameworks on it) ``--dtype bfloat16`` runs ours in bf16 compute and PyTorch under
``torch.autocast``; ``--dropout`` takes the call apart: "on" (the training call), "off" (no dropout at
all: ours deterministic, PyTorch in eval mode, gradients still taken) or "hidden" (BERT-family only: the
attention-probability dropout off, the rest on), so that what attention dropout costs each framework
can be read off two runs.

    python -m benchmarks.encoder_grad --model codet5p-110m --rows 16 --length 256 --rounds 3
    python -m benchmarks.encoder_grad --smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from typing import Any

from benchmarks import common


def main(argv=None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="codet5p-110m", help="minilm, minilm-shape, codet5p-110m, codet5p-tiny, bert-tiny (benchmarks/common.model_folder)")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--length", type=int, default=256, help="the cap (256: the paper's code cap)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--buckets", type=int, default=4, help="length buckets per cap (StepConfig.length_buckets)")
    parser.add_argument("--chunk", type=int, default=8, help="rows per length chunk (StepConfig.length_chunk)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", default="", help="comma-separated names of the functions to time (default all)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="compute dtype of both (ours: load_encoder(dtype=); PyTorch: torch.autocast)")
    parser.add_argument("--dropout", default="on", choices=("on", "off", "hidden"),
                        help="on: every dropout (training); off: none; hidden: no attention-probability "
                             "dropout (BERT family)")
    parser.add_argument("--smoke", action="store_true", help="tiny model, few rows: seconds")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.rows, args.length, args.rounds, args.chunk = "codet5p-tiny", 6, 32, 1, 4
    threads = common.pin_threads(args.threads)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    import cocohanere_jax
    from benchmarks import reference_torch
    from cocohanere_jax import reencode

    folder = common.model_folder(args.model, os.path.join(tempfile.gettempdir(), "cocohanere_bench_models"))
    enc = cocohanere_jax.load_encoder(folder, dtype=getattr(jnp, args.dtype))
    model, pooling = common.load_torch_model(folder)
    device = common.torch_device()
    model.to(device).train()
    family = "t5" if pooling == "codet5p" else "bert"
    if args.dropout == "hidden":
        if family != "bert":
            raise SystemExit("encoder_grad: --dropout hidden needs a BERT-family model (T5 has one dropout rate)")
        enc = dataclasses.replace(enc, config=dataclasses.replace(enc.config, attention_probs_dropout_prob=0.0))
        enc = dataclasses.replace(enc, module=enc.module.clone(config=enc.config))
        for name, m in model.named_modules():
            if name.endswith("attention.self"):
                m.dropout.p = 0.0
    deterministic = args.dropout == "off"
    config = enc.config
    # Each side's attention-probability dropout rate as the model that runs holds it (our Flax module's own
    # config, not the Encoder's copy), recorded in the payload; with --dropout off no dropout runs at all.
    module_config = enc.module.config
    attention_dropout = {
        "ours": getattr(module_config, "attention_probs_dropout_prob", getattr(module_config, "dropout_rate", None)),
        "torch": sorted({m.dropout.p for n, m in model.named_modules() if n.endswith("attention.self")})}
    vocab = getattr(config, "vocab_size", None)

    tokenizer = AutoTokenizer.from_pretrained(common.minilm_folder())
    pairs = common.stdlib_pairs(4000)
    pick = np.random.default_rng(0).choice(len(pairs), args.rows, replace=False)
    ids = common.token_rows(tokenizer, [pairs[i][1] for i in pick], args.length, vocab)
    ids = np.where(ids == tokenizer.pad_token_id, enc.pad_id, ids).astype(np.int32)
    real = ids != enc.pad_id
    lengths = real.sum(1)
    corpus = common.token_rows(tokenizer, [p[1] for p in pairs], args.length, vocab)
    stats = reencode.LengthStats.from_lengths([1], (corpus != tokenizer.pad_token_id).sum(1))
    plan = reencode.plan_lengths([(args.rows, "code", args.length)], stats,
                                 max_groups=len(reencode.bucket_lengths((args.length,), args.buckets)))
    print(f"length plan for {args.rows} rows: {plan}", flush=True)
    longest = int(reencode.row_lengths(jnp.asarray(ids), enc.pad_id).max())

    apply_fn = reencode.as_apply_fn(enc.module)
    ids_j = jnp.asarray(ids)
    key = jax.random.key_data(jax.random.key(0))
    keys = reencode.row_keys(key, 0, jnp.arange(args.rows))
    buckets = reencode.bucket_lengths((args.length,), args.buckets)

    mask_j = (ids_j != enc.pad_id).astype(jnp.int32)

    def one_call(p):
        return jnp.sum(apply_fn(p, ids_j, mask_j, deterministic, key))

    def padded(p):
        return jnp.sum(reencode.encode_rows(apply_fn, p, ids_j, keys, pad_id=enc.pad_id,
                                            deterministic=deterministic))

    def padded_chunks(p):  # the padded rows in chunks of --chunk (lax.map), ordinary backward
        return jnp.sum(reencode.encode_rows(apply_fn, p, ids_j, keys, pad_id=enc.pad_id, chunk=args.chunk,
                                            deterministic=deterministic))

    def padded_remat_chunks(p):  # the same, each chunk's forward re-run in the backward pass (jax.checkpoint)
        return jnp.sum(reencode.encode_rows(apply_fn, p, ids_j, keys, pad_id=enc.pad_id, chunk=args.chunk,
                                            remat=True, deterministic=deterministic))

    def aware(p):
        return jnp.sum(reencode.encode_rows_bucketed(apply_fn, p, ids_j, keys, pad_id=enc.pad_id,
                                                     buckets=buckets, chunk=args.chunk,
                                                     deterministic=deterministic))

    def planned(p):
        return jnp.sum(reencode.encode_rows_planned(apply_fn, p, ids_j, keys, pad_id=enc.pad_id, plan=plan,
                                                    fallback_chunk=args.chunk, deterministic=deterministic)[0])

    # Whether these rows fit the plan (else the timed call is its padded fallback).
    plan_held = all(int((lengths > t).sum()) <= s for t, s in zip(plan.lengths, np.cumsum((0,) + plan.sizes[:-1])))
    compiled, compile_s, temp_gb = {}, {}, {}
    jax_fns = {"ours one call": jax.grad(one_call), "ours padded": jax.grad(padded),
               "ours padded chunks": jax.grad(padded_chunks), "ours padded remat chunks": jax.grad(padded_remat_chunks),
               "ours length-aware": jax.grad(aware), "ours length-aware fwd": aware,
               "ours length plan": jax.grad(planned)}
    # The same padded call with attention's custom VJP (`load_encoder(..., attention_probs=...)`): only the
    # probabilities (float32, or the compute dtype) and the dropout mask kept for the backward pass.
    def padded_with(choice):
        fn = reencode.as_apply_fn(enc.module.clone(config=dataclasses.replace(enc.config, attention_probs=choice)))
        return jax.grad(lambda p: jnp.sum(reencode.encode_rows(fn, p, ids_j, keys, pad_id=enc.pad_id,
                                                              deterministic=deterministic)))

    jax_fns["ours padded [float32 probs]"] = padded_with("float32")
    if args.dtype != "float32":
        jax_fns["ours padded [compute probs]"] = padded_with("compute")
    jax_fns["ours one call fwd"], jax_fns["ours padded fwd"] = one_call, padded
    only = [s for s in args.only.split(",") if s]
    for name, fn in jax_fns.items():
        if only and name not in only:
            continue
        t = time.perf_counter()
        compiled[name] = jax.jit(fn).lower(enc.params).compile()
        compile_s[name] = round(time.perf_counter() - t, 1)
        memory = compiled[name].memory_analysis()  # XLA's own account of the compiled program's scratch memory
        temp_gb[name] = None if memory is None else float(f"{memory.temp_size_in_bytes / 2**30:.4g}")
        print(f"{name}: compiled in {compile_s[name]} s", flush=True)

    def torch_embed(rows, mask):  # pooled as ours
        if args.dtype == "float32":
            return reference_torch.embed(model, pooling, rows, mask)
        with torch.autocast(torch.device(device).type, dtype=getattr(torch, args.dtype)):
            return reference_torch.embed(model, pooling, rows, mask).float()

    ids_t = torch.from_numpy(ids).long().to(device)
    # Both sides compute the same thing: the embeddings without dropout agree (recorded in the result).
    model.eval()
    with torch.no_grad():
        theirs = torch_embed(ids_t, (ids_t != enc.pad_id).long()).cpu().numpy()
    if not deterministic:
        model.train()
    embedding_max_abs_diff = float(np.max(np.abs(np.asarray(apply_fn(enc.params, ids_j, mask_j, True, key)) - theirs)))
    ids_longest = ids_t[:, :longest]

    def torch_grad(rows):
        def run():
            model.zero_grad(set_to_none=True)
            mask = (rows != enc.pad_id).long()
            torch_embed(rows, mask).sum().backward()
            common.torch_sync()
            return None
        return run

    fns = {name: (lambda f=f: f(enc.params)) for name, f in compiled.items()}
    for name, rows in (("torch cap", ids_t), ("torch longest", ids_longest)):
        if not only or name in only:
            fns[name] = torch_grad(rows)
    load_before = common.load_average()
    peak = common.measure_matmul_peak(dtype=args.dtype)
    times = common.interleaved(fns, args.rounds, rotate=True)
    load_after = common.load_average()

    peak_flops = max(peak.get("xla_gflops", 0.0), peak.get("torch_gflops", 0.0)) * 1e9
    real_flops = 3.0 * sum(common.encoder_flops(family, config, 1, int(n)) for n in lengths)
    reference = times.get("torch cap")
    rows_out = []
    for name, ts in times.items():
        s = common.summary(ts)
        flops = real_flops / 3.0 if name.endswith("fwd") else real_flops
        # MFU to 3 significant digits (not decimals: a smoke model's is below 0.001 on a busy machine).
        row = {"function": name, "median_s": s["median_s"], "rounds_s": list(ts),
               "real_token_mfu": float(f"{flops / s['median_s'] / peak_flops:.3g}") if peak_flops else None,
               "compile_s": compile_s.get(name), "compiled_temp_gb": temp_gb.get(name)}
        if reference and name != "torch cap":
            row["vs_torch_cap"] = round(common.paired_ratio(ts, reference), 3)
        rows_out.append(row)
    dropout = {"on": "dropout on", "off": "dropout off", "hidden": "dropout on except attention's"}[args.dropout]
    title = (f"{args.model}, {args.rows} rows at a {args.length}-token cap (real tokens {real.mean():.0%}, longest "
             f"row {longest}), forward + backward, {dropout}, {args.dtype} compute; length plan {plan.lengths} x {plan.sizes} "
             f"({'held' if plan_held else 'did not hold: the padded fallback'}); {threads} threads; {args.dtype} {peak['size']}^3 matmul: "
             f"XLA {peak.get('xla_gflops', 0):.0f}, PyTorch {peak.get('torch_gflops', 0):.0f} GFLOP/s; "
             f"load {load_before} -> {load_after}")
    shown = [dict(r, rounds_s=", ".join(f"{t:.3g}" for t in r["rounds_s"])) for r in rows_out]
    common.print_table(shown, ["function", "median_s", "rounds_s", "real_token_mfu", "compile_s", "compiled_temp_gb",
                               "vs_torch_cap"], title)
    payload = {"benchmark": "encoder_grad", "smoke": args.smoke, "title": title, "args": vars(args), "machine": common.machine_info(threads), "matmul_peak": peak,
               "embedding_max_abs_diff": embedding_max_abs_diff, "attention_dropout": attention_dropout,
               # transformers' attention kernel ("sdpa": torch's fused scaled_dot_product_attention; "eager")
               "torch_attn_implementation": getattr(model.config, "_attn_implementation", None),
               "length_plan": {"lengths": list(plan.lengths), "sizes": list(plan.sizes), "held": bool(plan_held)}, "load_before": load_before, "load_after": load_after, "rows": rows_out}
    out = args.out or common.default_out(f"encoder_grad_{args.model}_r{args.rows}_l{args.length}", args.smoke)
    common.write_json(out, payload)
    return payload


if __name__ == "__main__":
    main()
