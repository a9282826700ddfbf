"""kill -9 the real job at random moments, restart it each time, and compare the end bitwise.

    python -m experiments.kill_cycles --out=/tmp/kill_cycles --trials=5 --kills=4

One uninterrupted reference run of `python -m cocohanere_jax.main --config=CONFIG`, then `--trials` runs in
fresh workdirs, each killed with SIGKILL `--kills` times at a random moment (uniform over the reference run's
wall time, so kills land in start-up, compilation, steps, evaluation and asynchronous saves) and restarted
with the same command, then run to the end. The final checkpoint's state (params, optimizer, both banks,
step, rng) of every trial must equal the reference bitwise. Writes `<out>/kill_cycles.json` (every kill's
moment, what the workdir held after it, set-aside damaged checkpoints, the verdict) and prints a summary.
Not in CI: one trial of the default smoke config takes minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(config: str, workdir: str, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "cocohanere_jax.main", f"--config={config}", f"--workdir={workdir}", *overrides]


def run_to_end(cmd: list[str], env: dict, log_path: str, timeout: float) -> tuple[int, float]:
    t = time.time()
    with open(log_path, "a") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
    return rc, time.time() - t


def run_and_kill(cmd: list[str], env: dict, log_path: str, delay: float) -> int | None:
    """Starts the job and SIGKILLs it after `delay` seconds; None if it was killed, else its exit status."""
    with open(log_path, "a") as log:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            return p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            return None


def final_state_equal(a: str, b: str) -> tuple[bool, str]:
    import jax
    import numpy as np

    from cocohanere_jax import checkpoints

    steps = []
    for wd in (a, b):
        root = os.path.join(wd, "checkpoints")
        steps.append(max(int(d) for d in os.listdir(root) if d.isdigit()))
    if steps[0] != steps[1]:
        return False, f"last steps differ: {steps}"
    x, y = (checkpoints.read_item(os.path.join(wd, "checkpoints", str(steps[0]), "state")) for wd in (a, b))
    lx, ly = jax.tree.leaves(x), jax.tree.leaves(y)
    if len(lx) != len(ly):
        return False, "different trees"
    bad = sum(not np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(lx, ly))
    return bad == 0, f"step {steps[0]}: {len(lx)} leaves, {bad} differ"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--config", default="configs/default.py:smoke")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--kills", type=int, default=4, help="kill -9 cycles per trial")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("overrides", nargs="*", help="extra flags, e.g. --config.train.checkpoint_every=2")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    # No shared compile cache between the reference and the trials beyond what the job itself keeps.
    overrides = list(a.overrides)
    rng = random.Random(a.seed)
    ref = os.path.join(a.out, "reference")
    report = {"config": a.config, "overrides": overrides, "trials": []}
    if not os.path.isfile(os.path.join(ref, "summary.json")):
        rc, seconds = run_to_end(command(a.config, ref, overrides), env, os.path.join(a.out, "reference.log"), a.timeout)
        if rc != 0:
            print(f"reference run failed (status {rc}); see {a.out}/reference.log")
            return 1
        report["reference_seconds"] = seconds
    else:
        report["reference_seconds"] = json.load(open(os.path.join(ref, "summary.json"))).get("seconds", 60.0)
    span = float(report["reference_seconds"])
    ok_trials = 0
    for t in range(a.trials):
        wd = os.path.join(a.out, f"trial{t}")
        log_path = os.path.join(a.out, f"trial{t}.log")
        kills = []
        for k in range(a.kills):
            delay = rng.uniform(0.5, span)
            status = run_and_kill(command(a.config, wd, overrides), env, log_path, delay)
            ck = os.path.join(wd, "checkpoints")
            left = sorted(os.listdir(ck)) if os.path.isdir(ck) else []
            kills.append({"delay_s": round(delay, 2), "killed": status is None, "status": status, "left": left})
            if status is not None:  # it finished before the kill moment
                break
        rc, seconds = run_to_end(command(a.config, wd, overrides), env, log_path, a.timeout)
        equal, detail = final_state_equal(ref, wd) if rc == 0 else (False, f"final run status {rc}")
        ck = os.path.join(wd, "checkpoints")
        damaged = [d for d in os.listdir(ck) if d.startswith("damaged-")] if os.path.isdir(ck) else []
        ok_trials += equal
        report["trials"].append({"workdir": wd, "kills": kills, "final_status": rc, "bitwise_equal": equal,
                                 "detail": detail, "damaged_set_aside": damaged})
        n_killed = sum(k["killed"] for k in kills)
        print(f"trial {t}: {n_killed} kill -9 cycles, final status {rc}, bitwise equal: {equal} ({detail})"
              + (f", set aside: {damaged}" if damaged else ""), flush=True)
        with open(os.path.join(a.out, "kill_cycles.json"), "w") as f:
            json.dump(report, f, indent=2)
    total_kills = sum(sum(k["killed"] for k in tr["kills"]) for tr in report["trials"])
    print(f"{ok_trials}/{a.trials} trials bitwise equal to the reference; {total_kills} kill -9 cycles in all")
    return 0 if ok_trials == a.trials else 1


if __name__ == "__main__":
    sys.exit(main())
