"""Reader for BigCloneBench (Svajlenko et al. 2014) as CodeXGLUE publishes it: Clone-detection-BigCloneBench.

Published layout (CodeXGLUE ``Code-Code/Clone-detection-BigCloneBench/dataset``, filtered following
Wang et al. 2020, FA-AST):

* ``data.jsonl``: one Java function per line, ``{"func": <source>, "idx": <id as a string>}``;
* ``train.txt`` / ``valid.txt`` / ``test.txt``: one candidate pair per line, ``idx1<TAB>idx2<TAB>label``
  with label ``1`` (a clone pair, any of BigCloneBench's clone types) or ``0`` (not a clone).

Reading follows CodeXGLUE's ``code/run.py``: a pair whose idx is absent from ``data.jsonl`` is dropped
(here: skipped and counted, ``function_not_in_data``); code is whitespace-normalised
(``' '.join(func.split())``; ``normalize=False`` keeps the raw source). Unlike ``run.py``, which reads
any label other than ``'0'`` as 1, a label that is neither ``0`` nor ``1`` is a bad row. Repeated pairs
are kept (``run.py`` keeps them; the official evaluator keys its dict by ``(idx1, idx2)``, so a repeated
pair counts once there) and their number is noted in the report.

Metric: precision / recall / F1 of the clone class, the pair predicted a clone when the similarity of its
two embeddings is above a threshold chosen on valid (`cocohanere_jax.clone_metrics`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from cocohanere_data.records import (
    DEFAULT_MAX_LINE_BYTES,
    BadInputError,
    LoadReport,
    Pair,
    Pairs,
    iter_jsonl,
    normalize_whitespace,
    skip_row,
)

SPLITS = ("train", "valid", "test")
_ALIASES = {"dev": "valid", "validation": "valid"}
DATA_FILE = "data.jsonl"

DOWNLOAD_INSTRUCTIONS = """\
BigCloneBench is not downloaded automatically. CodeXGLUE ships it in the repository:
  https://github.com/microsoft/CodeXGLUE/tree/main/Code-Code/Clone-detection-BigCloneBench/dataset
  -> data.jsonl, train.txt, valid.txt, test.txt   (e.g. git clone --depth 1 https://github.com/microsoft/CodeXGLUE;
     data.jsonl is also packed there as data.jsonl.zip in some revisions: unzip it)
Point the loader at that dataset/ directory."""


@dataclasses.dataclass
class ClonePairs:
    """Candidate pairs of one split over the functions they reference.

    Pair p is ``(funcs[left[p]], funcs[right[p]])`` with ``labels[p]`` 1 (clone) or 0. ``funcs`` holds each
    referenced function once, in order of first reference; ``func_keys`` their BigCloneBench ``idx``.
    """

    split: str
    func_keys: list[str]
    funcs: list[str]
    left: np.ndarray  # int64 [P]
    right: np.ndarray  # int64 [P]
    labels: np.ndarray  # int8 [P]
    report: LoadReport = dataclasses.field(default_factory=LoadReport)

    @property
    def num_pairs(self) -> int:
        return int(self.labels.shape[0])

    def clone_groups(self) -> np.ndarray:
        """int32 [len(funcs)]: connected components of the label-1 pairs (union-find), numbered 0..G-1 in
        order of first function. The label table of the step's false-negative mask (`cocohanere_jax.clone_tasks`): functions linked by clone pairs
        are never each other's negatives. (Transitive closure is an assumption: BigCloneBench labels pairs.)"""
        parent = np.arange(len(self.funcs))

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        for a, b in zip(self.left[self.labels == 1], self.right[self.labels == 1]):
            ra, rb = find(int(a)), find(int(b))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        roots = np.asarray([find(i) for i in range(len(self.funcs))])
        _, dense = np.unique(roots, return_inverse=True)
        return dense.astype(np.int32)

    def positive_pairs(self) -> tuple[Pairs, np.ndarray]:
        """Training pairs from the clone (label 1) pairs: `(Pairs, label_ids)` with query = left function,
        code = right function, key = "idx1|idx2", origin = "bigclonebench"; `label_ids` int32 [len(pairs)] is
        the clone group (`clone_groups`) of each pair, for the label masks."""
        groups = self.clone_groups()
        pos = np.flatnonzero(self.labels == 1)
        report = LoadReport()
        report.rows_read = self.num_pairs
        report.filtered["label_0_not_a_positive"] = int(self.num_pairs - len(pos))
        out = [Pair(i, self.funcs[self.left[p]], self.funcs[self.right[p]],
                    f"{self.func_keys[self.left[p]]}|{self.func_keys[self.right[p]]}", "java", "bigclonebench")
               for i, p in enumerate(pos)]
        report.rows_kept = len(out)
        if not out:
            raise BadInputError(f"BigCloneBench {self.split}: no label-1 pair to train on.")
        return Pairs(out, report), groups[self.left[pos]].astype(np.int32)


def canonical_split(split: str) -> str:
    s = _ALIASES.get(split, split)
    if s not in SPLITS:
        raise ValueError(f"unknown BigCloneBench split {split!r}; expected one of {SPLITS}")
    return s


def load_bcb_functions(root: str | os.PathLike, *, normalize: bool = True, strict: bool = False,
                       max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                       report: LoadReport | None = None) -> dict[str, str]:
    """``data.jsonl`` as idx -> code. Bad rows (missing/mistyped ``func``/``idx``, empty code, a repeated
    idx) are skipped and counted under ``data:<reason>`` in `report`."""
    root = Path(root)
    path = root / DATA_FILE if root.is_dir() else root
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing BigCloneBench function file.\n" + DOWNLOAD_INSTRUCTIONS)
    report = report if report is not None else LoadReport()
    sub = LoadReport()  # its rows are not the split's rows: reasons are prefixed and rows_read kept apart
    funcs: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line, row in iter_jsonl(path, sub, strict=strict, max_line_bytes=max_line_bytes):
        func, idx = row.get("func"), row.get("idx")
        if "func" not in row or "idx" not in row:
            name = "func" if "func" not in row else "idx"
            skip_row(sub, strict, f"missing_field:{name}", path, line, f"no '{name}' field")
            continue
        if not isinstance(func, str):
            skip_row(sub, strict, "bad_field_type:func", path, line, f"'func' is {type(func).__name__}, expected str")
            continue
        if isinstance(idx, bool) or not isinstance(idx, (str, int)):
            skip_row(sub, strict, "bad_field_type:idx", path, line, f"'idx' is {type(idx).__name__}, expected str")
            continue
        idx = str(idx)
        text = normalize_whitespace(func) if normalize else func
        if not text.strip():
            skip_row(sub, strict, "empty_code", path, line, "'func' is empty or whitespace only")
            continue
        if idx in funcs:
            skip_row(sub, strict, "duplicate_idx", path, line, f"idx {idx!r} already on line {first_line[idx]}")
            continue
        funcs[idx] = text
        first_line[idx] = line
    for reason, n in sub.skipped.items():
        report.skipped[f"data:{reason}"] += n
        report.locations[f"data:{reason}"].extend(sub.locations[reason][: report.max_locations])
    report.notes.append(f"{DATA_FILE}: {len(funcs)} functions of {sub.rows_read} rows")
    if not funcs:
        raise BadInputError(f"{path}: no usable function ({sub.summary()}).")
    return funcs


def load_bigclonebench(root: str | os.PathLike, split: str = "test", *, normalize: bool = True,
                       strict: bool = False, max_pairs: int = 0,
                       max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> ClonePairs:
    """The labelled pairs of ``<split>.txt`` joined with ``data.jsonl`` (`max_pairs` > 0: the first n)."""
    split = canonical_split(split)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory.\n" + DOWNLOAD_INSTRUCTIONS)
    path = root / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing BigCloneBench {split} pairs.\n" + DOWNLOAD_INSTRUCTIONS)
    report = LoadReport()
    code = load_bcb_functions(root, normalize=normalize, strict=strict, max_line_bytes=max_line_bytes,
                              report=report)
    slot: dict[str, int] = {}
    keys: list[str] = []
    left, right, labels = [], [], []
    seen: set[tuple[str, str]] = set()
    repeated = 0
    with open(path, "rb") as f:
        head = f.read(8192)
        if b"\x00" in head:
            raise BadInputError(f"{path}: binary content (NUL bytes); expected lines 'idx1<TAB>idx2<TAB>label'.")
        f.seek(0)
        for line_no, raw in enumerate(f, start=1):
            if max_pairs and len(labels) >= max_pairs:
                break
            if not raw.strip():
                continue
            report.rows_read += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                skip_row(report, strict, "invalid_utf8", path, line_no, f"byte {e.start}: {e.reason}")
                continue
            fields = text.split()
            if len(fields) != 3:
                skip_row(report, strict, "malformed_pair_line", path, line_no,
                         f"{len(fields)} fields, expected 'idx1<TAB>idx2<TAB>label'")
                continue
            a, b, lab = fields
            if lab not in ("0", "1"):
                skip_row(report, strict, "bad_field_value:label", path, line_no, f"label {lab!r}, expected 0 or 1")
                continue
            missing = [k for k in (a, b) if k not in code]
            if missing:
                skip_row(report, strict, "function_not_in_data", path, line_no,
                         f"idx {', '.join(missing)} not in {DATA_FILE}")
                continue
            if (a, b) in seen:
                repeated += 1
            seen.add((a, b))
            for k in (a, b):
                if k not in slot:
                    slot[k] = len(keys)
                    keys.append(k)
            left.append(slot[a])
            right.append(slot[b])
            labels.append(int(lab))
    report.rows_kept = len(labels)
    if repeated:
        report.notes.append(f"{repeated} repeated (idx1, idx2) pairs kept")
    n_pos = int(sum(labels))
    report.notes.append(f"{n_pos} clone / {len(labels) - n_pos} non-clone pairs over {len(keys)} functions")
    report.log(f"BigCloneBench {path}")
    if not labels:
        raise BadInputError(f"{path}: no usable pair ({report.summary()}).")
    return ClonePairs(split, keys, [code[k] for k in keys], np.asarray(left, np.int64),
                      np.asarray(right, np.int64), np.asarray(labels, np.int8), report)
