"""Reader for CoSQA (Huang et al. 2021): web queries paired with Python functions, labelled 0/1.

Published files (each one JSON array of objects with ``idx``, ``doc`` (the web query), ``code``,
``code_tokens`` (a space-separated string, docstring removed), ``docstring_tokens`` (a string),
``label`` (1 = the code answers the query) and, in the retrieval files, ``retrieval_idx``):

* retrieval release (CoCLR ``data/search``; what UniXcoder and the code-search literature use):
  ``cosqa-retrieval-train-19604.json``, ``cosqa-retrieval-dev-500.json``,
  ``cosqa-retrieval-test-500.json`` and ``code_idx_map.txt`` (one JSON object: code -> retrieval_idx,
  the codebase every dev/test query is ranked against);
* question-answering release (CodeXGLUE ``NL-code-search-WebQuery/CoSQA``): ``cosqa-train.json``,
  ``cosqa-dev.json``.

Only ``label == 1`` rows are training positives; label-0 rows are counted under ``filtered`` in the
report. Texts follow UniXcoder's protocol: query = whitespace-normalised ``doc``, training code =
whitespace-normalised ``code_tokens``, codebase code = whitespace-normalised key of
``code_idx_map.txt``. Key = ``str(retrieval_idx)`` (or ``idx`` in the QA release).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cocohanere_data.records import (
    BadInputError,
    EvalSplit,
    LoadReport,
    Pair,
    Pairs,
    iter_json_array,
    normalize_whitespace,
    skip_row,
)

_NAMES = {
    "train": ("cosqa-retrieval-train-*.json", "cosqa-train.json"),
    "valid": ("cosqa-retrieval-dev-*.json", "cosqa-dev.json"),
    "test": ("cosqa-retrieval-test-*.json",),
}
CODEBASE_NAME = "code_idx_map.txt"

DOWNLOAD_INSTRUCTIONS = """\
CoSQA is not downloaded automatically. Fetch the retrieval release into one directory:
  https://github.com/Jun-jie-Huang/CoCLR/raw/main/data/search/code_idx_map.txt
  https://github.com/Jun-jie-Huang/CoCLR/raw/main/data/search/cosqa-retrieval-train-19604.json
  https://github.com/Jun-jie-Huang/CoCLR/raw/main/data/search/cosqa-retrieval-dev-500.json
  https://github.com/Jun-jie-Huang/CoCLR/raw/main/data/search/cosqa-retrieval-test-500.json
(or the QA release cosqa-train.json / cosqa-dev.json from CodeXGLUE NL-code-search-WebQuery/CoSQA)."""


def cosqa_file(root_or_file: str | os.PathLike, split: str) -> Path:
    """The file holding `split` ('train', 'valid'/'dev', 'test'), or `root_or_file` if it is a file."""
    p = Path(root_or_file)
    if p.is_file():
        return p
    split = {"dev": "valid", "validation": "valid"}.get(split, split)
    if split not in _NAMES:
        raise ValueError(f"unknown CoSQA split {split!r}; expected train, valid or test")
    for pattern in _NAMES[split]:
        hits = sorted(p.glob(pattern))
        if len(hits) > 1:
            raise BadInputError(f"{p}: several files match {pattern}: {[h.name for h in hits]}; keep one.")
        if hits:
            return hits[0]
    raise FileNotFoundError(f"{p}: no CoSQA {split} file ({' or '.join(_NAMES[split])}).\n"
                            + DOWNLOAD_INSTRUCTIONS)


def _str_field(row: dict, name: str, report: LoadReport, path: Path, line: int, strict: bool) -> str | None:
    if name not in row:
        skip_row(report, strict, f"missing_field:{name}", path, line, f"no '{name}' field")
        return None
    value = row[name]
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        value = " ".join(value)
    if not isinstance(value, str):
        skip_row(report, strict, f"bad_field_type:{name}", path, line,
                 f"'{name}' is {type(value).__name__}, expected str")
        return None
    return normalize_whitespace(value)


def _label(row: dict, report: LoadReport, path: Path, line: int, strict: bool) -> int | None:
    if "label" not in row:
        skip_row(report, strict, "missing_field:label", path, line, "no 'label' field")
        return None
    value = row["label"]
    if isinstance(value, bool) or value not in (0, 1):
        skip_row(report, strict, "bad_field_value:label", path, line, f"label {value!r}, expected 0 or 1")
        return None
    return int(value)


def _key(row: dict, report: LoadReport, path: Path, line: int, strict: bool, require_retrieval: bool) -> str | None:
    if "retrieval_idx" in row:
        value = row["retrieval_idx"]
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            skip_row(report, strict, "bad_field_type:retrieval_idx", path, line,
                     f"retrieval_idx is {type(value).__name__}, expected int")
            return None
        return str(value)
    if require_retrieval:
        skip_row(report, strict, "missing_field:retrieval_idx", path, line,
                 "evaluation needs 'retrieval_idx' (use the cosqa-retrieval-* files)")
        return None
    idx = row.get("idx")
    if not isinstance(idx, (str, int)) or isinstance(idx, bool):
        skip_row(report, strict, "missing_field:idx", path, line, "neither 'retrieval_idx' nor 'idx'")
        return None
    return str(idx)


def _rows(path: Path, report: LoadReport, strict: bool):
    for line, row in iter_json_array(path, report):
        if not isinstance(row, dict):
            skip_row(report, strict, "not_an_object", path, line, f"a JSON {type(row).__name__}")
            continue
        yield line, row


def load_cosqa_pairs(root_or_file: str | os.PathLike, split: str = "train", *, strict: bool = False) -> Pairs:
    """Training positives (label 1) of a CoSQA split; `data_id` = row index of the result."""
    path = cosqa_file(root_or_file, split)
    report = LoadReport()
    pairs: list[Pair] = []
    for line, row in _rows(path, report, strict):
        label = _label(row, report, path, line, strict)
        if label is None:
            continue
        if label == 0:
            report.filter("label_0_not_a_positive", path, line)
            continue
        key = _key(row, report, path, line, strict, require_retrieval=False)
        query = _str_field(row, "doc", report, path, line, strict) if key is not None else None
        code = _str_field(row, "code_tokens", report, path, line, strict) if query is not None else None
        if key is None or query is None or code is None:
            continue
        if not query:
            skip_row(report, strict, "empty_query", path, line, "'doc' is empty")
            continue
        if not code:
            skip_row(report, strict, "empty_code", path, line, "'code_tokens' is empty")
            continue
        origin = row.get("idx") if isinstance(row.get("idx"), str) else ""
        pairs.append(Pair(len(pairs), query, code, key, "python", origin))
    report.rows_kept = len(pairs)
    report.log(f"CoSQA {path.name}")
    if not pairs:
        raise BadInputError(f"{path}: no usable label-1 pairs ({report.summary()}).")
    return Pairs(pairs, report)


def load_cosqa_eval(root: str | os.PathLike, split: str = "test", *,
                    codebase_file: str | os.PathLike | None = None, strict: bool = False) -> EvalSplit:
    """Label-1 queries of the dev/test retrieval file, ranked against ``code_idx_map.txt``."""
    path = cosqa_file(root, split)
    cb_path = Path(codebase_file) if codebase_file else (path.parent / CODEBASE_NAME)
    report = LoadReport()
    q_texts, q_keys, q_locs = [], [], []
    for line, row in _rows(path, report, strict):
        label = _label(row, report, path, line, strict)
        if label is None:
            continue
        if label == 0:
            report.filter("label_0_not_a_positive", path, line)
            continue
        key = _key(row, report, path, line, strict, require_retrieval=True)
        query = _str_field(row, "doc", report, path, line, strict) if key is not None else None
        if key is None or query is None:
            continue
        if not query:
            skip_row(report, strict, "empty_query", path, line, "'doc' is empty")
            continue
        q_texts.append(query)
        q_keys.append(key)
        q_locs.append(line)

    c_keys, c_texts = _load_code_idx_map(cb_path, report, strict)
    known = set(c_keys)
    keep = []
    for i, key in enumerate(q_keys):
        if key in known:
            keep.append(i)
        else:
            skip_row(report, strict, "target_not_in_codebase", path, q_locs[i], f"retrieval_idx {key}")
    q_texts = [q_texts[i] for i in keep]
    q_keys = [q_keys[i] for i in keep]
    report.rows_kept = len(q_keys)
    report.log(f"CoSQA {path.name} eval")
    if not q_keys:
        raise BadInputError(f"{path}: no usable queries ({report.summary()}).")
    return EvalSplit("python", split, q_texts, q_keys, c_keys, c_texts, report)


def _load_code_idx_map(path: Path, report: LoadReport, strict: bool) -> tuple[list[str], list[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing CoSQA codebase ({CODEBASE_NAME}).\n" + DOWNLOAD_INSTRUCTIONS)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInputError(f"{path}: invalid UTF-8 at byte {e.start} ({e.reason}).") from e
    try:
        mapping = json.loads(text, object_pairs_hook=list)
    except json.JSONDecodeError as e:
        raise BadInputError(f"{path}:{e.lineno}: not a JSON object (column {e.colno}: {e.msg}).") from e
    if not isinstance(mapping, list):
        raise BadInputError(f"{path}: expected one JSON object mapping code -> retrieval_idx.")
    keys, texts = [], []
    for i, (code, idx) in enumerate(mapping):
        where = f"entry {i}"
        if isinstance(idx, bool) or not isinstance(idx, (int, str)):
            skip_row(report, strict, "codebase:bad_retrieval_idx", path, where,  # type: ignore[arg-type]
                     f"value {idx!r}, expected int")
            continue
        text = normalize_whitespace(code)
        if not text:
            skip_row(report, strict, "codebase:empty_code", path, where, "empty code")  # type: ignore[arg-type]
            continue
        keys.append(str(idx))
        texts.append(text)
    report.notes.append(f"codebase {path.name}: {len(keys)} codes")
    return keys, texts
