"""Readers for CodeSearchNet: the GraphCodeBERT-filtered release and the raw CSN v2 layout.

Layouts (`root` is the directory that holds one folder per language):

* ``graphcodebert``: ``root/<lang>/{train,valid,test,codebase}.jsonl``. Every row has the raw CSN v2
  fields. valid/test rows have ``original_string``, ``code`` and ``code_tokens`` blanked; codebase
  rows have ``docstring`` and ``docstring_tokens`` blanked. Each valid/test query is ranked against
  the whole ``codebase.jsonl`` and matched by ``url``.
* ``csn``: ``root/<lang>/final/jsonl/{train,valid,test}/<lang>_<split>_<n>.jsonl.gz`` (shards read
  in numeric order of ``n``). Evaluation ranks a split's queries against that split's own code.

Texts follow the published convention: query = ``' '.join(docstring_tokens)``, code =
``' '.join(code_tokens)``, key = ``url``, origin = ``repo``.

Bad input follows the policy in `cocohanere_data.records`: bad rows are skipped and counted (or raise with
``strict=True``), missing files raise with instructions to obtain them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from cocohanere_data.records import (
    DEFAULT_MAX_LINE_BYTES,
    BadInputError,
    EvalSplit,
    LoadReport,
    Pair,
    Pairs,
    get_field,
    iter_jsonl,
    join_tokens,
    skip_row,
)

LANGUAGES = ("go", "java", "javascript", "php", "python", "ruby")
SPLITS = ("train", "valid", "test")
LAYOUTS = ("graphcodebert", "csn")
_SPLIT_ALIASES = {"validation": "valid", "dev": "valid", "eval": "valid"}

DOWNLOAD_INSTRUCTIONS = """\
CodeSearchNet is not downloaded automatically (no dataset host is reachable from our machines).
Place one of these layouts under the data root and point the config at it:

  GraphCodeBERT-filtered (the benchmark the paper reports):
    https://github.com/microsoft/CodeBERT/raw/master/GraphCodeBERT/codesearch/dataset.zip
    unzip dataset.zip; cd dataset; bash run.sh   # fetches CSN v2 and writes <lang>/{train,valid,test,codebase}.jsonl
    -> ROOT/<lang>/train.jsonl, valid.jsonl, test.jsonl, codebase.jsonl

  Raw CodeSearchNet v2 (https://zenodo.org/record/7857872/files/<lang>.zip, unzip in ROOT):
    -> ROOT/<lang>/final/jsonl/{train,valid,test}/<lang>_<split>_<n>.jsonl.gz

Without either, build a corpus in the same layout from source code you have:
    python -m cocohanere_data.source_tree.build --src DIR --out ROOT --lang <lang>
or use the embedded default built from this interpreter's standard library
(cocohanere_data.stdlib_corpus.build_stdlib_corpus)."""


def canonical_split(split: str) -> str:
    s = _SPLIT_ALIASES.get(split, split)
    if s not in SPLITS and s != "codebase":
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS} (or 'codebase')")
    return s


def detect_layout(root: str | os.PathLike, lang: str) -> str:
    """'graphcodebert' or 'csn' for the files found under `root/lang`; raises with instructions."""
    lang_dir = Path(root) / lang
    if (lang_dir / "train.jsonl").is_file() or (lang_dir / "codebase.jsonl").is_file():
        return "graphcodebert"
    if (lang_dir / "final" / "jsonl").is_dir():
        return "csn"
    raise FileNotFoundError(
        f"No CodeSearchNet data for {lang!r} under {Path(root)}: found neither "
        f"{lang_dir}/train.jsonl nor {lang_dir}/final/jsonl/.\n" + DOWNLOAD_INSTRUCTIONS)


def _resolve_layout(root, lang, layout) -> str:
    if layout == "auto":
        return detect_layout(root, lang)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'auto' or one of {LAYOUTS}, got {layout!r}")
    return layout


def split_files(root: str | os.PathLike, lang: str, split: str, layout: str = "auto") -> list[Path]:
    """The files that hold `split` of `lang`, in reading order."""
    split = canonical_split(split)
    layout = _resolve_layout(root, lang, layout)
    lang_dir = Path(root) / lang
    if layout == "graphcodebert":
        path = lang_dir / f"{split}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (GraphCodeBERT layout needs "
                                    f"{lang_dir}/{{train,valid,test,codebase}}.jsonl).\n" + DOWNLOAD_INSTRUCTIONS)
        return [path]
    if split == "codebase":
        raise ValueError("the raw CSN v2 layout has no codebase split; use load_eval_split, which ranks a "
                         "split's queries against the same split's code")
    split_dir = lang_dir / "final" / "jsonl" / split
    pattern = re.compile(rf"^{re.escape(lang)}_{split}_(\d+)\.jsonl(\.gz)?$")
    found = []
    for p in split_dir.glob("*.jsonl*") if split_dir.is_dir() else ():
        m = pattern.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    if not found:
        raise FileNotFoundError(f"{split_dir}: no {lang}_{split}_<n>.jsonl.gz shards.\n" + DOWNLOAD_INSTRUCTIONS)
    return [p for _, p in sorted(found)]


def iter_rows(root: str | os.PathLike, lang: str, split: str, layout: str = "auto", *,
              report: LoadReport, strict: bool = False,
              max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[tuple[Path, int, dict]]:
    """Yields `(file, line, row)` for every well-formed JSON row of a split."""
    for path in split_files(root, lang, split, layout):
        for line, row in iter_jsonl(path, report, strict=strict, max_line_bytes=max_line_bytes):
            yield path, line, row


def _text(row: dict, field: str, report: LoadReport, path: Path, line: int, strict: bool,
          empty_reason: str) -> str | None:
    tokens = get_field(row, field, list, report, path, line, strict)
    if tokens is None:
        return None
    text = join_tokens(tokens)
    if not text.strip():
        skip_row(report, strict, empty_reason, path, line, f"'{field}' is empty")
        return None
    return text


def _origin(row: dict) -> str:
    repo = row.get("repo")
    return repo if isinstance(repo, str) else ""


def _language(row: dict, lang: str) -> str:
    value = row.get("language")
    return value if isinstance(value, str) and value else lang


def load_pairs(root: str | os.PathLike, lang: str, split: str = "train", layout: str = "auto", *,
               strict: bool = False, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Pairs:
    """(query, code) pairs of a CodeSearchNet split, `data_id` = row index of the result.

    For the GraphCodeBERT layout's valid/test splits, whose code is blanked, the code is taken from
    ``codebase.jsonl`` by ``url`` (queries whose url is absent there are skipped and counted).
    """
    split = canonical_split(split)
    if split == "codebase":
        raise ValueError("codebase rows carry no query; use load_eval_split for the codebase")
    layout = _resolve_layout(root, lang, layout)
    report = LoadReport()
    rows: list[tuple[str, str | None, str, str, str, Path, int]] = []
    need_code = layout == "csn" or split == "train"
    for path, line, row in iter_rows(root, lang, split, layout, report=report, strict=strict,
                                     max_line_bytes=max_line_bytes):
        key = get_field(row, "url", str, report, path, line, strict)
        if key is None:
            continue
        query = _text(row, "docstring_tokens", report, path, line, strict, "empty_query")
        if query is None:
            continue
        code = None
        if need_code:
            code = _text(row, "code_tokens", report, path, line, strict, "empty_code")
            if code is None:
                continue
        rows.append((query, code, key, _language(row, lang), _origin(row), path, line))

    if not need_code:
        codebase = _codebase_by_key(root, lang, report, strict, max_line_bytes)
        joined = []
        for query, _, key, language, origin, path, line in rows:
            if key not in codebase:
                skip_row(report, strict, "target_not_in_codebase", path, line, f"url {key!r}")
                continue
            joined.append((query, codebase[key], key, language, origin, path, line))
        rows = joined

    pairs = [Pair(i, q, c, k, lg, o) for i, (q, c, k, lg, o, _, _) in enumerate(rows)]  # type: ignore[arg-type]
    report.rows_kept = len(pairs)
    report.log(f"CodeSearchNet {lang}/{split} ({layout})")
    if not pairs:
        raise BadInputError(f"{root}/{lang} {split}: no usable pairs ({report.summary()}).")
    return Pairs(pairs, report)


def _codebase_by_key(root, lang, report, strict, max_line_bytes) -> dict[str, str]:
    """url -> code of the first codebase row carrying it."""
    sub = LoadReport(report.max_locations)
    out: dict[str, str] = {}
    for path, line, row in iter_rows(root, lang, "codebase", "graphcodebert", report=sub, strict=strict,
                                     max_line_bytes=max_line_bytes):
        key = get_field(row, "url", str, sub, path, line, strict)
        if key is None:
            continue
        code = _text(row, "code_tokens", sub, path, line, strict, "empty_code")
        if code is None:
            continue
        out.setdefault(key, code)
    # Codebase rows are not pairs: report their problems without counting them as pair rows.
    report.skipped.update({f"codebase:{k}": v for k, v in sub.skipped.items()})
    for k, locs in sub.locations.items():
        report.locations[f"codebase:{k}"] = locs
    return out


def load_eval_split(root: str | os.PathLike, lang: str, split: str = "test", layout: str = "auto", *,
                    strict: bool = False, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> EvalSplit:
    """The queries of `split` (valid or test) with their target urls, and the codebase to rank.

    GraphCodeBERT layout: the codebase is ``codebase.jsonl`` (the whole of it, as in the published
    protocol). Raw CSN layout: the codebase is the code of the same split's rows. Queries whose url
    is not in the codebase are skipped and counted; repeated codebase urls are kept (and noted).
    """
    split = canonical_split(split)
    if split not in ("valid", "test"):
        raise ValueError(f"load_eval_split evaluates 'valid' or 'test', got {split!r}")
    layout = _resolve_layout(root, lang, layout)
    report = LoadReport()
    q_texts: list[str] = []
    q_keys: list[str] = []
    q_locs: list[tuple[Path, int]] = []
    c_texts: list[str] = []
    c_keys: list[str] = []
    for path, line, row in iter_rows(root, lang, split, layout, report=report, strict=strict,
                                     max_line_bytes=max_line_bytes):
        key = get_field(row, "url", str, report, path, line, strict)
        if key is None:
            continue
        if layout == "csn":
            # One row feeds both sides: require both texts so that query and target stay aligned.
            query = _text(row, "docstring_tokens", report, path, line, strict, "empty_query")
            code = _text(row, "code_tokens", report, path, line, strict, "empty_code") if query else None
            if query is None or code is None:
                continue
            c_texts.append(code)
            c_keys.append(key)
        else:
            query = _text(row, "docstring_tokens", report, path, line, strict, "empty_query")
            if query is None:
                continue
        q_texts.append(query)
        q_keys.append(key)
        q_locs.append((path, line))

    if layout == "graphcodebert":
        cb = LoadReport(report.max_locations)
        for path, line, row in iter_rows(root, lang, "codebase", layout, report=cb, strict=strict,
                                         max_line_bytes=max_line_bytes):
            key = get_field(row, "url", str, cb, path, line, strict)
            if key is None:
                continue
            code = _text(row, "code_tokens", cb, path, line, strict, "empty_code")
            if code is None:
                continue
            c_texts.append(code)
            c_keys.append(key)
        report.skipped.update({f"codebase:{k}": v for k, v in cb.skipped.items()})
        for k, locs in cb.locations.items():
            report.locations[f"codebase:{k}"] = locs
        report.notes.append(f"codebase rows read {cb.rows_read}, kept {len(c_keys)}")

    known = set(c_keys)
    keep = []
    for i, key in enumerate(q_keys):
        if key in known:
            keep.append(i)
        else:
            path, line = q_locs[i]
            skip_row(report, strict, "target_not_in_codebase", path, line, f"url {key!r}")
    q_texts = [q_texts[i] for i in keep]
    q_keys = [q_keys[i] for i in keep]
    repeated = len(c_keys) - len(known)
    if repeated:
        report.notes.append(f"{repeated} codebase rows repeat an earlier url (all kept; a query matching "
                            "a repeated url is answered by any of them)")
    report.rows_kept = len(q_keys)
    report.log(f"CodeSearchNet {lang}/{split} eval ({layout})")
    if not q_keys:
        raise BadInputError(f"{root}/{lang} {split}: no usable queries ({report.summary()}).")
    return EvalSplit(lang, split, q_texts, q_keys, c_keys, c_texts, report)
