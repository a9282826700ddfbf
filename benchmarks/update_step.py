"""The optimizer update alone: our clip + AdamW (optax, jitted, state donated) against PyTorch's
`clip_grad_norm_` + `torch.optim.AdamW` on the same parameters and gradients.

A train step is its encoder calls plus this update over every parameter (memory-bound: the parameters,
gradients and both moments read, three of them written). `benchmarks/encoder_grad.py` times the encoder
calls; this script times the rest that scales with the model, so that the two add up to what separates
the step benchmarks. Same process, rounds interleaved and rotated (``common.interleaved``).

    python -m benchmarks.update_step --model codet5p-110m --rounds 5
    python -m benchmarks.update_step --smoke
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
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny model: seconds")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.rounds = "codet5p-tiny", 2
    threads = common.pin_threads(args.threads)

    import jax
    import numpy as np
    import optax
    import torch

    import cocohanere_jax
    from cocohanere_jax import optim
    from cocohanere_jax.step_config import StepConfig

    folder = common.model_folder(args.model, os.path.join(tempfile.gettempdir(), "cocohanere_bench_models"))
    enc = cocohanere_jax.load_encoder(folder)
    model, _ = common.load_torch_model(folder)
    config = StepConfig()
    rng = np.random.default_rng(0)

    # Ours: the step's optimizer (optim.make_optimizer) and the step's update, state donated as in the step.
    tx = optim.make_optimizer(config, total_steps=100_000)
    params = jax.tree.map(lambda p: jax.numpy.array(p), enc.params)
    grads = jax.tree.map(lambda p: jax.numpy.asarray(rng.standard_normal(p.shape, np.float32) * 1e-3), params)
    holder = {"state": (params, tx.init(params))}

    def update(state, g):
        p, opt_state = state
        updates, opt_state = tx.update(g, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    t = time.perf_counter()
    compiled = jax.jit(update, donate_argnums=(0,)).lower(holder["state"], grads).compile()
    compile_s = time.perf_counter() - t

    def ours():
        holder["state"] = compiled(holder["state"], grads)
        return holder["state"]

    # PyTorch: the reference step's update (benchmarks/reference_torch.py), gradients set once.
    for p in model.parameters():
        p.grad = torch.from_numpy(rng.standard_normal(tuple(p.shape), np.float32) * 1e-3)
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, eps=config.adam_eps,
                            weight_decay=config.weight_decay)

    def reference():
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()

    n_ours = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    n_torch = sum(p.numel() for p in model.parameters())
    load_before = common.load_average()
    times = common.interleaved({"ours": ours, "torch": reference}, args.rounds, rotate=True)
    load_after = common.load_average()
    rows = [{"function": name, **common.summary(ts), "rounds_s": ts} for name, ts in times.items()]
    rows[0]["vs_torch"] = common.paired_ratio(times["ours"], times["torch"])
    rows[0]["compile_s"] = compile_s
    title = (f"{args.model}: clip + AdamW over {n_ours / 1e6:.1f}M parameters (PyTorch: {n_torch / 1e6:.1f}M); "
             f"{threads} threads; load {load_before} -> {load_after}")
    common.print_table(rows, ["function", "median_s", "min_s", "max_s", "vs_torch", "compile_s"], title)
    payload = {"benchmark": "update_step", "smoke": args.smoke, "title": title, "args": vars(args),
               "machine": common.machine_info(threads), "parameters": {"ours": n_ours, "torch": n_torch},
               "load_before": load_before, "load_after": load_after, "rows": rows}
    common.write_json(args.out or common.default_out(f"update_step_{args.model}", args.smoke), payload)
    return payload


if __name__ == "__main__":
    main()
