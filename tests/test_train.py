"""The main job end to end: a smoke run, kill-and-resume exactness, NaN stop, config errors, 2 processes."""

import json
import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import cocohanere_jax
from cocohanere_jax import checkpoints, export, metrics, preemption, sharding, train
from cocohanere_jax.models import hf
from configs import csn_python

import tiny_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("inputs")
    model = tiny_setup.tiny_bert_folder(str(base / "model"))
    data = tiny_setup.csn_dir(str(base / "csn"))
    return model, data


def smoke_config(inputs, **train_overrides):
    c = csn_python.get_config("smoke")
    c.model.path, c.data.root = inputs
    c.data.cache_dir = ""
    c.train.zero_shot_eval = False
    for k, v in train_overrides.items():
        c.train[k] = v
    return c


def _saved_state(workdir, step):
    return checkpoints.read_item(os.path.join(workdir, "checkpoints", str(step), "state"))


def test_smoke_run(inputs, tmp_path):
    c = smoke_config(inputs, zero_shot_eval=True)
    c.model.scan_layers = True  # the scanned-layer path end to end: stacked params checkpointed, exported per layer
    c.step.length_plan = "always"  # and the length plans (smoke turns them off elsewhere to keep CI short)
    summary = train.train_and_evaluate(c, str(tmp_path))
    train_records = metrics.read_metrics(str(tmp_path), "train")
    assert [r["step"] for r in train_records] == [2, 4, 6]
    for r in train_records:
        assert np.isfinite(r["loss"]) and r["loss"] > 0 and r["grad_norm"] > 0 and r["lr"] > 0
        assert r["steps_per_sec"] > 0 and "eta_sec" in r and "loss_hn" in r
        assert r["length_plan_misses"] >= 0  # counted (a miss runs the fallback, exactly; see test_length_buckets.py)
    # The banks filled and hard negatives were found by the end.
    assert train_records[-1]["valid_negatives"] > 0
    assert [r["step"] for r in metrics.read_metrics(str(tmp_path), "valid")] == [3, 6]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]
    for split in ("zero_shot_valid", "zero_shot_test", "best_valid", "test"):
        assert 0 < summary[split]["mrr"] <= 1, split
    assert summary["test"]["num_queries"] == 16 and summary["best_step"] in (3, 6)
    on_disk = json.load(open(tmp_path / "summary.json"))
    assert on_disk["test"]["mrr"] == pytest.approx(summary["test"]["mrr"])

    # Export from saved steps: the best-on-valid params and a periodic checkpoint.
    texts = ["Return the sum of the values.", "def f(x):\n    return x + 1"]
    for step in ("best", "6"):
        out = export.export_run(str(tmp_path), step, str(tmp_path / f"export_{step}"))
        params, _ = checkpoints.params_at(str(tmp_path), step)
        base = cocohanere_jax.load_encoder(c.model.path)
        np.testing.assert_allclose(cocohanere_jax.load_encoder(out).encode(texts),
                                   base.with_params(params).encode(texts), atol=1e-6)
        orbax_params = checkpoints.load_params(os.path.join(out, "params_orbax"), base.params)
        # The run scans its layers (model.scan_layers, stacked params); the export is per layer.
        assert hf.is_scanned(params, base.family)
        for x, y in zip(jax.tree.leaves(orbax_params), jax.tree.leaves(hf.canonical_params(params, base.family))):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(FileNotFoundError, match="no step 5"):
        checkpoints.params_at(str(tmp_path), 5)


class Killed(Exception):
    pass


def _run_killed_before_batch(config, workdir, monkeypatch, batch_number):
    """Runs the job and kills it while it prepares batch `batch_number` (as a crash or preemption would)."""
    real_shard = sharding.shard_batch
    calls = {"n": 0}

    def dying_shard(batch, mesh):
        calls["n"] += 1
        if calls["n"] == batch_number:
            raise Killed()
        return real_shard(batch, mesh)

    with monkeypatch.context() as m:
        m.setattr(sharding, "shard_batch", dying_shard)
        with pytest.raises(Killed):
            train.train_and_evaluate(config, workdir)


def test_kill_and_resume_is_exact(inputs, tmp_path, monkeypatch):
    c = smoke_config(inputs, checkpoint_every=2, eval_every=100)
    full = str(tmp_path / "full")
    train.train_and_evaluate(c, full)

    resumed = str(tmp_path / "resumed")
    _run_killed_before_batch(c, resumed, monkeypatch, 5)
    assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["2", "4"]
    train.train_and_evaluate(c, resumed)

    a, b = _saved_state(full, 6), _saved_state(resumed, 6)
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 10
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bitwise on CPU


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(inputs, tmp_path, monkeypatch):
    good = smoke_config(inputs, checkpoint_every=2, eval_every=100)
    _run_killed_before_batch(good, str(tmp_path), monkeypatch, 3)
    # Resume with every step going NaN/inf.
    bad = smoke_config(inputs, checkpoint_every=2, eval_every=100)
    _poison_data_id(monkeypatch, None)
    with pytest.raises(train.NonFiniteLossError, match="NaN or inf"):
        train.train_and_evaluate(bad, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
    state = _saved_state(str(tmp_path), 2)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """An uninterrupted smoke run (checkpoints every 2 steps, no validation until the end): its workdir."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    train.train_and_evaluate(smoke_config(inputs, checkpoint_every=2, eval_every=100), workdir)
    return workdir


def _assert_same_state(a, b, step=6):
    leaves_a, leaves_b = jax.tree.leaves(_saved_state(a, step)), jax.tree.leaves(_saved_state(b, step))
    assert len(leaves_a) == len(leaves_b) > 10
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bitwise on CPU


def test_preemption_checkpoints_the_step_and_resumes_exactly(inputs, reference, tmp_path, monkeypatch):
    # preemption.request() is what the SIGTERM handler does; here it happens while batch 3 is prepared.
    c = smoke_config(inputs, checkpoint_every=100, eval_every=100)
    real_shard, calls = sharding.shard_batch, {"n": 0}

    def signalled(batch, mesh):
        calls["n"] += 1
        if calls["n"] == 3:
            preemption.request()
        return real_shard(batch, mesh)

    run = str(tmp_path / "run")
    try:
        with monkeypatch.context() as m:
            m.setattr(sharding, "shard_batch", signalled)
            with pytest.raises(preemption.Preempted) as info:
                train.train_and_evaluate(c, run)
    finally:
        preemption.reset()
    assert info.value.code == preemption.EXIT_PREEMPTED == 75 and info.value.step == 3
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["3"]  # the step it stopped at, finalised
    summary = train.train_and_evaluate(c, run)
    assert summary["best_step"] == 6 and summary["skipped_batches"] == []
    _assert_same_state(reference, run)


def test_sigterm_through_main_exits_75_and_resumes_exactly(inputs, reference, tmp_path):
    run = str(tmp_path / "run")
    cmd = _main_cmd(inputs, run) + ["--config.train.checkpoint_every=100"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "4"}
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in p.stdout:
        seen.append(line)
        if "step 2/6" in line:
            p.send_signal(signal.SIGTERM)
            break
    out, _ = p.communicate(timeout=300)
    out = "".join(seen) + out
    assert p.returncode == preemption.EXIT_PREEMPTED, out[-3000:]
    line = next(l for l in out.splitlines() if "preempted (signal SIGTERM)" in l)
    stopped = int(line.split("checkpoint of step ")[1].split()[0])
    assert 2 <= stopped < 6 and f"{run}/checkpoints/{stopped}" in line and "exit status 75" in line
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == [str(stopped)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {run}/checkpoints/{stopped}" in done.stderr
    _assert_same_state(reference, run)


def _poison_data_id(monkeypatch, data_id):
    """Makes the compiled step return a NaN loss and NaN parameters for every batch holding `data_id` (a
    data row that produces inf, as far as the loop can tell), or for every batch with ``data_id=None``.
    The step program itself is unchanged, so it comes from the compile cache."""
    real_make = train.step_lib.make_train_step

    class Poisoned:
        def __init__(self, compiled):
            self.compiled, self.poisoned_calls = compiled, 0

        def memory_analysis(self):
            return self.compiled.memory_analysis()

        def __call__(self, state, batch, table):
            state, m = self.compiled(state, batch, table)
            if data_id is None or data_id in np.asarray(batch["data_id"]):
                self.poisoned_calls += 1
                nan = jax.numpy.float32(np.nan)
                m = {**m, "loss": m["loss"] * nan}
                state = state.replace(params=jax.tree.map(lambda x: x * nan, state.params))
            return state, m

    made = []

    def make(*a, **k):
        step = real_make(*a, **k)

        class Lowerable:
            def lower(self, *la):
                lowered = step.lower(*la)

                class Compilable:
                    def compile(self):
                        made.append(Poisoned(lowered.compile()))
                        return made[-1]

                return Compilable()

        return Lowerable()

    monkeypatch.setattr(train.step_lib, "make_train_step", make)
    return made


def _batches(c, steps):
    from cocohanere_jax import input_pipeline

    it = input_pipeline.BatchIterator(c.data.max_train_pairs, c.train.global_batch_size, c.train.seed)
    return [next(it) for _ in range(steps)]


def test_nonfinite_rollback_skips_the_offending_batch(inputs, tmp_path, monkeypatch):
    c = smoke_config(inputs, checkpoint_every=2, eval_every=100, on_nonfinite="rollback")
    order = _batches(c, 7)
    bad = int(order[2][0])  # a row of the batch of step 3 (64 pairs, 8 per batch: no row repeats in 7 batches)
    made = _poison_data_id(monkeypatch, bad)
    summary = train.train_and_evaluate(c, str(tmp_path))
    assert made[0].poisoned_calls == 1  # step 3 went NaN once; it was replayed without that batch
    skipped = summary["skipped_batches"]
    assert [(s["step"], s["epoch"], s["position"]) for s in skipped] == [(3, 0, 2)]
    assert skipped[0]["data_ids"] == [int(i) for i in order[2]] and summary["rollbacks"] == 1
    on_disk = json.load(open(tmp_path / "summary.json"))
    assert on_disk["skipped_batches"] == skipped and on_disk["rollbacks"] == 1
    # The 6 steps completed, on 7 batches: the final checkpoint's iterator is past the 7th.
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4", "6"]
    meta = json.load(open(tmp_path / "checkpoints" / "6" / "meta" / "metadata"))
    assert meta["iterator"]["position"] == 7 and meta["skipped_batches"] == skipped and meta["rollbacks"] == 1
    state = _saved_state(str(tmp_path), 6)
    assert int(state["step"]) == 6
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))
    records = metrics.read_metrics(str(tmp_path))
    rollback = [r for r in records if r["kind"] == "rollback"]
    assert [(r["step"], r["nonfinite_step"], r["rolled_back_to"]) for r in rollback] == [(4, 3, 2)]
    assert [(r["step"], r["position"]) for r in records if r["kind"] == "skipped"] == [(3, 2)]
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == [2, 4, 6] and all(np.isfinite(r["loss"]) for r in records if r["kind"] == "train")
    assert 0 < summary["test"]["mrr"] <= 1


def test_preemption_in_a_nonfinite_state_rolls_back_first_and_the_restart_decides_the_same(inputs, tmp_path,
                                                                                            monkeypatch):
    c = smoke_config(inputs, checkpoint_every=2, eval_every=100, on_nonfinite="rollback")
    order = _batches(c, 3)
    made = _poison_data_id(monkeypatch, int(order[2][0]))
    real_shard, calls = sharding.shard_batch, {"n": 0}

    def signalled(batch, mesh):
        calls["n"] += 1
        if calls["n"] == 3:
            preemption.request()
        return real_shard(batch, mesh)

    try:
        with monkeypatch.context() as m:
            m.setattr(sharding, "shard_batch", signalled)
            with pytest.raises(preemption.Preempted) as info:
                train.train_and_evaluate(c, str(tmp_path))
    finally:
        preemption.reset()
    # Step 3 went NaN: the preemption checkpoint is not of it; the run went back to step 2 and stopped there.
    assert info.value.step == 2 and sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
    summary = train.train_and_evaluate(c, str(tmp_path))
    assert made[1].poisoned_calls == 1 and summary["rollbacks"] == 1
    assert [(s["step"], s["position"]) for s in summary["skipped_batches"]] == [(3, 2)]
    state = _saved_state(str(tmp_path), 6)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


def test_nonfinite_rollback_gives_up_after_max_rollbacks(inputs, tmp_path, monkeypatch):
    good = smoke_config(inputs, checkpoint_every=2, eval_every=100)
    _run_killed_before_batch(good, str(tmp_path), monkeypatch, 3)
    bad = smoke_config(inputs, checkpoint_every=2, eval_every=100, on_nonfinite="rollback", max_rollbacks=2)
    _poison_data_id(monkeypatch, None)  # every step's loss is NaN/inf: skipping batches cannot help
    with pytest.raises(train.NonFiniteLossError, match=r"NaN or inf at step 3 .*after 2 rollback\(s\)"):
        train.train_and_evaluate(bad, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
    rollback = metrics.read_metrics(str(tmp_path), "rollback")
    assert [r["rollbacks"] for r in rollback] == [1, 2]
    assert [r["position"] for r in metrics.read_metrics(str(tmp_path), "skipped")] == [2, 2, 3]


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: setattr(c.step, "k", 64), r"config\.step.*bank_size"),
        (lambda c: setattr(c.train, "global_batch_size", 6), r"config\.train\.global_batch_size=6.*4 devices"),
        (lambda c: setattr(c.model, "path", "/nonexistent/model"), r"config\.model\.path='/nonexistent/model'"),
        (lambda c: setattr(c.data, "root", "/nonexistent/data"), r"config\.data\.root='/nonexistent/data'"),
        (lambda c: setattr(c.model, "dtype", "float16"), r"config\.model\.dtype"),
    ],
)
def test_config_errors_before_any_work(inputs, tmp_path, monkeypatch, edit, match):
    c = smoke_config(inputs)
    edit(c)

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the config was checked")

    monkeypatch.setattr(train.encoder_lib, "load_encoder", no_loading)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        train.train_and_evaluate(c, str(tmp_path))


def test_zero_shot_only(inputs, tmp_path):
    c = smoke_config(inputs)
    c.train.num_steps = 0
    c.train.num_epochs = 0
    summary = train.train_and_evaluate(c, str(tmp_path))
    assert 0 < summary["zero_shot_test"]["mrr"] <= 1 and "test" not in summary
    assert not os.path.exists(tmp_path / "checkpoints")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _main_cmd(inputs, workdir):
    model, data = inputs
    return [sys.executable, "-m", "cocohanere_jax.main", "--config=configs/csn_python.py:smoke",
            f"--workdir={workdir}", f"--config.model.path={model}", f"--config.data.root={data}",
            "--config.train.zero_shot_eval=False", "--config.train.eval_every=100"]


def test_two_processes_equal_one(inputs, reference, tmp_path):
    """Two processes of 2 devices each (cocohanere_jax.main) end where one process of 4 devices does (the
    module's uninterrupted reference run: the same config, checkpoint cadence aside)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
    one = reference
    two = str(tmp_path / "two")
    port = _free_port()
    procs = [
        subprocess.Popen(_main_cmd(inputs, two) + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                                   f"--process_id={i}"],
                         cwd=ROOT, env={**env, "JAX_NUM_CPU_DEVICES": "2"}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
        for i in range(2)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out.decode()[-3000:]
    s1, s2 = (json.load(open(os.path.join(d, "summary.json"))) for d in (one, two))
    assert s2["processes"] == 2 and s1["processes"] == 1 and s1["devices"] == s2["devices"] == 4
    assert s1["test"]["mrr"] == pytest.approx(s2["test"]["mrr"], abs=1e-6)
    a, b = _saved_state(one, 6), _saved_state(two, 6)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
