"""Uniform in-memory records for code search, and the bad-input policy every reader follows.

Every loader in `data/` returns the same two shapes:

* `Pairs`: training (or validation) pairs, a sequence of `Pair(data_id, query, code, key, language,
  origin)`. `data_id` is the row index within the returned sequence: it indexes the token table
  built by `cocohanere_jax.input_pipeline` and is the DataID the memory bank stores.
* `EvalSplit`: queries with the key of their target, and the codebase (keys + code texts) every
  query is ranked against.

Bad-input policy (the same in every reader, documented in data/README.md):

* **Row-level problems** (a malformed JSON line, invalid UTF-8, a line over `max_line_bytes`, a row
  that is not an object, a missing or mistyped field, an empty query or code) are *skipped and
  counted*. The `LoadReport` keeps the count per reason and the first few `file:line` locations; a
  one-line summary is logged as a warning when anything was skipped, and the report travels with the
  result (`pairs.report`, `split.report`). With `strict=True` the first such row raises
  `BadInputError` naming file, line and reason instead.
* **File-level problems** (a missing file or directory, a file that is binary or not gzip where gzip
  is expected, a JSON array that does not parse, a split that yields no usable row) raise
  `BadInputError` / `FileNotFoundError` naming the file (and line where one exists) and the fix.
* Rows removed *by design* (CoSQA label-0 pairs, which are not positives) are counted separately under
  `filtered`, so that `rows_read == rows_kept + sum(skipped) + sum(filtered)` holds for the rows of
  the split's own files. Problems in an auxiliary file (the codebase a split is joined with) are
  counted under reasons prefixed `codebase:`; those rows are not part of `rows_read`.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import io
import json
import logging
import os
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# CodeSearchNet rows reach a few hundred KB at most; a line beyond this is a broken file, not data.
DEFAULT_MAX_LINE_BYTES = 8 << 20
_SNIFF_BYTES = 8192


class BadInputError(ValueError):
    """Input that cannot be read as documented; the message names file, line and the fix."""


@dataclasses.dataclass(frozen=True, slots=True)
class Pair:
    """One (query, code) training pair.

    `data_id` is the row index within the training set the pair was loaded into (0..N-1); `key` is
    the CodeSearchNet `url` (or CoSQA retrieval index) that identifies the code; `origin` is the
    repository or package the code comes from.
    """

    data_id: int
    query: str
    code: str
    key: str
    language: str
    origin: str

    @property
    def url(self) -> str:
        return self.key


class LoadReport:
    """Counts of rows read, kept, skipped (bad input) and filtered (by design), with locations."""

    def __init__(self, max_locations: int = 5):
        self.max_locations = max_locations
        self.rows_read = 0
        self.rows_kept = 0
        self.skipped: collections.Counter[str] = collections.Counter()
        self.filtered: collections.Counter[str] = collections.Counter()
        self.locations: dict[str, list[str]] = collections.defaultdict(list)
        self.notes: list[str] = []

    def skip(self, reason: str, path: str | os.PathLike, line: int | str | None, detail: str = "") -> None:
        self.skipped[reason] += 1
        self._locate(reason, path, line, detail)

    def filter(self, reason: str, path: str | os.PathLike, line: int | str | None, detail: str = "") -> None:
        self.filtered[reason] += 1
        self._locate(reason, path, line, detail)

    def _locate(self, reason, path, line, detail) -> None:
        locs = self.locations[reason]
        if len(locs) < self.max_locations:
            loc = f"{path}:{line}" if line is not None else str(path)
            locs.append(f"{loc} ({detail})" if detail else loc)

    def merge(self, other: "LoadReport") -> None:
        self.rows_read += other.rows_read
        self.rows_kept += other.rows_kept
        self.skipped.update(other.skipped)
        self.filtered.update(other.filtered)
        for reason, locs in other.locations.items():
            mine = self.locations[reason]
            mine.extend(locs[: max(0, self.max_locations - len(mine))])
        self.notes.extend(other.notes)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        parts = [f"read {self.rows_read} rows, kept {self.rows_kept}"]
        for name, counter in (("skipped", self.skipped), ("filtered", self.filtered)):
            for reason, n in sorted(counter.items()):
                locs = "; ".join(self.locations.get(reason, []))
                parts.append(f"{name} {n} {reason}" + (f" [first: {locs}]" if locs else ""))
        parts.extend(self.notes)
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "skipped": dict(self.skipped),
            "filtered": dict(self.filtered),
            "locations": dict(self.locations),
            "notes": list(self.notes),
        }

    def log(self, what: str) -> None:
        """Logs the summary: a warning when bad input was skipped, info otherwise."""
        level = logging.WARNING if self.skipped else logging.INFO
        log.log(level, "%s: %s", what, self.summary())


class Pairs(Sequence[Pair]):
    """An immutable sequence of `Pair`s with `data_id == index`, plus the load report."""

    def __init__(self, pairs: list[Pair], report: LoadReport | None = None):
        for i, p in enumerate(pairs):
            if p.data_id != i:
                raise ValueError(f"Pairs need data_id == row index; row {i} has data_id {p.data_id}")
        self._pairs = pairs
        self.report = report if report is not None else LoadReport()

    @classmethod
    def from_columns(cls, queries: Sequence[str], codes: Sequence[str], keys: Sequence[str],
                     language: str | Sequence[str], origins: str | Sequence[str],
                     report: LoadReport | None = None) -> "Pairs":
        n = len(queries)
        langs = [language] * n if isinstance(language, str) else list(language)
        origs = [origins] * n if isinstance(origins, str) else list(origins)
        if not (len(codes) == len(keys) == len(langs) == len(origs) == n):
            raise ValueError("from_columns: all columns must have the same length")
        return cls([Pair(i, queries[i], codes[i], keys[i], langs[i], origs[i]) for i in range(n)], report)

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, i):  # type: ignore[override]
        return self._pairs[i]

    def __iter__(self) -> Iterator[Pair]:
        return iter(self._pairs)

    @property
    def queries(self) -> list[str]:
        return [p.query for p in self._pairs]

    @property
    def codes(self) -> list[str]:
        return [p.code for p in self._pairs]

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self._pairs]

    def __repr__(self) -> str:
        return f"Pairs(n={len(self)}, report={self.report.summary()!r})"


@dataclasses.dataclass
class EvalSplit:
    """Queries with their target keys, and the codebase they are ranked against.

    Query i is answered by every codebase entry j with `code_keys[j] == query_keys[i]` (normally
    exactly one; published CodeSearchNet codebases hold a few repeated urls, see `targets`).
    """

    language: str
    split: str
    query_texts: list[str]
    query_keys: list[str]
    code_keys: list[str]
    code_texts: list[str]
    report: LoadReport = dataclasses.field(default_factory=LoadReport)

    def __post_init__(self):
        if len(self.query_texts) != len(self.query_keys):
            raise ValueError("EvalSplit: query_texts and query_keys differ in length")
        if len(self.code_texts) != len(self.code_keys):
            raise ValueError("EvalSplit: code_texts and code_keys differ in length")

    @property
    def num_queries(self) -> int:
        return len(self.query_texts)

    @property
    def num_codes(self) -> int:
        return len(self.code_texts)

    def targets(self) -> list[np.ndarray]:
        """For each query, the int64 indices of the codebase entries carrying its key."""
        where: dict[str, list[int]] = collections.defaultdict(list)
        for j, k in enumerate(self.code_keys):
            where[k].append(j)
        return [np.asarray(where.get(k, ()), dtype=np.int64) for k in self.query_keys]

    def target_index(self) -> np.ndarray:
        """int64 [num_queries]: the first codebase index carrying each query's key (-1 if none)."""
        first: dict[str, int] = {}
        for j, k in enumerate(self.code_keys):
            first.setdefault(k, j)
        return np.asarray([first.get(k, -1) for k in self.query_keys], dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# Readers with the bad-input policy built in.


def _open_binary(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _check_not_binary(path: Path, head: bytes) -> None:
    if b"\x00" in head:
        raise BadInputError(
            f"{path}: binary content (NUL bytes in the first {len(head)} bytes); expected UTF-8 "
            "JSON text. Check that the file is the right one (a .gz file must be named *.gz).")


def iter_jsonl(path: str | os.PathLike, report: LoadReport, *, strict: bool = False,
               max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[tuple[int, dict]]:
    """Yields `(line_number, object)` for each JSON-object line of a .jsonl or .jsonl.gz file.

    Blank lines are ignored. Bad rows are skipped and counted in `report` (or raise with
    `strict=True`). A missing, binary or corrupt-gzip file raises.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")

    def bad(reason: str, line: int, detail: str) -> None:
        if strict:
            raise BadInputError(f"{path}:{line}: {reason}: {detail}")
        report.skip(reason, path, line, detail)

    line_no = 0
    try:
        with _open_binary(path) as f:
            head = f.peek(_SNIFF_BYTES)[:_SNIFF_BYTES] if hasattr(f, "peek") else b""
            _check_not_binary(path, head)
            while True:
                raw = f.readline(max_line_bytes + 1)
                if not raw:
                    break
                line_no += 1
                if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                    # Consume the rest of the over-long line so that the next row starts cleanly.
                    size = len(raw)
                    while raw and not raw.endswith(b"\n"):
                        raw = f.readline(1 << 20)
                        size += len(raw)
                    report.rows_read += 1
                    bad("line_too_long", line_no, f"{size} bytes > max_line_bytes={max_line_bytes}")
                    continue
                if not raw.strip():
                    continue
                report.rows_read += 1
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    bad("invalid_utf8", line_no, f"byte {e.start}: {e.reason}")
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    bad("malformed_json", line_no, f"column {e.colno}: {e.msg}")
                    continue
                if not isinstance(obj, dict):
                    bad("not_an_object", line_no, f"a JSON {type(obj).__name__}, expected an object")
                    continue
                yield line_no, obj
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise BadInputError(f"{path}:{line_no + 1}: corrupt or truncated gzip data ({e}); "
                            "download the file again.") from e


def iter_json_array(path: str | os.PathLike, report: LoadReport) -> Iterator[tuple[int, Any]]:
    """Yields `(line_number, element)` for each element of a file holding one JSON array.

    The line number is where the element starts. A file that is not a JSON array raises
    `BadInputError` with the line and column of the first error (a broken array cannot be resynced).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = path.read_bytes()
    _check_not_binary(path, data[:_SNIFF_BYTES])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise BadInputError(f"{path}:{line}: invalid UTF-8 ({e.reason}); a JSON array file must be UTF-8.") from e
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        raise BadInputError(f"{path}:{text.count(chr(10), 0, pos) + 1}: expected a JSON array ('[').")
    pos = _skip_ws(text, pos + 1)
    line, counted = 1, 0
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise BadInputError(f"{path}:{e.lineno}: malformed JSON array element at column {e.colno}: "
                                f"{e.msg}") from e
        report.rows_read += 1
        yield line, obj
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            return
        lineno = text.count("\n", 0, pos) + 1
        raise BadInputError(f"{path}:{lineno}: expected ',' or ']' in the JSON array.")


def _skip_ws(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in " \t\r\n":
        pos += 1
    return pos


def get_field(row: dict, name: str, kind: type | tuple[type, ...], report: LoadReport, path: Path,
              line: int, strict: bool) -> Any:
    """`row[name]` if present and of type `kind`; otherwise counts the problem and returns None."""
    if name not in row:
        _bad(report, strict, f"missing_field:{name}", path, line, f"no '{name}' field")
        return None
    value = row[name]
    if not isinstance(value, kind) or (kind is list and not all(isinstance(t, str) for t in value)):
        want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        _bad(report, strict, f"bad_field_type:{name}", path, line,
             f"'{name}' is {type(value).__name__}, expected {want}" + (" of str" if kind is list else ""))
        return None
    return value


def _bad(report: LoadReport, strict: bool, reason: str, path: Path, line: int, detail: str) -> None:
    if strict:
        raise BadInputError(f"{path}:{line}: {reason}: {detail}")
    report.skip(reason, path, line, detail)


def skip_row(report: LoadReport, strict: bool, reason: str, path: Path, line: int, detail: str) -> None:
    """Counts (or, strict, raises on) one bad row."""
    _bad(report, strict, reason, path, line, detail)


def join_tokens(tokens: list[str]) -> str:
    """The published convention: text = ' '.join(tokens)."""
    return " ".join(tokens)


def normalize_whitespace(text: str) -> str:
    return " ".join(text.split())



# ----------------------------------------------------------------------------------------------
# Labelled code (code-to-code tasks: POJ-104, BigCloneBench functions, code groups from source trees).


@dataclasses.dataclass(frozen=True, slots=True)
class LabelledCode:
    """One program or function with the label of the group it belongs to.

    `data_id` is the row index within the loaded set; `label` names the group (POJ-104: the problem
    number; a source-tree group: the qualified function name); programs with the same label are
    clones of each other (positives), programs with different labels are not. `key` identifies the
    program itself (POJ-104 `index`, BigCloneBench `idx`, a source-tree `path#Lstart-Lend`).
    """

    data_id: int
    code: str
    label: str
    key: str
    language: str
    origin: str


class LabelledCodes(Sequence[LabelledCode]):
    """An immutable sequence of `LabelledCode` with `data_id == index`, plus the load report."""

    def __init__(self, items: list[LabelledCode], report: LoadReport | None = None):
        for i, it in enumerate(items):
            if it.data_id != i:
                raise ValueError(f"LabelledCodes need data_id == row index; row {i} has data_id {it.data_id}")
        self._items = items
        self.report = report if report is not None else LoadReport()

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):  # type: ignore[override]
        return self._items[i]

    def __iter__(self) -> Iterator[LabelledCode]:
        return iter(self._items)

    @property
    def codes(self) -> list[str]:
        return [it.code for it in self._items]

    @property
    def labels(self) -> list[str]:
        return [it.label for it in self._items]

    @property
    def keys(self) -> list[str]:
        return [it.key for it in self._items]

    def label_ids(self) -> np.ndarray:
        """int32 [N]: dense label ids 0..L-1, numbered in sorted order of the label strings
        (integers sort numerically when every label is an integer, as in POJ-104)."""
        names = sorted(set(self.labels), key=_label_sort_key)
        index = {name: i for i, name in enumerate(names)}
        return np.asarray([index[it.label] for it in self._items], np.int32)

    def groups(self) -> dict[str, np.ndarray]:
        """label -> int64 row indices carrying it (in row order)."""
        where: dict[str, list[int]] = collections.defaultdict(list)
        for it in self._items:
            where[it.label].append(it.data_id)
        return {k: np.asarray(v, np.int64) for k, v in where.items()}

    def positive_pairs(self, seed: int = 0) -> tuple["Pairs", np.ndarray]:
        """Code-to-code training pairs: every program whose label has another member is an anchor,
        paired with one other member of its group drawn with `seed` (as CodeXGLUE's POJ-104 pipeline
        draws one positive per anchor). Returns `(pairs, label_ids)`: `pairs[i].query` is the anchor
        code, `pairs[i].code` the positive, `pairs[i].key` = "<anchor key>|<positive key>",
        `pairs[i].origin` the label; `label_ids` int32 [len(pairs)] is the DataID -> label table the
        step's label mask reads (`cocohanere_jax.clone_tasks`). Programs alone in their group are counted under
        `filtered` (`singleton_label`) in `pairs.report`."""
        rng = np.random.default_rng(seed)
        ids = self.label_ids()
        groups = self.groups()
        report = LoadReport()
        report.rows_read = len(self._items)
        out: list[Pair] = []
        out_labels: list[int] = []
        for it in self._items:
            members = groups[it.label]
            if len(members) < 2:
                report.filter("singleton_label", it.key, None, f"label {it.label!r} has no other member")
                continue
            j = int(rng.integers(len(members) - 1))
            others = members[members != it.data_id]
            pos = self._items[int(others[j])]
            out.append(Pair(len(out), it.code, pos.code, f"{it.key}|{pos.key}", it.language, it.label))
            out_labels.append(int(ids[it.data_id]))
        report.rows_kept = len(out)
        if not out:
            raise BadInputError(f"positive_pairs: no label has two or more programs ({len(self)} programs); "
                                "code-to-code training needs groups of clones.")
        return Pairs(out, report), np.asarray(out_labels, np.int32)

    def __repr__(self) -> str:
        return f"LabelledCodes(n={len(self)}, labels={len(set(self.labels))}, report={self.report.summary()!r})"


def _label_sort_key(label: str):
    try:
        return (0, int(label), "")
    except ValueError:
        return (1, 0, label)
