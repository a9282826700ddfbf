"""kill -9 the real job at random moments, restart it each time, and compare the end bitwise.

    python -m experiments.kill_cycles --out=runs/kill_cycles --trials=5 --kills=5 -- \
        --config.train.num_steps=20 --config.train.checkpoint_every=2 --config.train.eval_every=10

One uninterrupted reference run of `python -m cocohanere_jax.main --config=CONFIG`, then `--trials` runs in
fresh workdirs, each killed with SIGKILL `--kills` times and restarted with the same command, then run to the
end. The final checkpoint's state (params, optimizer, both banks, step, rng) of every trial must equal the
reference bitwise. Each kill picks a moment of one kind, at random:

  uniform   a delay drawn uniformly over the wall time of the last run measured to its end that resumed
            (at first the reference's start-up time plus half its training), i.e. over the *restarted* run,
            which is shorter than a fresh one (compile cache, no zero-shot evaluation, fewer steps left)
  startup   a delay drawn over the reference's start-up (model, data, token table, compilation)
  step      a random delay after a progress line ("step N/T") of the job appears in its log
  save      0-0.3 s after an asynchronous save started (a `*.orbax-checkpoint-tmp*` directory appeared in
            checkpoints/): kills inside the write

A kill that finds the job already finished is a miss (recorded, not counted); the trial then ends. Writes
`<out>/kill_cycles.json` (every kill: kind, moment, whether it killed, what checkpoints/ held after it, whether
a half-written save was left; set-aside damaged checkpoints; the verdict; wall time; load) and prints a summary.
Not in CI: minutes per trial on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = (("save", 0.4), ("step", 0.25), ("uniform", 0.25), ("startup", 0.1))
_STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d) ")


def command(config: str, workdir: str, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "cocohanere_jax.main", f"--config={config}", f"--workdir={workdir}", *overrides]


def run_to_end(cmd: list[str], env: dict, log_path: str, timeout: float) -> tuple[int, float]:
    t = time.time()
    with open(log_path, "a") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
    return rc, time.time() - t


def _checkpoint_names(workdir: str) -> list[str]:
    ck = os.path.join(workdir, "checkpoints")
    return sorted(os.listdir(ck)) if os.path.isdir(ck) else []


def _saving(workdir: str) -> set[str]:
    return {n for n in _checkpoint_names(workdir) if ".orbax-checkpoint-tmp" in n}


def run_and_kill(cmd: list[str], env: dict, log_path: str, kind: str, rng: random.Random, window: float,
                 startup: float, step_gap: float, timeout: float) -> dict:
    """Starts the job and SIGKILLs it at a moment of `kind`; returns what happened."""
    workdir = next(a.split("=", 1)[1] for a in cmd if a.startswith("--workdir="))
    before_tmp = _saving(workdir)
    offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
    t0 = time.time()
    out = {"kind": kind}
    with open(log_path, "a") as log:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if kind in ("uniform", "startup"):
        deadline = t0 + rng.uniform(0.5, window if kind == "uniform" else startup)
        trigger = lambda: time.time() >= deadline  # noqa: E731
    elif kind == "step":
        delay, seen = rng.uniform(0.0, step_gap), {}

        def trigger():
            if "t" not in seen:
                with open(log_path) as f:
                    f.seek(offset)
                    if re.search(r"^\d\d:\d\d:\d\d step +\d+/\d+", f.read(), re.M):
                        seen["t"] = time.time()
                return False
            return time.time() >= seen["t"] + delay
    else:  # save
        delay, seen = rng.uniform(0.0, 0.3), {}

        def trigger():
            if "t" not in seen:
                if _saving(workdir) - before_tmp:
                    seen["t"] = time.time()
                return False
            return time.time() >= seen["t"] + delay
    while p.poll() is None and not trigger() and time.time() < t0 + timeout:
        time.sleep(0.01)
    out["at_s"] = round(time.time() - t0, 2)
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
        p.wait()
        out["killed"] = p.returncode == -signal.SIGKILL
    else:
        out["killed"] = False
    out["status"] = p.returncode
    left = _checkpoint_names(workdir)
    out["left"] = left
    out["half_written_save_left"] = bool(_saving(workdir) - before_tmp)
    return out


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


def _phases(log_path: str) -> tuple[float, float]:
    """(seconds from the first log line to "step compiled", seconds between two progress lines) of a run."""
    stamps, compiled, steps = [], None, []
    for line in open(log_path, errors="replace"):
        m = _STAMP.match(line)
        if not m:
            continue
        t = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3))
        stamps.append(t)
        if "step compiled" in line and compiled is None:
            compiled = t
        elif re.match(r"^\d\d:\d\d:\d\d step +\d+/\d+", line):
            steps.append(t)
    startup = (compiled - stamps[0]) if compiled is not None and stamps else 20.0
    gap = (steps[-1] - steps[0]) / (len(steps) - 1) if len(steps) > 1 else 2.0
    return float(max(startup, 1.0)), float(max(gap, 0.5))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--config", default="configs/default.py:smoke")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--kills", type=int, default=5, help="kill -9 attempts per trial")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("overrides", nargs="*", help="extra flags, e.g. --config.train.checkpoint_every=2")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    overrides = list(a.overrides)
    rng = random.Random(a.seed)
    t_all = time.time()
    ref = os.path.join(a.out, "reference")
    report = {"config": a.config, "overrides": overrides, "seed": a.seed, "code": ROOT,
              "load_start": os.getloadavg(), "trials": []}
    ref_log = os.path.join(a.out, "reference.log")
    if not os.path.isfile(os.path.join(ref, "summary.json")):
        rc, seconds = run_to_end(command(a.config, ref, overrides), env, ref_log, a.timeout)
        if rc != 0:
            print(f"reference run failed (status {rc}); see {ref_log}")
            return 1
        report["reference_seconds"] = seconds
    else:
        report["reference_seconds"] = json.load(open(os.path.join(ref, "summary.json"))).get("seconds", 60.0)
    startup, step_gap = _phases(ref_log)
    # A restarted run skips the zero-shot evaluation and (compile cache) most of the compilation, and has
    # fewer steps left: until one is measured, the window is the start-up plus half of the rest.
    window = startup + 0.5 * max(float(report["reference_seconds"]) - startup, 1.0)
    report.update(startup_seconds=startup, progress_line_seconds=step_gap)
    print(f"reference {report['reference_seconds']:.0f} s (start-up {startup:.0f} s, {step_gap:.1f} s between "
          f"progress lines)", flush=True)
    ok_trials = 0
    for t in range(a.trials):
        wd = os.path.join(a.out, f"trial{t}")
        log_path = os.path.join(a.out, f"trial{t}.log")
        kills = []
        for _ in range(a.kills):
            kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
            kills.append(run_and_kill(command(a.config, wd, overrides), env, log_path, kind, rng, window, startup,
                                      step_gap, a.timeout))
            kills[-1]["window_s"] = round(window, 1)
            print(f"  trial {t} kill {len(kills)}: {kills[-1]}", flush=True)
            if not kills[-1]["killed"]:  # it finished before the kill moment
                break
        rc, seconds = run_to_end(command(a.config, wd, overrides), env, log_path, a.timeout)
        window = max(seconds, 2.0)  # the last measured run of a resumed job, to its end
        equal, detail = final_state_equal(ref, wd) if rc == 0 else (False, f"final run status {rc}")
        damaged = [d for d in _checkpoint_names(wd) if d.startswith("damaged-")]
        ok_trials += equal
        report["trials"].append({"workdir": wd, "kills": kills, "final_status": rc, "final_run_seconds": seconds,
                                 "bitwise_equal": equal, "detail": detail, "damaged_set_aside": damaged})
        n_killed = sum(k["killed"] for k in kills)
        print(f"trial {t}: {n_killed} kill -9 cycles ({sum(k['half_written_save_left'] for k in kills)} inside an "
              f"asynchronous save), final status {rc}, bitwise equal: {equal} ({detail})"
              + (f", set aside: {damaged}" if damaged else ""), flush=True)
        report["wall_seconds"] = time.time() - t_all
        report["load_end"] = os.getloadavg()
        with open(os.path.join(a.out, "kill_cycles.json"), "w") as f:
            json.dump(report, f, indent=2)
    all_kills = [k for tr in report["trials"] for k in tr["kills"]]
    total = sum(k["killed"] for k in all_kills)
    in_save = sum(k["killed"] and k["half_written_save_left"] for k in all_kills)
    by_kind = {kind: sum(k["killed"] for k in all_kills if k["kind"] == kind) for kind, _ in KINDS}
    report.update(kill_cycles=total, kills_inside_a_save=in_save, kill_cycles_by_kind=by_kind,
                  misses=len(all_kills) - total, bitwise_equal_trials=ok_trials)
    with open(os.path.join(a.out, "kill_cycles.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"{ok_trials}/{a.trials} trials bitwise equal to the reference; {total} kill -9 cycles in all "
          f"({in_save} left a half-written save; by kind {by_kind}; {len(all_kills) - total} misses); "
          f"{report['wall_seconds'] / 60:.1f} min; load {report['load_start']} -> {report['load_end']}")
    return 0 if ok_trials == a.trials else 1


if __name__ == "__main__":
    sys.exit(main())
