"""Metrics: one JSON line per logging step in the workdir, the log, and a progress line with ETA."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

from absl import logging


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

    @staticmethod
    def line(step: int, total: int, values: Mapping[str, Any]) -> str:
        eta = values.get("eta_sec", float("nan"))
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        shown = " ".join(
            f"{k}={float(v):.4g}" for k, v in values.items() if k not in ("eta_sec",) and isinstance(_plain(v), (int, float))
        )
        return f"[{step}/{total}] {shown} eta={eta_s}"


def log(msg: str, *args) -> None:
    logging.info(msg, *args)
