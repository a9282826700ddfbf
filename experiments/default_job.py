"""The default job's loss, decided by measurement: variants of `configs/default.py` side by side, several seeds.

Each run is the README's main job (`python -m cocohanere_jax.main --config=configs/default.py:<args>`) with
``train.seed`` set, in its own work directory under ``--out``; a finished run (its ``summary.json``) is not
run again, so the script resumes. Then it prints one table row per variant: steps, wall minutes, test MRR
(mean and sample standard deviation over the seeds), R@1 / R@10 and the best validation MRR.

    python -m experiments.default_job --out=$HOME/cocohanere-default-job --seeds=0,1,2 \
        --variants="in_batch=in_batch,num_steps=160;lookahead_batch="

A variant is ``name=config arguments`` (presets and settings of configs/common.py, after the colon of
``--config=configs/default.py:``; empty: the default job itself); variants are separated by ``;``. Compare
at equal wall-clock by giving the costlier variant fewer steps (its step-cost ratio from
`experiments.measure`), and read the wall column. A finished run is reused only if its ``config.json`` is
the configuration its variant resolves to now (an edited variant or config file is an error, not a silent
mix of old and new runs).
Runs one after another: the table's minutes are comparable only if nothing else shared the machine (the
load average at the start and end of each run is recorded).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("out", os.path.join(os.path.expanduser("~"), "cocohanere-default-job"), "experiment folder")
    flags.DEFINE_string("variants", "in_batch=in_batch,num_steps=160;lookahead_batch=",
                        "name=config arguments, separated by ';'")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "train.seed values")
    flags.DEFINE_bool("report_only", False, "print the table from the finished runs; run nothing")


def parse_variants(text: str) -> list[tuple[str, str]]:
    out = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        name, sep, args = part.partition("=")
        if not sep or not name.strip() or not name.strip().isidentifier():
            raise app.UsageError(f"--variants: {part!r} is not name=config arguments (e.g. in_batch=in_batch)")
        out.append((name.strip(), args.strip()))
    if len({n for n, _ in out}) != len(out):
        raise app.UsageError(f"--variants: a variant name is given twice in {text!r}")
    return out


def config_argument(args: str, seed: int) -> str:
    return "configs/default.py:" + ",".join(a for a in (args, f"train.seed={seed}") if a)


def resolved_config(args: str, seed: int) -> dict:
    """The configuration `cocohanere_jax.main` runs for this variant and seed (as its config.json holds it)."""
    from configs import default

    return json.loads(default.get_config(config_argument(args, seed).partition(":")[2]).to_json())


def run_one(workdir: str, args: str, seed: int) -> dict:
    """The run's record, running it first unless it finished before (record.json beside summary.json) with
    the configuration the variant resolves to now."""
    record_path = os.path.join(workdir, "record.json")
    if os.path.exists(record_path) and os.path.exists(os.path.join(workdir, "summary.json")):
        ran = json.load(open(os.path.join(workdir, "config.json")))
        now = resolved_config(args, seed)
        if ran != now:
            changed = sorted(f"{section}.{key}: {ran.get(section, {}).get(key)!r} -> {fields.get(key)!r}"
                             for section, fields in now.items() for key in fields
                             if ran.get(section, {}).get(key) != fields.get(key))
            raise SystemExit(f"default_job: {workdir} ran another configuration than {config_argument(args, seed)!r} "
                             f"gives now ({'; '.join(changed) or 'other sections'}); use another variant name or "
                             "--out, or delete that folder to run it again")
        return json.load(open(record_path))
    cmd = [sys.executable, "-m", "cocohanere_jax.main", f"--config={config_argument(args, seed)}",
           f"--workdir={workdir}"]
    print("$", " ".join(cmd), flush=True)
    # An interrupted run resumes from its checkpoints: its wall time then counts this invocation only.
    ckpt = os.path.join(workdir, "checkpoints")
    resumed = bool(os.path.isdir(ckpt) and os.listdir(ckpt))
    load_start, t = os.getloadavg(), time.time()
    subprocess.run(cmd, check=True)
    record = {"command": cmd, "seconds": time.time() - t, "load_start": load_start, "load_end": os.getloadavg(),
              "resumed": resumed}
    with open(record_path, "w") as f:
        json.dump(record, f)
    return record


def summarise(name: str, args: str, runs: list[tuple[dict, dict]]) -> dict:
    """One table row from [(summary.json, record.json)] of a variant's seeds."""
    mrr = [s["test"]["mrr"] for s, _ in runs]
    return {
        "variant": name, "args": args, "seeds": len(runs), "steps": runs[0][0]["total_steps"],
        "wall_min": statistics.mean(r["seconds"] for _, r in runs) / 60,
        "test_mrr": statistics.mean(mrr), "test_mrr_sd": statistics.stdev(mrr) if len(mrr) > 1 else 0.0,
        "test_mrr_runs": mrr,
        "r1": statistics.mean(s["test"]["r@1"] for s, _ in runs),
        "r10": statistics.mean(s["test"]["r@10"] for s, _ in runs),
        "best_valid": statistics.mean(s["best_valid"]["mrr"] for s, _ in runs),
        "load": [min(r["load_start"][0] for _, r in runs), max(r["load_end"][0] for _, r in runs)],
        "resumed": sum(bool(r.get("resumed")) for _, r in runs),
    }


def table(rows: list[dict]) -> str:
    base = rows[0]["test_mrr"]
    lines = ["| variant (`configs/default.py:...`) | seeds | steps | wall min | test MRR | per seed | vs first "
             "| R@1 / R@10 | best valid MRR |", "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['variant']} ({f'`{a}`' if (a := r['args']) else 'the default'}) | {r['seeds']} | {r['steps']} | {r['wall_min']:.1f}{'*' if r.get('resumed') else ''} | "
            f"{r['test_mrr']:.3f} ± {r['test_mrr_sd']:.3f} | {', '.join(f'{x:.3f}' for x in r['test_mrr_runs'])} | "
            f"{100 * (r['test_mrr'] / base - 1):+.1f}% | {r['r1']:.3f} / {r['r10']:.3f} | {r['best_valid']:.3f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    variants = parse_variants(FLAGS.variants)
    seeds = [int(s) for s in FLAGS.seeds]
    rows = []
    for name, args in variants:
        runs = []
        for seed in seeds:
            workdir = os.path.join(FLAGS.out, f"{name}_s{seed}")
            if FLAGS.report_only and not os.path.exists(os.path.join(workdir, "record.json")):
                continue
            record = run_one(workdir, args, seed)
            runs.append((json.load(open(os.path.join(workdir, "summary.json"))), record))
        if runs:
            rows.append(summarise(name, args, runs))
    if not rows:
        raise SystemExit(f"default_job: no finished runs under {FLAGS.out}")
    print(table(rows))
    print("load average (1 min), lowest at a run's start -> highest at a run's end:",
          ", ".join(f"{r['variant']} {r['load'][0]:.1f} -> {r['load'][1]:.1f}" for r in rows))
    if any(r["resumed"] for r in rows):
        print("* some runs resumed from their checkpoints after an interruption: their wall minutes count only "
              "the last invocation")


if __name__ == "__main__":
    define_flags()
    app.run(main)
