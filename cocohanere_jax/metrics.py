"""Metrics and the log: one JSON line per logging step in the workdir, a progress line with ETA, and the
console / file logging of the command-line job (`setup_logging`)."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any, Mapping


def _plain(v: Any) -> Any:
    """JSON-safe scalars (numpy / jax scalars -> float/int; non-finite floats -> string)."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricWriter:
    """Appends `{"step": s, "kind": ..., **values}` lines to `<workdir>/metrics.jsonl`.

    Only process 0 writes (pass `enabled=False` elsewhere). Appending keeps the history of a resumed run.
    """

    def __init__(self, workdir: str, enabled: bool = True, filename: str = "metrics.jsonl"):
        self.path = os.path.join(workdir, filename)
        self.enabled = enabled
        if enabled:
            os.makedirs(workdir, exist_ok=True)

    def write(self, step: int, values: Mapping[str, Any], kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "kind": kind, **{k: _plain(v) for k, v in values.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(workdir: str, kind: str | None = None, filename: str = "metrics.jsonl") -> list[dict]:
    """The records of a run (optionally of one kind), in order."""
    path = os.path.join(workdir, filename)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]


class Progress:
    """Steps/s, examples/s and ETA over the interval since the last report."""

    def __init__(self, total_steps: int, first_step: int, global_batch: int):
        self.total_steps = total_steps
        self.global_batch = global_batch
        self._step, self._time = first_step, time.perf_counter()
        self.start_time = self._time

    def measure(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        steps = max(step - self._step, 1)
        rate = steps / max(now - self._time, 1e-9)
        self._step, self._time = step, now
        return {
            "steps_per_sec": rate,
            "examples_per_sec": rate * self.global_batch,
            "eta_sec": (self.total_steps - step) / rate,
        }

    # What the progress line shows (everything is in metrics.jsonl): name in the record -> label.
    SHOWN = (("loss", "loss"), ("loss_b", "L^B"), ("loss_hn", "L^HN"), ("in_batch_accuracy", "acc"),
             ("valid_negatives", "negs"), ("grad_norm", "|g|"), ("steps_per_sec", "steps/s"))

    @staticmethod
    def line(step: int, total: int, values: Mapping[str, Any]) -> str:
        """``step 30/60  50%  loss 1.234  L^B ...  steps/s 1.2  eta 0:00:25``."""
        eta = values.get("eta_sec", float("nan"))
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        width = len(str(total))
        shown = "  ".join(f"{label} {float(values[k]):.4g}" for k, label in Progress.SHOWN if k in values)
        return f"step {step:>{width}}/{total} {100 * step / max(total, 1):3.0f}%  {shown}  eta {eta_s}"


_CONSOLE_FORMAT = "%(asctime)s %(message)s"
_FILE_FORMAT = "%(asctime)s %(levelname).1s %(name)s %(message)s"


def setup_logging(workdir: str, verbose: bool = False, process_index: int = 0) -> str:
    """Quiet console, full file: this project's INFO records (progress, evaluations) on stderr; third-party
    INFO records (orbax, absl, jax) only in ``<workdir>/log.txt`` unless ``verbose``; warnings everywhere.

    Other processes of a multi-process run write ``log-<i>.txt`` and print only warnings. Returns the path
    of the log file.
    """
    from absl import logging as absl_logging

    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "log.txt" if process_index == 0 else f"log-{process_index}.txt")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(_FILE_FORMAT))
    root.addHandler(file_handler)
    absl_logging.set_verbosity(absl_logging.INFO)  # records reach the file; the console filters below
    absl_logging.get_absl_handler().setLevel(logging.INFO if verbose else logging.WARNING)
    ours = logging.getLogger("cocohanere_jax")
    if process_index == 0 and not verbose:  # verbose: absl's own console handler shows our records too
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter(_CONSOLE_FORMAT, "%H:%M:%S"))
        console.setLevel(logging.INFO)
        ours.addHandler(console)
    return path
