"""orbax checkpoints: periodic asynchronous saves with resume, the best-on-valid params, and export.

Layout of a workdir:
  checkpoints/<step>/{state,meta}   full train state (params, optimizer, both banks, step, rng) + JSON meta
                                    (data iterator position, run info); keep-last-N
  checkpoints/<step>/cocohanere_manifest.json
                                    size and CRC-32 of every file of the step, written (atomically) once
                                    orbax has finalised the save: the cheap integrity check of a restart
  best/<step>/{params,meta}         the parameters with the best validation MRR so far (+ its metrics)
  checkpoints/damaged-<step>-<reason>-<time>/, best/damaged-...
                                    a checkpoint that failed its check or its restore, set aside (renamed,
                                    never deleted) by `restore_latest` / `best_meta` / `restore_best_params`

What a restart can rely on (docs/RELIABILITY.md): `restore_latest` takes the newest checkpoint that passes
the manifest check and restores; a damaged one is reported by path and reason and renamed aside; a
half-written save (orbax's `<step>.orbax-checkpoint-tmp*` directory, left by a kill or a full disk) is never
a step. A save that fails (ENOSPC, EIO, ...) raises `CheckpointSaveError` naming the directory and the errno.
"""

from __future__ import annotations

import errno as errno_lib
import json
import logging
import os
import re
import time
import zlib
from typing import Any, Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

MANIFEST = "cocohanere_manifest.json"
MANIFEST_VERSION = 1
DAMAGED_PREFIX = "damaged-"
_CHUNK = 4 << 20


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (full disk, I/O error, permissions).

    Attributes: `errno` (e.g. errno.ENOSPC, or None when the cause carries none), `directory` (where the
    save went), `step`. The previous checkpoints are intact; the half-written one is never restored.
    """

    def __init__(self, message: str, errno: int | None = None, directory: str | None = None,
                 step: int | None = None):
        super().__init__(message)
        self.errno = errno
        self.directory = directory
        self.step = step
        self.message = message

    def __str__(self) -> str:
        return self.message


class NoGoodCheckpointError(RuntimeError):
    """Checkpoints exist but none passes its integrity check and restores; each was set aside."""


# ----------------------------------------------------------------------------------------------------
# Integrity: a manifest of file sizes and CRC-32s, written after orbax finalised the step


def _files(step_dir: str) -> list[str]:
    out = []
    for root, dirs, names in os.walk(step_dir):
        dirs.sort()
        for name in sorted(names):
            rel = os.path.relpath(os.path.join(root, name), step_dir)
            if rel != MANIFEST and not rel.startswith(MANIFEST + "."):
                out.append(rel)
    return out


def _crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def write_manifest(step_dir: str) -> str:
    """Records size and CRC-32 of every file of a finalised checkpoint step, atomically (tmp + rename)."""
    files = {rel: [os.path.getsize(os.path.join(step_dir, rel)), _crc32(os.path.join(step_dir, rel))]
             for rel in _files(step_dir)}
    path = os.path.join(step_dir, MANIFEST)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"version": MANIFEST_VERSION, "files": files}, f, indent=0, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def check(step_dir: str, items: tuple[str, ...] = ()) -> tuple[str, str] | None:
    """The cheap integrity check of one checkpoint step: None if it passes (or has no manifest to check
    against: then only a restore can tell), else (reason, detail), reason a short slug for the set-aside name.

    Checks: the directory and its items exist; with a manifest, every listed file is present with its
    recorded size and CRC-32 (truncation, a missing file, flipped bytes).
    """
    if not os.path.isdir(step_dir):
        return "missing", f"{step_dir} is not a directory"
    for item in items:
        if not os.path.isdir(os.path.join(step_dir, item)):
            return "missing-item", f"{os.path.join(step_dir, item)} is missing"
    path = os.path.join(step_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return "bad-manifest", f"{path} is unreadable: {e}"
    for rel, (size, crc) in sorted(files.items()):
        full = os.path.join(step_dir, rel)
        if not os.path.isfile(full):
            return "missing-file", f"{full} is missing (listed in {MANIFEST})"
        found = os.path.getsize(full)
        if found != size:
            return ("truncated" if found < size else "size-mismatch"), f"{full} has {found} bytes, {size} were written"
        if _crc32(full) != crc:
            return "checksum", f"{full}: CRC-32 differs from the one recorded after the save (corrupted bytes)"
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "unknown"


def _describe(e: BaseException) -> str:
    """One line: the innermost cause first (tensorstore's OUT_OF_RANGE, ...), without the spec dumps."""
    chain, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = re.sub(r"See full TensorStore details.*", "", " ".join(str(e).split())).strip()
        chain.append(f"{type(e).__name__}: {text}" if text else type(e).__name__)
        e = e.__cause__ or e.__context__
    text = "; from ".join(reversed(chain))
    return text if len(text) < 600 else text[:600] + " ..."


# ----------------------------------------------------------------------------------------------------
# Save errors: tensorstore reports the OS error inside a ValueError message


_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_STRERRORS = {os.strerror(n).lower(): n for n in (errno_lib.ENOSPC, errno_lib.EDQUOT, errno_lib.EIO,
                                                   errno_lib.EACCES, errno_lib.EROFS, errno_lib.EFBIG)}


def _io_errno(e: BaseException) -> int | None | bool:
    """The errno of an I/O failure anywhere in e's chain; False if e is not an I/O failure."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and not isinstance(e, CheckpointSaveError):
            return e.errno
        text = str(e)
        m = _OS_ERROR_CODE.search(text)
        if m:
            return int(m.group(1))
        low = text.lower()
        for s, n in _STRERRORS.items():
            if s in low:
                return n
        if text.startswith(("RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "DATA_LOSS")):
            return None
        e = e.__cause__ or e.__context__
    return False


def _is_primary() -> bool:
    return jax.process_index() == 0


def _all_processes(flag: bool, name: str) -> bool:
    """True when `flag` is True on every process (one tiny allgather when there are several)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.array([int(flag)], np.int32))))


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding structs of a pytree: restores land where the live arrays are."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
    """Owns the two orbax managers of a run.

    Args:
      workdir: the run directory.
      keep: how many periodic checkpoints to keep.
      async_save: save in a background thread (the train loop goes on while the write completes).
      verify: check size and CRC-32 of every file against the step's manifest before restoring.
    """

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True, verify: bool = True):
        workdir = os.path.abspath(workdir)
        self.workdir = workdir
        self.root = os.path.join(workdir, "checkpoints")
        self.best_root = os.path.join(workdir, "best")
        self.verify = verify
        self._async = async_save
        self._keep = keep
        self.set_aside: list[tuple[str, str, str]] = []  # (original path, new path, reason: detail)
        self._unmanifested: dict[str, set[int]] = {"checkpoints": set(), "best": set()}
        self._pending: int | None = None  # step of the last save started and not yet confirmed
        self._open()

    def _open(self) -> None:
        self.manager = ocp.CheckpointManager(
            self.root,
            options=ocp.CheckpointManagerOptions(max_to_keep=self._keep, enable_async_checkpointing=self._async,
                                                 create=True),
            item_names=("state", "meta"),
        )
        self.best = ocp.CheckpointManager(
            self.best_root,
            options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False, create=True),
            item_names=("params", "meta"),
        )

    # periodic --------------------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
        """Starts an (asynchronous) save of the full state and the JSON meta at `step`.

        First completes the previous save (orbax would wait for it anyway) and writes its manifest; a write
        failure of that save or of this one's start raises `CheckpointSaveError`.
        """
        self._finish_periodic()
        self._pending = step
        try:
            started = self.manager.save(
                step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta)))
            )
        except Exception as e:
            self._raise_save_error(e, self.root, step)
            raise
        if started:
            self._unmanifested["checkpoints"].add(step)
        if not self._async:
            self._finish_periodic()

    def _finish_periodic(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            self._raise_save_error(e, self.root, self._pending)
            raise
        self._pending = None
        self._write_manifests("checkpoints", self.root, self.manager)

    def _write_manifests(self, kind: str, root: str, manager: ocp.CheckpointManager) -> None:
        pending = self._unmanifested[kind]
        if not pending:
            return
        if _is_primary():
            present = set(manager.all_steps())
            for step in sorted(pending):
                step_dir = os.path.join(root, str(step))
                if step in present and os.path.isdir(step_dir):
                    try:
                        write_manifest(step_dir)
                    except OSError as e:
                        self._raise_save_error(e, root, step)
        pending.clear()

    def _raise_save_error(self, e: BaseException, root: str, step: int | None) -> None:
        """Raises CheckpointSaveError from `e` if it is an I/O failure; returns otherwise."""
        code = _io_errno(e)
        if code is False:
            return
        name = errno_lib.errorcode.get(code, "") if code else ""
        why = f"{os.strerror(code)} (errno {code} {name})" if code else "an I/O error"
        try:  # the in-memory step list may hold the failed step: read the disk again
            self.manager.reload()
            good = self.all_steps()
        except Exception:
            good = "unknown"
        hint = {errno_lib.ENOSPC: "Free space on that filesystem (`df -h " + root + "`), lower "
                "config.train.keep_checkpoints, or move the workdir to a larger disk",
                errno_lib.EDQUOT: "Raise the disk quota or free space"}.get(
                    code, "Check that the directory is writable and the disk healthy")
        raise CheckpointSaveError(
            f"checkpoint save of step {step} in {root} failed: {why}. The previous checkpoints there are intact "
            f"(steps {good}); the half-written step (a '*.orbax-checkpoint-tmp*' directory) is never restored and "
            f"can be deleted. {hint}, then run the same command again: it resumes from the newest good "
            f"checkpoint. Cause: {_describe(e)}",
            errno=code or None, directory=root, step=step,
        ) from e

    def restore(self, step: int, state_like: Any) -> tuple[Any, dict]:
        """The state saved at `step`, with the shardings of `state_like`, and its meta."""
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_like(state_like)), meta=ocp.args.JsonRestore()
            ),
        )
        return out.state, dict(out.meta)

    def restore_latest(self, target: Any) -> tuple[int, Any, dict] | None:
        """(step, state, meta) of the newest checkpoint that passes its integrity check and restores.

        `target` is the train state pytree, live or abstract (`jax.ShapeDtypeStruct` leaves with shardings):
        the restored arrays get its shapes, dtypes and shardings. A checkpoint that fails is logged with its
        path and reason and renamed to `checkpoints/damaged-<step>-<reason>-<time>` (kept, not deleted), and
        the next older one is tried. Returns None when there is no checkpoint; raises
        `NoGoodCheckpointError` when there are checkpoints and none is good.
        """
        self._check_idle()
        self._report_incomplete(self.root)
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            return None
        tried = []
        for step in steps:
            out = self._try(self.manager, self.root, step, ("state", "meta"),
                            lambda s: self.restore(s, target), "checkpoints")
            if out is not None:
                state, meta = out
                if tried:
                    log.warning("resuming from %s/%d, the newest good checkpoint (set aside: %s)", self.root, step,
                                ", ".join(tried))
                return step, state, meta
            tried.append(self.set_aside[-1][1])
        raise NoGoodCheckpointError(
            f"{self.root}: none of the {len(steps)} checkpoint(s) (steps {sorted(steps)}) passes its integrity check "
            f"and restores; each was set aside: {'; '.join(f'{a} -> {b} ({r})' for a, b, r in self.set_aside[-len(steps):])}. "
            f"To start from scratch, delete or move {self.workdir} (or just {self.root}); to resume from a copy you "
            f"trust, put it back as {self.root}/<step> (a directory with state/ and meta/)."
        )

    def _try(self, manager, root: str, step: int, items: tuple[str, ...], restore: Callable[[int], Any],
             kind: str) -> Any:
        """Checks and restores one step; on failure sets it aside and returns None."""
        step_dir = os.path.join(root, str(step))
        problem = check(step_dir, items) if self.verify else None
        result = None
        if problem is None:
            try:
                result = restore(step)
            except Exception as e:  # orbax / tensorstore raise many types for a bad file
                problem = ("restore-failed", _describe(e))
        if not _all_processes(problem is None, f"cocohanere_check_{kind}_{step}"):
            problem = problem or ("restore-failed", "it failed to restore on another process")
        if problem is None:
            if _is_primary() and self.verify and not os.path.isfile(os.path.join(step_dir, MANIFEST)):
                # Finalised by orbax but the run stopped before its manifest: it restored, so record it now.
                try:
                    write_manifest(step_dir)
                except OSError as e:
                    log.warning("could not write %s: %s", os.path.join(step_dir, MANIFEST), e)
            return result
        self._set_aside(manager, root, step, *problem)
        return None

    def _set_aside(self, manager, root: str, step: int, reason: str, detail: str) -> str:
        src = os.path.join(root, str(step))
        dst = os.path.join(root, f"{DAMAGED_PREFIX}{step}-{_slug(reason)}-{time.strftime('%Y%m%dT%H%M%S')}")
        _sync(f"cocohanere_set_aside_{os.path.basename(root)}_{step}_before")
        if _is_primary() and os.path.exists(src):
            n = 1
            base = dst
            while os.path.exists(dst):
                dst, n = f"{base}-{n}", n + 1
            os.rename(src, dst)
        _sync(f"cocohanere_set_aside_{os.path.basename(root)}_{step}_after")
        manager.reload()
        log.error("checkpoint %s is damaged (%s: %s); set aside as %s", src, reason, detail, dst)
        self.set_aside.append((src, dst, f"{reason}: {detail}"))
        return dst

    @staticmethod
    def _report_incomplete(root: str) -> None:
        if not os.path.isdir(root):
            return
        for name in sorted(os.listdir(root)):
            if ".orbax-checkpoint-tmp" in name:
                log.warning("%s: a save that never completed (killed, or the disk was full); it is not a "
                            "checkpoint and is ignored (safe to delete)", os.path.join(root, name))

    def _check_idle(self) -> None:
        """Restores read what a finished save wrote: complete a save in flight first."""
        self._finish_periodic()

    # best on valid ---------------------------------------------------------------------------------
    def _best(self, params_like: Any = None) -> tuple[int, Any, dict] | None:
        """The newest best-on-valid step that passes its check and restores (params too if params_like is
        given), setting damaged ones aside; None if there is none."""
        self._report_incomplete(self.best_root)
        for step in sorted(self.best.all_steps(), reverse=True):
            if params_like is None:
                args = ocp.args.Composite(meta=ocp.args.JsonRestore())
            else:
                args = ocp.args.Composite(params=ocp.args.StandardRestore(abstract_like(params_like)),
                                          meta=ocp.args.JsonRestore())
            out = self._try(self.best, self.best_root, step, ("params", "meta"),
                            lambda s: self.best.restore(s, args=args), "best")
            if out is not None:
                return step, (out.params if params_like is not None else None), dict(out.meta)
        return None

    def best_meta(self) -> dict | None:
        """The meta of the best-on-valid copy; None when there is none or it is damaged (set aside)."""
        found = self._best()
        return None if found is None else found[2]

    def save_best(self, step: int, params: Any, meta: Mapping[str, Any]) -> None:
        try:
            self.best.save(
                step, args=ocp.args.Composite(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(dict(meta))),
                force=True,
            )
            self.best.wait_until_finished()
        except Exception as e:
            self._raise_save_error(e, self.best_root, step)
            raise
        self._unmanifested["best"].add(step)
        self._write_manifests("best", self.best_root, self.best)

    def restore_best_params(self, params_like: Any) -> tuple[Any, dict]:
        found = self._best(params_like)
        if found is None:
            damaged = [f"{a} -> {b} ({r})" for a, b, r in self.set_aside if a.startswith(self.best_root + os.sep)]
            if damaged:
                raise NoGoodCheckpointError(
                    f"{self.best_root}: the best-on-valid copy is damaged and was set aside: {'; '.join(damaged)}. "
                    f"Its parameters are lost; the periodic checkpoints in {self.root} are not affected. Evaluate a "
                    "periodic step instead (cocohanere_jax.export --step=<step>), or delete the set-aside copy and "
                    "rerun: the next validation saves a new best.")
            raise FileNotFoundError(f"{self.workdir}/best: no best-on-valid checkpoint was saved.")
        return found[1], found[2]

    def wait(self) -> None:
        self._finish_periodic()
        self.best.wait_until_finished()

    def close(self) -> None:
        try:
            self._finish_periodic()
        finally:
            self.manager.close()
            self.best.close()


def read_item(path: str) -> Any:
    """Any saved pytree item (e.g. `<workdir>/checkpoints/<step>/state`) on this process's first device,
    whatever topology saved it (for export and inspection; training restores with `Checkpointer.restore`)."""
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(os.path.abspath(path)).item_metadata
        abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta)
        return ckptr.restore(os.path.abspath(path), abstract)


def params_at(workdir: str, step: str | int = "best") -> tuple[Any, int]:
    """The parameters of a run at a saved step: an int, "latest" (periodic) or "best" (best on valid)."""
    workdir = os.path.abspath(workdir)
    if step == "best":
        kind, item, key = "best", "params", None
    else:
        kind, item, key = "checkpoints", "state", "params"
    root = os.path.join(workdir, kind)
    steps = sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []
    if not steps:
        raise FileNotFoundError(f"{root}: no saved step. Is {workdir} the workdir of a training run?")
    chosen = steps[-1] if step in ("best", "latest") else int(step)
    if chosen not in steps:
        raise FileNotFoundError(f"{root}: no step {chosen}; saved steps: {steps}.")
    tree = read_item(os.path.join(root, str(chosen), item))
    return (tree[key] if key else tree), chosen


def save_params(path: str, params: Any) -> None:
    """A params-only orbax checkpoint (e.g. for serving or fine-tuning elsewhere)."""
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(path), params, force=True)


def load_params(path: str, params_like: Any) -> Any:
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(os.path.abspath(path), abstract_like(params_like))
