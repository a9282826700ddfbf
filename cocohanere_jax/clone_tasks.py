"""Code-to-code tasks in the job: POJ-104 (clone retrieval, MAP@R) and BigCloneBench (clone detection, F1).

Training reuses the bimodal step unchanged: a training pair is (anchor code, positive code), so both
"modalities" are code, and the **label table** (the problem or clone group of each DataID) takes the place
of the text hashes that the duplicate mask reads (`TokenTable.query_hash`, `step.mask_duplicates`). A
candidate with the anchor's label is then never a negative: not in either bank, not in the batch (the
positive itself is always kept). The step's guarantees (one compiled program, 1 device == 4 devices,
exact resume) are the bimodal step's. See docs/METHOD.md section 8 and docs/TASKS.md.

Evaluation tasks (what `datasets.load` returns as valid / test for these sources):

* `GroupTask` (POJ-104): every program queries all the others; MAP@R with R = the number of others with
  its label (`clone_metrics.map_at_r`). Selection metric: ``map@r``.
* `PairTask` (BigCloneBench): cosine of each candidate pair; F1 of ``score > threshold`` where the threshold
  is the best on valid (`clone_metrics.choose_threshold`) and applied unchanged to test. Selection: ``f1``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from cocohanere_jax import clone_metrics

__all__ = ["GroupTask", "PairTask", "format_result"]


def _embed(encoder, params, ids: np.ndarray, batch_size: int, mesh=None) -> np.ndarray:
    enc = encoder if params is None else encoder.with_params(params)
    return enc.embed_ids(ids, batch_size=batch_size, mesh=mesh)


@dataclasses.dataclass
class GroupTask:
    """Programs with labels; every program is a query against all the others (POJ-104)."""

    codes: list[str]
    labels: np.ndarray  # int32 [n] label ids
    code_ids: np.ndarray | None = None  # int32 [n, L] once tokenised
    metric = "map@r"

    @classmethod
    def from_codes(cls, codes) -> "GroupTask":
        """From a `cocohanere_data.records.LabelledCodes`."""
        return cls(list(codes.codes), codes.label_ids())

    @property
    def queries(self) -> list[str]:
        return self.codes

    @property
    def codebase(self) -> list[str]:
        return self.codes

    def tokenize(self, encoder, length: int) -> "GroupTask":
        return dataclasses.replace(self, code_ids=encoder.tokenize(self.codes, length))

    def evaluate(self, encoder, params=None, batch_size: int = 64, mesh=None, **_: Any) -> dict[str, float]:
        emb = _embed(encoder, params, self.code_ids, batch_size, mesh)
        result = clone_metrics.map_at_r(emb, self.labels)
        return {"map@r": result["map_at_r"], "num_queries": result["num_queries"], "singletons": result["singletons"]}


@dataclasses.dataclass
class PairTask:
    """Candidate pairs over a set of functions, labelled clone (1) or not (0) (BigCloneBench)."""

    funcs: list[str]
    left: np.ndarray  # int64 [P]
    right: np.ndarray  # int64 [P]
    labels: np.ndarray  # int8 [P]
    code_ids: np.ndarray | None = None
    metric = "f1"

    @classmethod
    def from_pairs(cls, pairs) -> "PairTask":
        """From a `cocohanere_data.bigclonebench.ClonePairs`."""
        return cls(list(pairs.funcs), pairs.left, pairs.right, pairs.labels)

    @property
    def queries(self) -> np.ndarray:
        return self.labels  # one "query" per pair (for counts in logs)

    @property
    def codebase(self) -> list[str]:
        return self.funcs

    def tokenize(self, encoder, length: int) -> "PairTask":
        return dataclasses.replace(self, code_ids=encoder.tokenize(self.funcs, length))

    def evaluate(self, encoder, params=None, batch_size: int = 64, threshold: float | None = None, mesh=None,
                 **_: Any) -> dict[str, float]:
        """F1 at ``threshold``, or (valid) at the best threshold for these pairs, which is returned."""
        emb = _embed(encoder, params, self.code_ids, batch_size, mesh)
        scores = clone_metrics.pair_scores(emb, self.left, self.right)
        if threshold is None:
            threshold, _ = clone_metrics.choose_threshold(scores, self.labels)
        result = clone_metrics.precision_recall_f1(self.labels, scores > threshold)
        return {**result, "threshold": float(threshold), "num_queries": int(self.labels.shape[0])}


def format_result(result: dict[str, float]) -> str:
    """One log line for any task's result (retrieval MRR/R@k, MAP@R, or F1 with its threshold)."""
    keys = ("mrr", "r@1", "r@5", "r@10", "map@r", "precision", "recall", "f1", "threshold")
    keys += tuple(k for k in result if k.endswith("/mrr"))  # per language (cocohanere_jax.multilingual)
    return " ".join(f"{k}={result[k]:.4f}" for k in keys if k in result)
