"""A deterministic stand-in for the train loop, run as a subprocess by tests/test_reliability.py.

    python tests/reliability_child.py WORKDIR TOTAL_STEPS [--preempt] [--save-every N]

Each step is a jitted pure function of the state (a random key folded with the step), so a run that resumes
from any checkpoint ends bitwise equal to an uninterrupted one exactly when the checkpoint layer restores
what it saved. Prints `step N`, `save_started N`, `resumed N`, `done N` lines (flushed) for the parent.
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from cocohanere_jax import checkpoints, preemption

SIZE = 1 << 20  # 4 MiB per float32 leaf: an asynchronous save takes long enough to be killed in


def init_state():
    return {"w": jnp.linspace(-1.0, 1.0, SIZE, dtype=jnp.float32), "m": jnp.zeros((SIZE,), jnp.float32),
            "step": jnp.zeros((), jnp.int32), "key": jax.random.key_data(jax.random.key(0))}


@jax.jit
def train_step(s):
    key = jax.random.fold_in(jax.random.wrap_key_data(s["key"]), s["step"])
    g = jnp.sin(3.0 * s["w"]) + 0.1 * jax.random.normal(key, s["w"].shape)
    m = 0.9 * s["m"] + 0.1 * g
    return {"w": s["w"] - 0.01 * m, "m": m, "step": s["step"] + 1, "key": s["key"]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("workdir")
    p.add_argument("total", type=int)
    p.add_argument("--preempt", action="store_true")
    p.add_argument("--save-every", type=int, default=2)
    p.add_argument("--sleep", type=float, default=0.02)
    a = p.parse_args()
    if a.preempt:
        preemption.install()
    ckpt = checkpoints.Checkpointer(a.workdir, keep=3)
    state = init_state()
    found = ckpt.restore_latest(checkpoints.abstract_like(state))
    start = 0
    if found is not None:
        start, state, meta = found
        assert meta["step"] == start == int(state["step"]), (meta, start)
        print(f"resumed {start}", flush=True)
    for n in range(start + 1, a.total + 1):
        state = train_step(state)
        state["w"].block_until_ready()
        print(f"step {n}", flush=True)
        if n % a.save_every == 0 or n == a.total:
            ckpt.save(n, state, {"step": n})
            print(f"save_started {n}", flush=True)
        if a.preempt and preemption.should_stop(n):
            if ckpt.latest_step() != n:
                ckpt.save(n, state, {"step": n})
            ckpt.wait()
            print(f"preempted {n}", flush=True)
            ckpt.close()
            e = preemption.Preempted(n, a.workdir)
            print(e, file=sys.stderr, flush=True)  # what main.py logs before exiting with e.code
            raise e
        time.sleep(a.sleep)
    ckpt.close()
    print(f"done {a.total}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
