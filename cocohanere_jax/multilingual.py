"""Several languages in one job: training pairs of every language in one table, evaluation per language.

`config.data.language` may name several languages (``"python,java,go"``) or ``"all"`` (the six of
CodeSearchNet) for the sources that read a `<language>/` folder per language ("codesearchnet", which
includes every corpus the registry and source-tree builders write). Then:

* **Training**: the train pairs of the languages are concatenated into one table (DataID = row of the
  concatenation; language by language, in the order given) and the input pipeline shuffles the whole
  table, so every batch mixes languages in proportion to their train sizes. The banks hold every
  language: a query's hard negatives may be code in another language (they are real negatives).
* **Evaluation** (`LanguageTasks`): each language's queries are ranked against that language's own
  codebase only (as CodeSearchNet evaluates), and the job's selection metric ``mrr`` is the unweighted mean
  over the languages (so the largest language does not decide alone); each language's metrics are reported
  as ``<language>/mrr``, ``<language>/r@1``, ... beside the means.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from cocohanere_jax import evaluate

__all__ = ["ALL_LANGUAGES", "LanguageTasks", "languages", "concat_pairs"]

ALL_LANGUAGES = ("python", "java", "go", "javascript", "ruby", "php")


def languages(value: str) -> list[str]:
    """``config.data.language`` as a list: ``"all"``, one name, or a comma-separated list (no repeats)."""
    names = list(ALL_LANGUAGES) if value.strip() == "all" else [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise ValueError(f"config.data.language={value!r} names no language; use e.g. python or python,java or all.")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"config.data.language={value!r} repeats {repeated}; name each language once.")
    return names


def concat_pairs(parts: Sequence[Any]):
    """One `records.Pairs` of several languages' pairs, in order, renumbered (DataID = row), reports merged."""
    from cocohanere_data import records

    report = records.LoadReport()
    for part in parts:
        report.merge(part.report)
    rows = [dataclasses.replace(pair, data_id=i) for i, pair in enumerate(p for part in parts for p in part)]
    return records.Pairs(rows, report)


@dataclasses.dataclass
class LanguageTasks:
    """One retrieval task per language; metrics per language and their unweighted means."""

    tasks: dict[str, Any]  # language -> evaluate.RetrievalTask, or TokenizedTask once tokenised
    metric = "mrr"

    @property
    def queries(self) -> list:
        return [q for t in self.tasks.values() for q in getattr(t, "queries", getattr(t, "query_ids", []))]

    @property
    def codebase(self) -> list:
        return [c for t in self.tasks.values() for c in getattr(t, "codebase", getattr(t, "code_ids", []))]

    def tokenize(self, encoder, query_length: int, code_length: int) -> "LanguageTasks":
        return LanguageTasks({lang: evaluate.tokenize_task(encoder, t, query_length, code_length)
                              for lang, t in self.tasks.items()})

    def evaluate(self, encoder, params=None, batch_size: int = 64, mesh=None, **_: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        per_language = {}
        for lang, task in self.tasks.items():
            result = evaluate.evaluate(encoder, task, params=params, batch_size=batch_size, mesh=mesh)
            per_language[lang] = result
            out.update({f"{lang}/{key}": value for key, value in result.items()})
        for key in ("mrr", *(f"r@{k}" for k in evaluate.RECALL_AT)):
            out[key] = float(np.mean([r[key] for r in per_language.values()]))
        out["num_queries"] = int(sum(r["num_queries"] for r in per_language.values()))
        out["codebase_size"] = int(sum(r["codebase_size"] for r in per_language.values()))
        out["skipped_queries"] = int(sum(r["skipped_queries"] for r in per_language.values()))
        return out
