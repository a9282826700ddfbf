"""The ablation harness (experiments/): variant switches, skip/resume, BM25 by hand, the leakage check, the
report. One real tiny training (interrupted in this process, resumed in a child process); the rest works on
fake run directories."""

import dataclasses
import json
import math
import os
import sys

import numpy as np
import pytest

from cocohanere_jax import bm25, evaluate, sharding
from cocohanere_jax.step_config import StepConfig
from experiments import ablation, default_job, leakage, report

import tiny_setup


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("exp_inputs")
    return tiny_setup.tiny_bert_folder(str(base / "model")), tiny_setup.csn_dir(str(base / "csn"))


# ------------------------------------------------------------------------------------------ variants


def test_variants_map_to_the_config_switches():
    sizing = ablation.Sizing(steps=7)
    expected = {  # variant: (bimodal_weight, hard_negative_weight, knn or None when unused)
        "in_batch": (1.0, 0.0, None),
        "full": (1.0, 1.0, "bi"),
        "wo_bcl": (0.0, 1.0, "bi"),
        "uni_knn": (1.0, 1.0, "uni"),
        "equal_compute": (1.0, 0.0, None),
    }
    for name, (bw, hw, knn) in expected.items():
        c = ablation.run_config(sizing, "go", name, seed=2)
        step = StepConfig.from_config(c["step"])
        assert (step.bimodal_weight, step.hard_negative_weight) == (bw, hw), name
        assert step.uses_hard_negatives == (hw > 0)
        if knn:
            assert step.knn == knn, name
        assert c["train"]["num_steps"] == 7 and c["train"]["seed"] == 2 and c["data"]["language"] == "go"
        assert c["train"]["zero_shot_eval"] is False and ablation.VARIANTS[name].seeded
        # Everything else is shared by all trained variants.
        rest = {k: v for k, v in c["step"].items() if k not in ("bimodal_weight", "hard_negative_weight", "knn")}
        assert rest == {k: v for k, v in ablation.run_config(sizing, "go", "full", 2)["step"].items()
                        if k not in ("bimodal_weight", "hard_negative_weight", "knn")}
    zero = ablation.run_config(sizing, "go", "zero_shot", 0)
    assert zero["train"]["num_steps"] == 0 and zero["train"]["num_epochs"] == 0
    assert not ablation.VARIANTS["zero_shot"].seeded and not ablation.VARIANTS["bm25"].seeded
    # Equal compute: its own step count and evaluation interval.
    ec = ablation.run_config(sizing, "go", "equal_compute", 1, steps=19, eval_every=10)
    assert ec["train"]["num_steps"] == 19 and ec["train"]["eval_every"] == 10
    # Investigation overrides reach the trained runs only.
    probe = ablation.Sizing(sets=("step.false_negative_margin=0.1", "step.mask_duplicates=False"))
    assert ablation.run_config(probe, "go", "full", 0)["step"]["false_negative_margin"] == 0.1
    assert ablation.run_config(probe, "go", "full", 0)["step"]["mask_duplicates"] is False
    assert ablation.run_config(probe, "go", "zero_shot", 0)["step"]["false_negative_margin"] is None
    with pytest.raises(ValueError, match="section.field"):
        ablation.run_config(ablation.Sizing(sets=("step.nope=1",)), "go", "full", 0)


# --------------------------------------------------------------------------------------------- BM25


def test_bm25_hand_computed():
    assert bm25.tokenize("def readJSONFile_v2(path): return HTTPServer") == [
        "def", "read", "json", "file", "v", "2", "path", "return", "http", "server"]
    docs = ["read file", "read json file data", "write data"]  # lengths 2, 4, 2; avgdl = 8/3
    index = bm25.BM25(docs)
    idf = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))  # "read" and "file" are in 2 of 3 documents: ln 1.6
    norm0 = 1.2 * (1 - 0.75 + 0.75 * 2 / (8 / 3))  # 0.975
    norm1 = 1.2 * (1 - 0.75 + 0.75 * 4 / (8 / 3))  # 1.65
    expected = [2 * idf * 2.2 / (1 + norm0), 2 * idf * 2.2 / (1 + norm1), 0.0]
    np.testing.assert_allclose(index.scores("Read file"), expected, rtol=1e-12)
    np.testing.assert_allclose(expected[:2], [1.0470967, 0.7803834], rtol=1e-6)  # 2 ln(1.6) 2.2/1.975, 2 ln(1.6) 2.2/2.65
    assert index.idf("write") == pytest.approx(math.log(1 + 2.5 / 1.5))
    r = bm25.ranks(index, ["read file", "read file", "write json"], [0, 2, 1])
    assert r[0] == 1 and r[1] == 3
    # "write json": d1 has json (idf ln 2.667 over norm1), d2 has write (same idf, shorter): d2 first.
    assert r[2] == 2
    # A query sharing no token ties with everything: a seeded uniformly random place among the ties.
    ranks = [bm25.ranks(index, ["zebra"], [1], seed=s)[0] for s in range(30)]
    assert set(ranks) == {1, 2, 3}
    assert bm25.ranks(index, ["zebra"], [1], seed=4)[0] == bm25.ranks(index, ["zebra"], [1], seed=4)[0]
    task = evaluate.RetrievalTask(queries=["read file", "write data"], targets=np.array([0, 2]), codebase=docs)
    m = bm25.evaluate(task)
    assert m["mrr"] == 1.0 and m["r@1"] == 1.0 and m["num_queries"] == 2 and m["zero_score_targets"] == 0


# ------------------------------------------------------------------------------------------ leakage


def test_leakage_check_catches_an_injected_leak(inputs, tmp_path):
    _, data = inputs
    clean = leakage.check_language(data, "python")
    assert clean["test_in_train"] == 0 and clean["valid_in_train"] == 0 and clean["test_functions"] > 0
    # Copy the tiny corpus and put one test function, re-indented, into train.
    root = tmp_path / "leaky"
    (root / "python").mkdir(parents=True)
    for name in ("train", "valid", "test", "codebase"):
        (root / "python" / f"{name}.jsonl").write_text((open(os.path.join(data, "python", f"{name}.jsonl")).read()))
    test_url = json.loads(open(root / "python" / "test.jsonl").readline())["url"]
    row = next(json.loads(line) for line in open(root / "python" / "codebase.jsonl") if json.loads(line)["url"] == test_url)
    row.update(url="leak#1", docstring_tokens=["a", "leaked", "function"],
               code_tokens=["\n  ".join(row["code_tokens"][:3])] + row["code_tokens"][3:])  # other whitespace
    with open(root / "python" / "train.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    found = leakage.check_language(str(root), "python", raise_on_leak=False)
    assert found["test_in_train"] == 1 and found["valid_in_train"] == 0
    with pytest.raises(leakage.LeakageError, match="1 of"):
        leakage.check_language(str(root), "python")
    # The harness refuses to run on it.
    with pytest.raises(leakage.LeakageError):
        ablation.run_all(str(tmp_path / "runs"), ablation.Sizing(corpus=str(root)), ["python"], [0], ["bm25"])


# ------------------------------------------------------------------------------- run state, planning


def _fake_run(out, lang, variant, seed, *, summary=None, step_s=None, steps=10, eval_every=5, valid=()):
    d = ablation.run_dir(out, lang, variant, seed)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        if step_s:
            for s in range(2, steps + 1, 2):
                # intervals starting at an evaluation step also carry the evaluation: 10x slower
                rate = 1 / (step_s * (10 if (s - 2) % eval_every == 0 and s > 2 else 1))
                f.write(json.dumps({"step": s, "kind": "train", "steps_per_sec": rate}) + "\n")
        for s, mrr in valid:
            f.write(json.dumps({"step": s, "kind": "valid", "mrr": mrr}) + "\n")
    if summary is not None:
        ablation.write_json(os.path.join(d, "summary.json"), {"total_steps": steps, "seconds": 1.0, **summary})
    return d


def _metrics(mrr):
    return {"mrr": mrr, "r@1": mrr / 2, "r@5": min(1, mrr * 1.2), "r@10": min(1, mrr * 1.3), "num_queries": 10,
            "codebase_size": 20}


def test_plan_statuses_and_equal_compute_derivation(tmp_path):
    out = str(tmp_path)
    sizing = ablation.Sizing(steps=10, eval_every=5, checkpoint_every=5)
    runs = {(r.variant, r.seed): r.status for r in ablation.plan(out, ["go"], [0], list(ablation.VARIANTS))}
    assert runs[("full", 0)] == "todo" and runs[("equal_compute", 0)] == "waiting"
    _fake_run(out, "go", "full", 0, summary={"test": _metrics(0.5)}, step_s=3.0)
    _fake_run(out, "go", "in_batch", 0, summary={"test": _metrics(0.4)}, step_s=1.0)
    d = ablation.run_dir(out, "go", "uni_knn", 0)
    os.makedirs(os.path.join(d, "checkpoints", "5"))
    d = ablation.run_dir(out, "go", "wo_bcl", 0)
    os.makedirs(d)
    ablation.write_json(os.path.join(d, "failed.json"), [{"error": "x"}, {"error": "y"}])
    runs = {(r.variant, r.seed): r.status for r in ablation.plan(out, ["go"], [0], list(ablation.VARIANTS))}
    assert runs == {("zero_shot", 0): "todo", ("bm25", 0): "todo", ("in_batch", 0): "done", ("full", 0): "done",
                    ("wo_bcl", 0): "failed", ("uni_knn", 0): "partial", ("equal_compute", 0): "todo"}
    assert ablation.run_status(d, max_attempts=3) == "todo"  # a third attempt is allowed
    # Evaluation intervals (10x slower) do not count: the medians are the plain step times.
    assert ablation.step_seconds(ablation.run_dir(out, "go", "full", 0), 5, 5) == pytest.approx(3.0)
    ec = ablation.equal_compute_plan(out, "go", 0, sizing)
    assert ec["steps"] == 30 and ec["full_steps"] == 10 and ec["eval_every"] == 15  # 2 evaluations, as full
    assert ec["full_train_seconds"] == pytest.approx(30.0)
    assert ec["full_load"] is None  # no load.jsonl in these fake runs
    assert ablation.equal_compute_plan(out, "go", 1, sizing) is None  # seed 1 has nothing yet
    # Another language timed `full` on a quieter machine (2.0 s) and `in_batch` under load (1.5 s): the
    # fastest median of each variant over all finished runs is the step time (unfinished runs do not count).
    _fake_run(out, "java", "full", 0, summary={"test": _metrics(0.5)}, step_s=2.0)
    _fake_run(out, "java", "in_batch", 0, summary={"test": _metrics(0.4)}, step_s=1.5)
    _fake_run(out, "java", "in_batch", 1, step_s=0.1)  # no summary.json: not finished
    ec = ablation.equal_compute_plan(out, "go", 0, sizing)
    assert ec["steps"] == 20 and ec["eval_every"] == 10
    assert ec["full_step_seconds"] == pytest.approx(2.0) and ec["in_batch_step_seconds"] == pytest.approx(1.0)
    assert ec["full_step_seconds_from"] == os.path.join("java", "full", "seed0")
    assert ec["in_batch_step_seconds_from"] == os.path.join("go", "in_batch", "seed0")
    assert ec["own_full_step_seconds"] == pytest.approx(3.0)


def test_refuses_out_inside_repo_and_a_changed_sizing(tmp_path):
    with pytest.raises(SystemExit, match="inside the repository"):
        ablation.run_all(os.path.join(ablation.REPO, "runs", "x"), ablation.Sizing())
    ablation.check_settings(str(tmp_path), ablation.Sizing(steps=5))
    ablation.check_settings(str(tmp_path), ablation.Sizing(steps=5))
    with pytest.raises(SystemExit, match="another sizing"):
        ablation.check_settings(str(tmp_path), ablation.Sizing(steps=6))


def test_interrupted_run_resumes_and_finished_runs_are_skipped(inputs, tmp_path, monkeypatch):
    """The one real training: killed at batch 4 (checkpoint at step 2) in this process, resumed by the same
    command in a child process (cocohanere_jax.main on the saved config.json), then skipped."""
    model, data = inputs
    out = str(tmp_path / "runs")
    sizing = ablation.Sizing(corpus=data, model=model, steps=4, batch=8, k=2, bank_size=16, query_length=16,
                             code_length=32, eval_every=2, log_every=1, checkpoint_every=2, max_eval_queries=8,
                             eval_batch=16)
    real_shard, calls = sharding.shard_batch, {"n": 0}

    def dying_shard(batch, mesh):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return real_shard(batch, mesh)

    monkeypatch.setattr(sharding, "shard_batch", dying_shard)
    with pytest.raises(KeyboardInterrupt):
        ablation.run_all(out, sizing, ["python"], [0], ["in_batch"], isolate=False)
    workdir = ablation.run_dir(out, "python", "in_batch", 0)
    assert ablation.run_status(workdir) == "partial"
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]

    monkeypatch.setattr(sharding, "shard_batch", real_shard)
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "4")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    final = ablation.run_all(out, sizing, ["python"], [0], ["in_batch"], isolate=True)
    assert [r.status for r in final] == ["done"]
    log = open(os.path.join(workdir, "log.txt")).read()
    console = open(os.path.join(workdir, "console.txt")).read()
    assert "resumed from" in log and "configs/registry.py:in_batch," in console
    steps = [r["step"] for r in _records(workdir, "train")]
    assert steps == [1, 2, 3, 3, 4]  # step 3 again after the resume from the step-2 checkpoint
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["total_steps"] == 4 and 0 < summary["test"]["mrr"] <= 1
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))  # pruned once done
    events = [json.loads(line)["event"] for line in open(os.path.join(workdir, "load.jsonl"))]
    assert events == ["start", "end", "start", "end"] and ablation.mean_load(workdir) >= 0
    assert json.load(open(os.path.join(workdir, "config.json")))["step"]["hard_negative_weight"] == 0.0

    def must_not_run(*a, **k):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(ablation, "execute", must_not_run)
    assert [r.status for r in ablation.run_all(out, sizing, ["python"], [0], ["in_batch"])] == ["done"]
    invocations = open(os.path.join(out, "invocations.jsonl")).read().splitlines()
    assert len(invocations) == 3 and json.loads(invocations[0])["machine"]["cpus"] >= 1


def _records(workdir, kind):
    from cocohanere_jax import metrics

    return metrics.read_metrics(workdir, kind)


# -------------------------------------------------------------------------------------------- report


def _fake_table(out):
    ablation.write_json(os.path.join(out, "settings.json"), ablation.Sizing(steps=10, eval_every=5).to_json())
    ablation.write_json(os.path.join(out, "leakage.json"), {
        "go": {"train_functions": 50, "test_functions": 10, "test_in_train": 0, "valid_functions": 9,
               "valid_in_train": 0}})
    with open(os.path.join(out, "invocations.jsonl"), "w") as f:
        f.write(json.dumps({"argv": ["ablation.py", f"--out={out}"], "machine": {"cpu": "Test CPU", "cpus": 2}}) + "\n")
    _fake_run(out, "go", "zero_shot", 0, steps=0,
              summary={"zero_shot_valid": _metrics(0.30), "zero_shot_test": _metrics(0.31)})
    _fake_run(out, "go", "bm25", 0, summary={"valid": _metrics(0.2), "test": _metrics(0.25)})
    for seed, mrr in ((0, 0.40), (1, 0.44)):
        _fake_run(out, "go", "in_batch", seed, summary={"test": _metrics(mrr)}, step_s=1.0,
                  valid=[(5, mrr - 0.05), (10, mrr)])
    _fake_run(out, "go", "full", 0, summary={"test": _metrics(0.5)}, step_s=3.0, valid=[(5, 0.45), (10, 0.5)])
    d = ablation.run_dir(out, "go", "wo_bcl", 0)
    os.makedirs(d)
    ablation.write_json(os.path.join(d, "failed.json"), [{"error": "NonFiniteLossError: nan"}] * 2)
    d = ablation.run_dir(out, "go", "equal_compute", 0)
    os.makedirs(d)
    ablation.write_json(os.path.join(d, "equal_compute.json"), ablation.equal_compute_plan(
        out, "go", 0, ablation.Sizing(steps=10, eval_every=5, checkpoint_every=5)))


def test_report_renders_partial_table_and_keeps_hand_written_text(tmp_path):
    out = str(tmp_path / "runs")
    os.makedirs(out)
    _fake_table(out)
    data = report.collect(out, ["go", "python"], [0, 1, 2], list(ablation.VARIANTS))
    plots, note = report.plot(data, str(tmp_path / "plots"))
    try:
        import matplotlib  # noqa: F401  (experiments/requirements.txt; not a runtime dependency)
    except ImportError:
        assert plots == [] and "matplotlib is not installed" in note
    else:
        assert note is None and [os.path.basename(p) for p in plots] == ["valid_mrr_go.png"]
        assert open(plots[0], "rb").read(4) == b"\x89PNG"
    results = tmp_path / "docs" / "RESULTS.md"
    results.parent.mkdir()
    results.write_text("# Results\n\nHand-written reading.\n\n" + report.BEGIN + "\nold\n" + report.END + "\n\nMore.\n")
    report.write_results(report.render(data, plots, note, str(results), ["--out=x"]), str(results))
    text = results.read_text()
    assert text.startswith("# Results\n\nHand-written reading.") and text.rstrip().endswith("More.")
    assert "\nold\n" not in text and text.count(report.BEGIN) == 1
    assert "| in-batch only (w/o HNCL) | 0.420 ± 0.028 (2/3 seeds) |" in text  # mean ± sample std
    assert "| zero-shot | 0.310 | not run |" in text and "| BM25 | 0.250 | not run |" in text
    assert "| CoCoHaNeRe bi-knn (full) | 0.500 (1/3 seeds) |" in text
    assert "| L^HN only (w/o BCL) | 1 failed, 2 not run |" in text and "NonFiniteLossError" in text
    assert "| in-batch, equal wall-clock | 1 not run, 2 waiting |" in text
    assert "| Go | 0 | 10 | 3.00 (go/full/seed0) | 1.00 (go/in_batch/seed0) | 30 | 30 | 3.00 / 1.00 |" in text
    # Paired: Go full (seed 0 only) minus in-batch of the same seed (0.40; seed 1's 0.44 has no partner).
    assert "| CoCoHaNeRe bi-knn (full) − in-batch only (w/o HNCL) | +0.100 (1/1 seeds > 0) | no pair yet |" in text
    assert "0 of 10" in text and "Test CPU, 2 CPUs" in text and f"--out={out}" in text
    assert ("](../plots/valid_mrr_go.png)" in text) == bool(plots)


def test_report_skips_plots_without_matplotlib(tmp_path, monkeypatch):
    out = str(tmp_path / "runs")
    os.makedirs(out)
    _fake_table(out)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    data = report.collect(out, ["go"], [0, 1, 2], list(ablation.VARIANTS))
    plots, note = report.plot(data, str(tmp_path / "plots"))
    assert plots == [] and "matplotlib is not installed" in note and not os.path.exists(tmp_path / "plots")
    path = str(tmp_path / "RESULTS.md")
    report.write_results(report.render(data, plots, note, path, []), path)
    assert "(no plot: matplotlib is not installed" in open(path).read()


def test_budget_plan_gives_every_variant_the_same_training_seconds():
    """experiments/budget.py: step counts from calibrated step times (never below in-batch's), the schedule's
    solved step count, and config arguments that load as the variants they name."""
    from configs import registry

    from cocohanere_jax.step_config import StepConfig
    from experiments import budget

    s = budget.Settings(steps=300, small_steps=100, seeds=(0,), small_seeds=(0, 1))
    step_s = {"in_batch": 1.0, "full": 3.0, "forward_only": 1.5, "top1": 2.0, "bank_negatives": 0.9, "bank_k8": 1.1}
    runs = {(r["budget"], r["variant"], r["seed"]): r for r in budget.plan(s, step_s)}
    assert runs[("large", "in_batch", 0)]["steps"] == 300 and runs[("large", "full", 0)]["steps"] == 100
    assert runs[("large", "bank_negatives", 0)]["steps"] == 300  # 0.9 s is noise below in-batch's 1.0 s
    assert runs[("large", "top1", 0)]["steps"] == 150 and runs[("large", "forward_only", 0)]["steps"] == 200
    late = runs[("large", "late_full", 0)]
    assert late["steps"] == 150 + 50 and late["extra"] == "step.hard_negative_start=150"
    assert late["training_seconds"] == pytest.approx(300)
    assert runs[("large", "full_equal_steps", 0)]["steps"] == 300
    long = runs[("large", "in_batch_long", 0)]  # in-batch given full_equal_steps' seconds
    assert long["steps"] == 900 and long["training_seconds"] == runs[("large", "full_equal_steps", 0)]["training_seconds"]
    assert runs[("large", "full_in_lang", 0)]["steps"] == 100  # costs what full costs
    assert {(b, v) for b, v, seed in runs if seed == 1} == {("small", "in_batch"), ("small", "full")}
    for r in runs.values():
        assert r["variant"] in ("full_equal_steps", "in_batch_long") or r["training_seconds"] == pytest.approx(
            300 if r["budget"] == "large" else 100, rel=0.02), r
        c = registry.get_config(budget.run_argument(s, r, "cache"))
        step = StepConfig.from_config(c.step)
        assert c.train.num_steps == r["steps"] and c.data.language == "all"
        assert step.uses_hard_negatives == (r["variant"] not in ("in_batch", "in_batch_long"))
    c = registry.get_config(budget.run_argument(s, runs[("large", "full_in_lang", 0)], ""))
    assert c.step.negatives_in_group and c.step.k == s.k
    c = registry.get_config(budget.run_argument(s, runs[("small", "bank_w025", 0)], ""))
    assert c.step.reencode_top == 0 and c.step.hard_negative_weight == 0.25


def test_budget_joint_variants_are_calibrated_and_load_as_joint():
    """Planned variants outside the historical calibration set are timed too (not costed by guess), and the
    joint variants' config arguments load as the joint loss on the negatives they name."""
    from configs import registry

    from cocohanere_jax.step_config import StepConfig
    from experiments import budget

    s = budget.Settings(variants=("in_batch", "bank_joint", "bank_joint_k8", "late_full"), small_variants=("in_batch",),
                        later_variants=("large/full_in_lang", "large/full_joint"))
    timed = budget.calibrated_variants(s)
    # in_batch (the budgets), full (late_full and full_in_lang are solved / costed from it), and the rest as
    # themselves; nothing the plan does not need.
    assert timed == ("in_batch", "full", "bank_joint", "bank_joint_k8", "full_joint")
    s = budget.Settings(variants=("in_batch", "neighbour_batch"), small_variants=("in_batch",),
                        later_variants=("large/neighbour_batch_in_lang", "large/neighbour_batch3"))
    assert budget.calibrated_variants(s) == ("in_batch", "neighbour_batch", "neighbour_batch3")
    # A later run may name its seed: the large budget's second seed of two variants, after the rest.
    s2 = budget.Settings(variants=("in_batch",), small_variants=("in_batch",), small_seeds=(0,),
                         later_variants=("large/in_batch@1", "large/neighbour_batch@1"))
    later = [r for r in budget.plan(s2, {"in_batch": 1.0, "neighbour_batch": 1.0}) if r["seed"] == 1]
    assert [(r["budget"], r["variant"], r["workdir"]) for r in later] == [
        ("large", "in_batch", "runs/large/in_batch/seed1"), ("large", "neighbour_batch", "runs/large/neighbour_batch/seed1")]
    with pytest.raises(ValueError, match="large/in_batch@1"):
        budget.later_run("large/in_batch@one")
    for name, pairs, in_group in (("neighbour_batch", 1, False), ("neighbour_batch_in_lang", 1, True),
                                  ("neighbour_batch3", 3, False)):
        run = {"budget": "large", "variant": name, "seed": 0, "steps": 10, "eval_every": 5,
               "extra": budget.VARIANTS[name][1]}
        step = StepConfig.from_config(registry.get_config(budget.run_argument(s, run, "")).step)
        assert (step.neighbour_pairs, step.negatives_in_group, step.hard_negative_weight) == (pairs, in_group, 0.0)
    s = budget.Settings(variants=("in_batch", "bank_joint", "bank_joint_k8", "late_full"), small_variants=("in_batch",),
                        later_variants=("large/full_in_lang", "large/full_joint"))
    step_s = {v: 1.0 for v in timed} | {"full": 3.0, "full_joint": 3.0}
    runs = {(r["budget"], r["variant"]): r for r in budget.plan(s, step_s)}
    for name, k, top in (("bank_joint", s.k, 0), ("bank_joint_k8", 8, 0), ("full_joint", s.k, None)):
        step = StepConfig.from_config(registry.get_config(budget.run_argument(s, runs[("large", name)], "")).step)
        assert (step.hard_negative_loss, step.k, step.reencode_top) == ("joint", k, top), name
    assert runs[("large", "full_joint")]["steps"] == 100 and runs[("large", "bank_joint")]["steps"] == 300
    # Anchor-only L^HN (step.hard_negative_anchor_only), charged as the step it stops a gradient in.
    for name, top, gradient, lang, k in (("bank_anchor", 0, True, False, s.k),
                                         ("forward_only_anchor", None, False, False, s.k),
                                         ("lang_bank_anchor", 0, True, True, s.k), ("bank_anchor_k8", 0, True, False, 8),
                                         ("bank_anchor_w2", 0, True, False, s.k),
                                         ("lookahead_bank_anchor", 0, True, False, s.k)):
        run = {"budget": "small", "variant": name, "seed": 0, "steps": 10, "eval_every": 5,
               "extra": budget.VARIANTS[name][1]}
        config = registry.get_config(budget.run_argument(s, run, ""))
        step = StepConfig.from_config(config.step)
        assert (step.hard_negative_anchor_only, step.reencode_top, step.negative_gradient,
                step.negatives_in_group, config.train.language_batches, step.k) == (True, top, gradient, lang, lang, k), name
        if name == "lookahead_bank_anchor":  # its own calibration, never charged below what it contains
            assert name not in budget.COST_AS and (config.train.lookahead_batches, config.train.lookahead_group,
                                                   step.hard_negative_weight) == (32, 4, 1.0)
            assert budget.charged({"in_batch": 1.0, name: 1.0, "lookahead_batch": 1.07, "bank_negatives": 1.02})[
                name] == 1.07
        else:
            assert budget.COST_AS[name] == ("bank_k8" if k == 8 else budget.VARIANTS[name][0]), name
            assert step.hard_negative_weight == (2.0 if name == "bank_anchor_w2" else 1.0), name


def test_budget_calibrates_a_later_variant_beside_in_batch_and_carries_its_ratio(tmp_path, monkeypatch):
    """A variant planned after calibration.json was written is timed with in-batch in one new process; its
    step time enters the old calibration as its ratio to that in-batch time (nothing else is re-timed)."""
    import subprocess
    import types

    from configs import registry
    from experiments import budget

    out = str(tmp_path)
    old = {"command": "old", "time": "t", "loadavg_before": [0], "loadavg_after": [0], "machine": {}, "rows": [],
           "step_s": {"in_batch": 3.0, "neighbour_batch": 3.3}}
    budget.ablation.write_json(os.path.join(out, "calibration.json"), old)
    commands = []

    def fake_run(cmd, **kwargs):
        if "experiments.measure" not in cmd:  # (ablation.machine asks uname)
            return types.SimpleNamespace(returncode=0, stdout="x86_64", stderr="")
        commands.append(cmd)
        rows = [{"variant": "in_batch", "step_s_median": 2.0, "compile_s": 1.0},
                {"variant": "lookahead_batch", "step_s_median": 2.2, "compile_s": 1.0}]
        return types.SimpleNamespace(returncode=0, stdout="\n".join(json.dumps(r) for r in rows), stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    s = budget.Settings(variants=("in_batch", "neighbour_batch"), small_variants=(),
                        later_variants=("large/lookahead_batch_in_lang", "large/lookahead_batch8_in_lang"))
    cal = budget.calibrate(out, s)
    assert len(commands) == 1 and "--variants=in_batch,lookahead_batch" in " ".join(commands[0])
    assert cal["step_s"] == {"in_batch": 3.0, "neighbour_batch": 3.3, "lookahead_batch": pytest.approx(3.3)}
    assert cal["added"][0]["variants"] == ["lookahead_batch"] and cal["added"][0]["scaled_by"] == 1.5
    assert budget.calibrate(out, s) == cal and len(commands) == 1  # complete now: nothing timed again
    runs = {r["variant"]: r for r in budget.plan(s, cal["step_s"])}
    assert runs["lookahead_batch_in_lang"]["steps"] == round(300 * 3.0 / 3.3)
    for name, group in (("lookahead_batch_in_lang", 4), ("lookahead_batch8_in_lang", 8)):
        c = registry.get_config(budget.run_argument(s, runs[name], ""))
        assert (c.train.lookahead_batches, c.train.lookahead_group, c.step.negatives_in_group,
                c.step.hard_negative_weight) == (32, group, True, 0.0)


def test_budget_multi_setting_variant_calibrates_and_later_runs_can_be_added(tmp_path):
    """A variant with several settings is one item of experiments.measure's comma-separated --variants
    ('+' between settings), loads with every setting, and adding later runs to an experiment folder keeps
    its runs, where changing any other setting is refused, naming it."""
    from configs import registry
    from experiments import budget

    spec = budget.calibration_spec("lookahead_bank_w025")
    assert "," not in spec and spec.split("+")[0] == "bank_negatives"
    assert budget.calibration_spec("in_batch") == "in_batch"
    s = budget.Settings(variants=("in_batch",), small_variants=(), later_variants=("small/lookahead_bank_w025@2",))
    # Timed itself, and never charged less than look-ahead batches or bank negatives alone (it does all of
    # the work of each); a floor whose variant was not timed is skipped.
    assert budget.calibrated_variants(s) == ("in_batch", "bank_negatives", "lookahead_bank_w025", "lookahead_batch")
    (run,) = [r for r in budget.plan(s, {"in_batch": 1.0, "lookahead_bank_w025": 1.1, "lookahead_batch": 1.05})
              if r["seed"] == 2]
    assert (run["budget"], run["steps"]) == ("small", round(100 / 1.1))
    (run,) = [r for r in budget.plan(s, {"in_batch": 1.0, "lookahead_bank_w025": 0.95, "lookahead_batch": 1.07,
                                         "bank_negatives": 1.02}) if r["seed"] == 2]
    assert run["steps"] == round(100 / 1.07)
    assert budget.charged({"in_batch": 1.0, "lookahead_bank_w025": 0.9, "bank_negatives": 1.2}) == {
        "in_batch": 1.0, "lookahead_bank_w025": 1.2, "bank_negatives": 1.2}
    c = registry.get_config(budget.run_argument(s, run, ""))
    assert (c.train.lookahead_batches, c.train.lookahead_group, c.step.negatives_in_group,
            c.step.hard_negative_weight, c.step.reencode_top) == (32, 4, True, 0.25, 0)

    out = str(tmp_path)
    budget.ablation.write_json(os.path.join(out, "calibration.json"),
                               {"step_s": {"in_batch": 1.0, "lookahead_bank_w025": 1.1, "lookahead_batch": 1.05,
                                           "bank_negatives": 1.0}})
    budget.ablation.write_json(os.path.join(out, "settings.json"), budget._json_settings(s))
    more = dataclasses.replace(s, later_variants=s.later_variants + ("small/lookahead_bank_w025@0",))
    assert len(budget.run_all(out, more, dry_run=True)) == 3  # the large in-batch run and both later ones
    assert sorted(os.listdir(out)) == ["calibration.json", "settings.json"]  # a dry run wrote nothing
    with pytest.raises(SystemExit, match="batch"):
        budget.run_all(out, dataclasses.replace(s, batch=64), dry_run=True)
    # A folder made before a setting existed holds that setting's default; another value is refused.
    older = {k: v for k, v in budget._json_settings(s).items() if k != "also_test_candidates"}
    budget.ablation.write_json(os.path.join(out, "settings.json"), older)
    assert len(budget.run_all(out, s, dry_run=True)) == 2
    whole = dataclasses.replace(s, also_test_candidates="codebase")
    with pytest.raises(SystemExit, match="also_test_candidates"):
        budget.run_all(out, whole, dry_run=True)
    for settings, pool in ((s, ""), (whole, "codebase")):
        c = registry.get_config(budget.run_argument(settings, run, ""))
        assert (c.data.eval_candidates, c.data.also_test_candidates) == ("targets", pool)


def test_default_job_variants_and_table(tmp_path):
    """experiments/default_job.py: variant parsing, the run's config argument, a finished run is not run again,
    and the table's mean, spread and relative difference."""
    assert default_job.parse_variants("a=in_batch; b=lookahead_batch,num_steps=150;") == [
        ("a", "in_batch"), ("b", "lookahead_batch,num_steps=150")]
    for bad in ("in_batch", "a b=x", "a=x;a=y"):
        with pytest.raises(Exception, match="--variants"):
            default_job.parse_variants(bad)
    assert default_job.config_argument("in_batch", 2) == "configs/default.py:in_batch,train.seed=2"
    assert default_job.config_argument("", 0) == "configs/default.py:train.seed=0"
    rows = []
    for name, mrrs in (("a", (0.60, 0.62)), ("b", (0.63, 0.63))):
        runs = []
        for seed, mrr in enumerate(mrrs):
            workdir = tmp_path / f"{name}_s{seed}"
            workdir.mkdir()
            summary = {"test": {"mrr": mrr, "r@1": 0.5, "r@10": 0.8}, "best_valid": {"mrr": 0.6}, "total_steps": 150}
            record = {"seconds": 300.0, "load_start": [1.0, 1, 1], "load_end": [2.0, 1, 1]}
            (workdir / "summary.json").write_text(json.dumps(summary))
            (workdir / "record.json").write_text(json.dumps(record))
            args = "in_batch,num_steps=160" if name == "a" else ""
            (workdir / "config.json").write_text(json.dumps(default_job.resolved_config(args, seed)))
            assert default_job.run_one(str(workdir), args, seed) == record  # finished: read back, not run
            runs.append((summary, record))
        rows.append(default_job.summarise(name, args, runs))
    assert rows[0]["test_mrr"] == pytest.approx(0.61) and rows[0]["test_mrr_sd"] == pytest.approx(0.02 ** 0.5 / 10)
    text = default_job.table(rows)
    assert "| 0.610 ± 0.014 | 0.600, 0.620 | +0.0% |" in text and "| 0.630 ± 0.000 | 0.630, 0.630 | +3.3% |" in text
    assert "| a (`in_batch,num_steps=160`) |" in text and "| b (the default) |" in text
    assert "| 5.0 |" in text and "5.0*" not in text
    resumed = default_job.summarise("c", "", [(summary, dict(record, resumed=True))])
    assert resumed["resumed"] == 1 and "| 5.0* |" in default_job.table([resumed])
    # A finished run whose configuration is not what its variant gives now is an error naming the change.
    with pytest.raises(SystemExit, match=r"train.num_steps: 160 -> 150.*another variant name"):
        default_job.run_one(str(tmp_path / "a_s0"), "in_batch", 0)


def test_presets_set_the_batch_order():
    """configs/default.py trains look-ahead batches; every loss preset puts batches back in the iterator's
    order, so `:full` is the paper's step and `:in_batch` plain in-batch training."""
    from configs import default

    c = default.get_config("")
    assert (c.train.lookahead_batches, c.train.lookahead_group, c.train.num_steps) == (32, 4, 150)
    assert c.step.hard_negative_weight == 0.0
    for preset in ("full", "in_batch", "top1", "neighbour_batch"):
        c = default.get_config(preset)
        assert c.train.lookahead_batches == 0 and c.train.lookahead_group == 2, preset
    assert default.get_config("full").step.hard_negative_weight == 1.0
    c = default.get_config("full,train.lookahead_batches=32")  # settings after a preset still apply
    assert c.train.lookahead_batches == 32 and c.step.hard_negative_weight == 1.0
    c = default.get_config("full,lookahead_batch")  # presets apply in order: the last sets the batch order
    assert (c.train.lookahead_batches, c.train.lookahead_group, c.step.hard_negative_weight) == (32, 4, 0.0)


def test_false_negative_guard_stats():
    """experiments/neighbours.py: the margin masks before the top-k (the next candidates move up), and the
    shares it reports are counted on the right neighbours (checked against a hand count)."""
    from experiments import neighbours

    # 3 anchors x 4 candidates; positives .5, .5, -.5. Candidate 0 of anchor 0 is a near-copy.
    scores = np.array([[0.9, 0.6, 0.4, 0.52], [0.3, 0.2, 0.1, -np.inf], [-0.4, -0.6, -0.42, -0.9]])
    positive = np.array([0.5, 0.5, -0.5])
    copies = {(0, 0)}
    is_copy = lambda nn: np.array([[(i, j) in copies for j in row] for i, row in enumerate(nn)])  # noqa: E731
    # margin 0.1: anchor 0 drops .9 and .6 (> .55), keeps .52 and .4; anchor 2 drops -.4 and -.42 (> -.45).
    order = np.argsort(-scores, axis=1)
    stats = neighbours.guard_stats(scores, positive, order, [2], 0.1, is_copy)[2]
    assert stats["masked"] == round(4 / 6, 4)  # of the unguarded top 2: (0: .9, .6), (1: none), (2: -.4, -.42)
    assert stats["near_copy_of_masked"] == 0.25 and stats["near_copy_caught"] == 1.0
    assert stats["near_copy_after"] == 0.0
    # after the guard: anchor 0 gets .52 (above .5) and .4; anchor 1 .3, .2; anchor 2 -.6, -.9
    assert stats["above_positive_after"] == round(1 / 6, 4)
    none = neighbours.guard_stats(scores, positive, order, [2], 10.0, is_copy)[2]  # a margin that masks nothing
    assert none["masked"] == 0.0 and none["near_copy_of_masked"] is None and none["near_copy_after"] == round(1 / 6, 4)


def test_budget_report_sets_both_test_pools_side_by_side():
    """experiments/budget_report.py: with the whole-codebase test (--also_test_candidates=codebase), each
    variant's two pools, their means against in-batch and the difference to in-batch of the same seed."""
    from experiments import budget_report

    def result(mrr, size):
        return {"mrr": mrr, **{f"{lang}/mrr": mrr for lang in budget_report.LANGS},
                **{f"{lang}/codebase_size": size for lang in budget_report.LANGS}}

    def run(variant, seed, own, whole):
        return {"budget": "small", "variant": variant, "seed": seed, "steps": 100, "training_seconds": 142.0,
                "done": True, "test": result(own, 500), "test_codebase": result(whole, 2500)}

    runs = [dict(run("in_batch", 0, 0.60, 0.40), zero_shot=result(0.5, 500), zero_shot_codebase=result(0.28, 2500)),
            run("bank_anchor", 0, 0.66, 0.48),
            run("in_batch", 1, 0.50, 0.30), run("bank_anchor", 1, 0.50, 0.33)]
    calibration = {"command": "python -m experiments.measure", "time": "t", "loadavg_before": [1.0],
                   "loadavg_after": [1.0], "machine": {}, "rows": [], "step_s": {"in_batch": 1.4, "bank_negatives": 1.4}}
    settings = {"batch": 32, "k": 2, "bank_size": 1024, "query_length": 32, "code_length": 64,
                "learning_rate": 5e-5, "temperature": 0.05, "eval_queries": 500, "language": "all"}
    text = budget_report.render({"runs": runs, "calibration": calibration, "step_s": calibration["step_s"],
                                 "settings": settings})
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line for line in text.splitlines()
            if line.startswith("| ") and ("own codes" in line or "whole codebase" in line)}
    assert "python 500 / 2,500" in text
    # own codes: .58 against .55 (+5.5%), per seed +10.0% and +0.0%; whole codebase: .405 against .35 (+15.7%),
    # per seed +20.0% and +10.0%.
    assert "| 0.580 | +5.5% | +10.0%, +0.0% |" in rows[("bank_anchor", "own codes")]
    assert "| 0.405 | +15.7% | +20.0%, +10.0% |" in rows[("bank_anchor", "whole codebase")]
    assert "| 0.350 | +0.0% | — |" in rows[("in_batch", "whole codebase")]
    assert "| 0.280 | -20.0% | — |" in rows[("zero-shot MiniLM", "whole codebase")]
