"""Reader for POJ-104 (Mou et al. 2016) as CodeXGLUE publishes it: Clone-detection-POJ-104.

Published layout (CodeXGLUE ``Code-Code/Clone-detection-POJ-104``, written by its
``dataset/preprocess.py``): ``root/{train,valid,test}.jsonl``, one JSON object per line with

* ``code``: the C/C++ source of one student program (read from the archive as latin-1),
* ``label``: the problem the program solves, a string ``"1"`` .. ``"104"`` (train 1-64, valid 65-80,
  test 81-104; 500 programs per problem),
* ``index``: a string, the running example number over all three files.

Also readable: the extracted archive itself (``programs.tar.gz`` -> ``ProgramData/<problem>/<file>``),
split by problem number exactly as ``preprocess.py`` does; files are read in sorted name order (the
published ``index`` follows ``os.walk`` order, which is filesystem-dependent), so ``index`` values of this
layout are ``ProgramData/<problem>/<file>`` paths instead.

Text convention: ``code`` whitespace-normalised (``' '.join(code.split())``), as CodeXGLUE's
``code/run.py`` does before tokenising; ``normalize=False`` keeps the raw source. Evaluation: every
program of a split queries all the others (MAP@R, `cocohanere_jax.clone_metrics.map_at_r`).

Bad rows follow `cocohanere_data.records`: skipped and counted with ``file:line`` (``strict=True`` raises).
"""

from __future__ import annotations

import os
from pathlib import Path

from cocohanere_data.records import (
    DEFAULT_MAX_LINE_BYTES,
    BadInputError,
    LabelledCode,
    LabelledCodes,
    LoadReport,
    iter_jsonl,
    normalize_whitespace,
    skip_row,
)

SPLITS = ("train", "valid", "test")
_ALIASES = {"dev": "valid", "validation": "valid"}
# preprocess.py: train = problems 1..64, valid = 65..80, test = 81..104.
PROBLEMS = {"train": range(1, 65), "valid": range(65, 81), "test": range(81, 105)}

DOWNLOAD_INSTRUCTIONS = """\
POJ-104 is not downloaded automatically. CodeXGLUE's recipe (Code-Code/Clone-detection-POJ-104/dataset):
  pip install gdown
  gdown https://drive.google.com/uc?id=0B2i-vWnOu7MxVlJwQXN6eVNONUU     # programs.tar.gz
  tar -xvf programs.tar.gz                                              # -> ProgramData/<1..104>/
  python preprocess.py                                                  # -> train.jsonl valid.jsonl test.jsonl
(preprocess.py: https://github.com/microsoft/CodeXGLUE/blob/main/Code-Code/Clone-detection-POJ-104/dataset/preprocess.py)
Point the loader at the directory holding the three .jsonl files, or at the one holding ProgramData/."""


def canonical_split(split: str) -> str:
    s = _ALIASES.get(split, split)
    if s not in SPLITS:
        raise ValueError(f"unknown POJ-104 split {split!r}; expected one of {SPLITS}")
    return s


def detect_layout(root: str | os.PathLike, split: str = "test") -> str:
    """'jsonl' (CodeXGLUE's preprocessed files) or 'programdata' (the extracted archive)."""
    root = Path(root)
    if root.is_file() or (root / f"{canonical_split(split)}.jsonl").is_file():
        return "jsonl"
    if (root / "ProgramData").is_dir():
        return "programdata"
    raise FileNotFoundError(f"No POJ-104 data under {root}: found neither {root}/{canonical_split(split)}.jsonl "
                            f"nor {root}/ProgramData/.\n" + DOWNLOAD_INSTRUCTIONS)


def load_poj104(root_or_file: str | os.PathLike, split: str = "test", *, layout: str = "auto",
                normalize: bool = True, strict: bool = False,
                max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> LabelledCodes:
    """The programs of one POJ-104 split with their problem labels (`label` = problem number as str)."""
    split = canonical_split(split)
    if layout == "auto":
        layout = detect_layout(root_or_file, split)
    if layout == "jsonl":
        p = Path(root_or_file)
        path = p if p.is_file() else p / f"{split}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing POJ-104 {split} file.\n" + DOWNLOAD_INSTRUCTIONS)
        return _load_jsonl(path, split, normalize, strict, max_line_bytes)
    if layout == "programdata":
        return _load_program_data(Path(root_or_file) / "ProgramData", split, normalize, strict)
    raise ValueError(f"layout must be 'auto', 'jsonl' or 'programdata', got {layout!r}")


def _load_jsonl(path: Path, split: str, normalize: bool, strict: bool, max_line_bytes: int) -> LabelledCodes:
    report = LoadReport()
    items: list[LabelledCode] = []
    seen: dict[str, int] = {}
    for line, row in iter_jsonl(path, report, strict=strict, max_line_bytes=max_line_bytes):
        code = _field(row, "code", (str,), report, path, line, strict)
        label = _field(row, "label", (str, int), report, path, line, strict) if code is not None else None
        index = _field(row, "index", (str, int), report, path, line, strict) if label is not None else None
        if index is None:
            continue
        label, index = str(label).strip(), str(index)
        if not label:
            skip_row(report, strict, "bad_field_value:label", path, line, "'label' is empty (expected the problem number)")
            continue
        text = normalize_whitespace(code) if normalize else code
        if not text.strip():
            skip_row(report, strict, "empty_code", path, line, "'code' is empty or whitespace only")
            continue
        if index in seen:
            skip_row(report, strict, "duplicate_index", path, line,
                     f"index {index!r} already on line {seen[index]}; each program needs its own index")
            continue
        seen[index] = line
        items.append(LabelledCode(len(items), text, label, index, "c", f"poj104/{split}"))
    return _finish(items, report, f"POJ-104 {path}")


def _field(row: dict, name: str, kinds: tuple[type, ...], report: LoadReport, path: Path, line: int, strict: bool):
    if name not in row:
        skip_row(report, strict, f"missing_field:{name}", path, line, f"no '{name}' field")
        return None
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, kinds):
        want = "/".join(k.__name__ for k in kinds)
        skip_row(report, strict, f"bad_field_type:{name}", path, line, f"'{name}' is {type(value).__name__}, expected {want}")
        return None
    return value


def _load_program_data(base: Path, split: str, normalize: bool, strict: bool) -> LabelledCodes:
    report = LoadReport()
    items: list[LabelledCode] = []
    found_any = False
    for problem in PROBLEMS[split]:
        d = base / str(problem)
        if not d.is_dir():
            continue
        found_any = True
        for f in sorted(p for p in d.rglob("*") if p.is_file()):
            report.rows_read += 1
            raw = f.read_bytes()
            if b"\x00" in raw:
                skip_row(report, strict, "binary_file", f, 1, "NUL bytes; expected C/C++ source")
                continue
            code = raw.decode("latin-1")  # as preprocess.py reads them
            text = normalize_whitespace(code) if normalize else code
            if not text.strip():
                skip_row(report, strict, "empty_code", f, 1, "empty file")
                continue
            key = f"ProgramData/{f.relative_to(base).as_posix()}"
            items.append(LabelledCode(len(items), text, str(problem), key, "c", f"poj104/{split}"))
    if not found_any:
        r = PROBLEMS[split]
        raise FileNotFoundError(f"{base}: none of the problem folders {r.start}..{r.stop - 1} of the {split} split.\n"
                                + DOWNLOAD_INSTRUCTIONS)
    return _finish(items, report, f"POJ-104 {base} ({split})")


def _finish(items: list[LabelledCode], report: LoadReport, what: str) -> LabelledCodes:
    report.rows_kept = len(items)
    labels = {it.label for it in items}
    report.notes.append(f"{len(labels)} labels")
    report.log(what)
    if not items:
        raise BadInputError(f"{what}: no usable program ({report.summary()}).")
    return LabelledCodes(items, report)
