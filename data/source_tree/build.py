"""Build a CodeSearchNet-layout corpus from any directory of source code.

    python -m cocohanere_data.source_tree.build --src DIR --out OUT --lang python

writes ``OUT/<lang>/{train,valid,test,codebase}.jsonl`` in the GraphCodeBERT-filtered layout (so
`cocohanere_data.codesearchnet.load_pairs` / `load_eval_split` read it unchanged) and ``OUT/<lang>/report.json``
saying how many files and functions every filter removed.

Pipeline (each step counts what it removes):

1. Files. Walk DIR in sorted order without following links. Pruned directories: hidden ones
   (``.git``...), ``node_modules``, ``vendor``, ``site-packages``, ``__pycache__``, test directories
   (``test``, ``tests``, ``testdata``, ``__tests__``, ``*_test``, ``test_*``; Ruby also ``spec``) and,
   for JavaScript, ``dist``/``build`` bundles. Skipped and counted with their first locations: test
   files (``*_test.go``, ``test_*.py``, ``*.test.js``, ``*Test.java``...), generated files
   (``*.min.js``), links, files over ``max_file_bytes`` (2 MB), binary files (NUL byte in the first
   8 KB), files that are not valid UTF-8 (``file:line`` of the first bad byte).
2. Functions (tree-sitter, `cocohanere_data.source_tree.extract`), then the CodeSearchNet filters in this
   order: no doc comment; empty doc; a parse error inside the function; no body (abstract/interface
   methods); a name with a ``test*`` component; Python dunders and the constructors/standard methods
   CodeSearchNet drops (``toString``, ``initialize``...); fewer than 3 non-blank code lines; a summary
   (first paragraph of the doc without ``@tag`` lines) of fewer than 3 words; an exact duplicate of an
   earlier function (hash of summary + code tokens, i.e. ignoring comments and layout).
3. Splits by group, never by row: a group is the first ``split_depth`` components of a file's
   directory (so the files of one package directory always stay together; a file at the top of
   the tree is its own group, like a top-level Python module). `assign_splits` gives whole groups
   to test and valid until each holds its fraction of the functions. ``auto`` depth takes the
   shallowest depth giving at least ``min_groups`` groups. valid/test functions whose code tokens
   also occur in train are removed (``code_in_train``).
4. Output in the published format: train rows complete; valid/test rows with ``original_string``,
   ``code`` and ``code_tokens`` blanked; codebase = the valid and test functions with ``docstring``
   and ``docstring_tokens`` blanked. ``url`` = ``[origin/]path#Lstart-Lend``, ``repo`` =
   ``[origin/]group``, ``sha`` = sha1 of the source file.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from cocohanere_data.records import BadInputError
from cocohanere_data.source_tree import docs
from cocohanere_data.source_tree.extract import Function, extract_functions
from cocohanere_data.source_tree.languages import LANGUAGES, grammar_versions, spec_for

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
FUNCTION_FILTERS = ("no_doc", "empty_doc", "parse_error", "no_body", "test_in_name",
                    "constructor_or_standard_method", "short_code", "short_summary", "duplicate")
PRUNED_DIRS = frozenset({"node_modules", "vendor", "site-packages", "__pycache__", "bower_components"})
_TEST_DIR = re.compile(r"^(tests?|testdata|__tests__|.+_tests?|tests?_.+)$", re.IGNORECASE)
_SPEC_DIR = re.compile(r"^specs?$", re.IGNORECASE)  # RSpec suites: test directories in Ruby only
_SNIFF = 8192


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    lang: str
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    split_depth: int | None = None      # None: auto (shallowest depth with >= min_groups groups)
    min_groups: int = 10
    max_file_bytes: int = 2_000_000
    min_code_lines: int = 3
    min_summary_words: int = 3
    origin: str = ""                   # prefix of repo and url; "" = none
    include: tuple[str, ...] = ()      # only these top-level entries of src (dirs or file stems)
    jobs: int = 1
    max_locations: int = 5

    def __post_init__(self):
        spec_for(self.lang)
        if not (0 <= self.valid_fraction < 1 and 0 <= self.test_fraction < 1
                and self.valid_fraction + self.test_fraction < 1):
            raise ValueError("valid_fraction and test_fraction must be in [0, 1) and sum below 1")
        if self.split_depth is not None and self.split_depth < 1:
            raise ValueError("split_depth must be >= 1 (or None for auto)")


class _Counter:
    """Counts with the first few locations per reason."""

    def __init__(self, max_locations: int):
        self.max_locations = max_locations
        self.counts: collections.Counter[str] = collections.Counter()
        self.locations: dict[str, list[str]] = collections.defaultdict(list)

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        if len(self.locations[reason]) < self.max_locations:
            self.locations[reason].append(where)


# ----------------------------------------------------------------------------------------------
# 1. Files


def walk_source_files(src: Path, lang: str, files: _Counter) -> list[tuple[str, Path]]:
    """(relative posix path, absolute path) of candidate files, sorted; counts what it leaves out."""
    spec = spec_for(lang)
    out = []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        rel_dir = Path(dirpath).relative_to(src)
        keep = []
        for d in sorted(dirnames):
            full = Path(dirpath, d)
            rel = (rel_dir / d).as_posix()
            if d.startswith("."):
                continue  # .git, .venv, .tox: never source of the project itself
            if d in PRUNED_DIRS:
                files.add("pruned_dir:excluded", rel + "/")
            elif d in spec.generated_dirs:
                files.add("pruned_dir:generated", rel + "/")
            elif _TEST_DIR.match(d) or (lang == "ruby" and _SPEC_DIR.match(d)):
                files.add("pruned_dir:tests", rel + "/")
            elif full.is_symlink():
                files.add("symlink", rel)
            else:
                keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            if not name.endswith(spec.extensions):
                continue
            full = Path(dirpath, name)
            rel = (rel_dir / name).as_posix()
            if full.is_symlink():
                files.add("symlink", rel)
            elif spec.test_file.match(name):
                files.add("test_file", rel)
            elif spec.generated_file is not None and spec.generated_file.match(name):
                files.add("generated_file", rel)
            else:
                out.append((rel, full))
    out.sort()
    return out


def _read_source(path: Path, rel: str, max_bytes: int) -> tuple[bytes | None, str | None, str]:
    """(utf-8 bytes normalised to \\n, None, "") or (None, reason, location)."""
    try:
        size = path.stat().st_size
    except OSError as e:
        return None, "unreadable", f"{rel} ({e.strerror})"
    if size > max_bytes:
        return None, "file_too_large", f"{rel} ({size} bytes > {max_bytes})"
    try:
        data = path.read_bytes()
    except OSError as e:
        return None, "unreadable", f"{rel} ({e.strerror})"
    if b"\x00" in data[:_SNIFF]:
        return None, "binary_file", rel
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return None, "invalid_utf8", f"{rel}:{line} (byte {e.start}: {e.reason})"
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.encode("utf-8"), None, ""


def _extract_file(args: tuple[str, str, str, int]):
    rel, full, lang, max_bytes = args
    data, reason, where = _read_source(Path(full), rel, max_bytes)
    if data is None:
        return rel, None, reason, where
    sha = hashlib.sha1(data).hexdigest()
    return rel, sha, None, extract_functions(data, lang, rel)


# ----------------------------------------------------------------------------------------------
# 2. Function filters


def code_text(fn: Function) -> str:
    """The code as the model sees it: ' '.join(code_tokens) (no comments, no layout)."""
    return " ".join(fn.code_tokens)


def _dedupe_key(summary: str, fn: Function) -> str:
    return hashlib.sha1(f"{summary}\0{code_text(fn)}".encode("utf-8")).hexdigest()


_IDENT_PART = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def is_test_name(name: str) -> bool:
    """True if a component of the identifier starts with "test" (testFoo, test_bar, FooTest,
    TestCase, testing). CodeSearchNet's plain substring rule would also drop latest/attest/contest."""
    return any(part.lower().startswith("test") for part in _IDENT_PART.findall(name))


def function_filter(fn: Function, summary: str, cfg: BuildConfig) -> str | None:
    """The first CodeSearchNet filter `fn` fails (None: keep). Dedupe is applied by the caller."""
    spec = spec_for(cfg.lang)
    if fn.doc is None:
        return "no_doc"
    if not fn.doc.strip():
        return "empty_doc"
    if fn.has_error:
        return "parse_error"
    if not fn.has_body:
        return "no_body"
    if is_test_name(fn.name):
        return "test_in_name"
    simple = fn.name.rsplit(".", 1)[-1]
    if (cfg.lang == "python" and simple.startswith("__") and simple.endswith("__")) \
            or (cfg.lang == "php" and simple.startswith("__")) or simple in spec.boilerplate:
        return "constructor_or_standard_method"
    if sum(1 for line in fn.code.split("\n") if line.strip()) < cfg.min_code_lines:
        return "short_code"
    if docs.word_count(summary) < cfg.min_summary_words:
        return "short_summary"
    return None


# ----------------------------------------------------------------------------------------------
# 3. Splits


def group_of(rel_path: str, depth: int) -> str:
    """The first `depth` components of the file's directory: files of one directory (a Go, Java or
    PHP package, a Python package) always share a group. A file at the top of the tree is its own
    group (its stem: a top-level Python module such as ``os.py``)."""
    parts = rel_path.split("/")
    if len(parts) == 1:
        return parts[0].rsplit(".", 1)[0]
    return "/".join(parts[:-1][:depth])


def choose_depth(paths: list[str], min_groups: int) -> int:
    """Shallowest depth giving >= min_groups groups (else the depth giving the most)."""
    max_depth = max((p.count("/") for p in paths), default=1) or 1
    best, best_n = 1, 0
    for d in range(1, max_depth + 1):
        n = len({group_of(p, d) for p in paths})
        if n >= min_groups:
            return d
        if n > best_n:
            best, best_n = d, n
    return best


def assign_splits(sizes: dict[str, int], valid_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """group -> 'train'/'valid'/'test'.

    Groups are visited in a seeded hash order and fill test, then valid, up to their fraction of all
    functions; the rest is train. A first pass admits only groups of at most half a target, so that
    an eval split is made of several packages when it can be; a second pass admits any group that
    fits (overshooting by at most a quarter of the target). A non-empty eval split is guaranteed
    when its fraction > 0 and at least 3 groups exist.
    """
    total = sum(sizes.values())
    order = sorted(sizes, key=lambda g: hashlib.sha256(f"{seed}\0{g}".encode()).hexdigest())
    target = {"test": test_fraction * total, "valid": valid_fraction * total}
    count = {"test": 0, "valid": 0}
    out = {g: "train" for g in order}
    for max_share in (0.5, None):
        for g in order:
            if out[g] != "train":
                continue
            n = sizes[g]
            for split in ("test", "valid"):
                room = target[split] - count[split]
                if max_share is not None and n > max(1.0, max_share * target[split]):
                    continue
                if room > 0 and n <= room + 0.25 * target[split]:
                    out[g] = split
                    count[split] += n
                    break
    for split in ("test", "valid"):
        if target[split] > 0 and count[split] == 0:
            train = sorted((g for g in order if out[g] == "train"), key=lambda g: sizes[g])
            if len(train) > 1:
                out[train[0]] = split
    return out


# ----------------------------------------------------------------------------------------------
# 4. Output


def csn_row(fn: Function, summary: str, group: str, sha: str, lang: str, origin: str, partition: str) -> dict:
    prefix = f"{origin}/" if origin else ""
    return {
        "repo": prefix + group,
        "path": fn.path,
        "func_name": fn.func_name,
        "original_string": fn.original_string,
        "language": lang,
        "code": fn.code,
        "code_tokens": fn.code_tokens,
        "docstring": fn.doc,
        "docstring_tokens": docs.tokenize_docstring(summary),
        "sha": sha,
        "url": f"{prefix}{fn.path}#L{fn.start_line}-L{fn.end_line}",
        "partition": partition,
    }


def blank_code(row: dict) -> dict:
    return {**row, "original_string": "", "code": "", "code_tokens": []}


def blank_doc(row: dict) -> dict:
    return {**row, "docstring": "", "docstring_tokens": []}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False))
            f.write("\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------


def has_source_files(src: str | os.PathLike, lang: str) -> bool:
    """Whether the tree holds a file `build_corpus` would read for ``lang``."""
    return bool(walk_source_files(Path(src).resolve(), lang, _Counter(0)))


_STAMP = "build_stamp.json"
_BUILDER_VERSION = 1


def tree_fingerprint(src: str | os.PathLike, lang: str) -> str:
    """sha256 over (path, size, mtime) of the files `build_corpus` would read: changes when the tree does."""
    h = hashlib.sha256()
    for rel, full in walk_source_files(Path(src).resolve(), lang, _Counter(0)):
        st = full.stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def build_corpus_cached(src: str | os.PathLike, out: str | os.PathLike, cfg: BuildConfig, *,
                        stamp_extra: dict[str, Any] | None = None, force: bool = False) -> Path:
    """`build_corpus` unless ``out`` already holds the corpus of this tree and config; returns ``out``.

    The stamp (``out/<lang>/build_stamp.json``) records the builder version, the source path, the config
    (except ``jobs``), a fingerprint of the tree's files (`tree_fingerprint`) and ``stamp_extra``; any change
    rebuilds.
    """
    root = Path(out)
    stamp = {"builder_version": _BUILDER_VERSION, "src": str(Path(src).resolve()),
             "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "jobs"},
             "tree": tree_fingerprint(src, cfg.lang), **(stamp_extra or {})}
    stamp = json.loads(json.dumps(stamp))
    stamp_path = root / cfg.lang / _STAMP
    files = [root / cfg.lang / f"{s}.jsonl" for s in ("train", "valid", "test", "codebase")]
    if not force and stamp_path.is_file() and all(f.is_file() for f in files):
        try:
            if json.loads(stamp_path.read_text()) == stamp:
                return root
        except json.JSONDecodeError:
            pass
    build_corpus(src, root, cfg)
    stamp_path.write_text(json.dumps(stamp, indent=1))
    return root


def build_corpus(src: str | os.PathLike, out: str | os.PathLike, cfg: BuildConfig) -> dict[str, Any]:
    """Builds ``out/<lang>/`` from the source tree `src`; returns (and writes) the report."""
    t0 = time.time()
    src = Path(src).resolve()
    if not src.is_dir():
        raise FileNotFoundError(f"--src {src}: not a directory")
    lang_dir = Path(out) / cfg.lang
    lang_dir.mkdir(parents=True, exist_ok=True)

    files = _Counter(cfg.max_locations)
    candidates = walk_source_files(src, cfg.lang, files)
    if cfg.include:
        wanted = set(cfg.include)
        candidates = [(rel, full) for rel, full in candidates if group_of(rel, 1) in wanted]
    jobs_args = [(rel, str(full), cfg.lang, cfg.max_file_bytes) for rel, full in candidates]
    if cfg.jobs > 1 and len(jobs_args) > 1:
        # forkserver, not fork: the builder also runs inside a training process, where JAX's threads make
        # a forked child deadlock-prone.
        with concurrent.futures.ProcessPoolExecutor(cfg.jobs, mp_context=multiprocessing.get_context("forkserver")) as pool:
            results = list(pool.map(_extract_file, jobs_args, chunksize=16))
    else:
        results = [_extract_file(a) for a in jobs_args]

    funcs = _Counter(cfg.max_locations)
    seen: set[str] = set()
    kept: list[tuple[Function, str, str]] = []  # (function, summary, file sha)
    parsed = extracted = 0
    for rel, sha, reason, payload in results:
        if sha is None:
            files.add(reason, payload)
            continue
        parsed += 1
        for fn in payload:
            extracted += 1
            summary = docs.summary(fn.doc) if fn.doc else ""
            reason = function_filter(fn, summary, cfg)
            if reason is None:
                key = _dedupe_key(summary, fn)
                if key in seen:
                    reason = "duplicate"
                else:
                    seen.add(key)
            if reason is not None:
                funcs.add(reason, f"{fn.path}:{fn.start_line} {fn.func_name}")
                continue
            kept.append((fn, summary, sha))

    if not kept:
        raise BadInputError(
            f"{src}: no {cfg.lang} function passed the filters (files parsed {parsed}, functions "
            f"{extracted}, removed {dict(funcs.counts)}, files skipped {dict(files.counts)}).")

    paths = sorted({fn.path for fn, _, _ in kept})
    depth = cfg.split_depth or choose_depth(paths, cfg.min_groups)
    sizes: collections.Counter[str] = collections.Counter(group_of(fn.path, depth) for fn, _, _ in kept)
    if len(sizes) < 3 and (cfg.valid_fraction > 0 or cfg.test_fraction > 0):
        raise BadInputError(
            f"{src}: only {len(sizes)} group(s) at split depth {depth} ({sorted(sizes)}); splitting by "
            "package needs at least 3. Pass a deeper --split-depth or a larger source tree.")
    assignment = assign_splits(dict(sizes), cfg.valid_fraction, cfg.test_fraction, cfg.seed)

    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    train_code = {code_text(fn) for fn, _, _ in kept
                  if assignment[group_of(fn.path, depth)] == "train"}
    for fn, summary, sha in kept:
        group = group_of(fn.path, depth)
        split = assignment[group]
        if split != "train" and code_text(fn) in train_code:
            funcs.add("code_in_train", f"{fn.path}:{fn.start_line} {fn.func_name}")
            continue
        rows[split].append(csn_row(fn, summary, group, sha, cfg.lang, cfg.origin, split))

    _write_jsonl(lang_dir / "train.jsonl", rows["train"])
    _write_jsonl(lang_dir / "valid.jsonl", [blank_code(r) for r in rows["valid"]])
    _write_jsonl(lang_dir / "test.jsonl", [blank_code(r) for r in rows["test"]])
    _write_jsonl(lang_dir / "codebase.jsonl", [blank_doc(r) for r in rows["valid"] + rows["test"]])

    groups_by_split = {s: sorted(g for g, a in assignment.items() if a == s) for s in SPLITS}
    report = {
        "language": cfg.lang,
        "src": str(src),
        "out": str(lang_dir),
        "config": dataclasses.asdict(cfg),
        "versions": {"python": sys.version.split()[0], **grammar_versions()},
        "files": {
            "candidates": len(candidates),
            "parsed": parsed,
            "skipped": dict(sorted(files.counts.items())),
            "locations": dict(files.locations),
        },
        "functions": {
            "extracted": extracted,
            "removed": {k: funcs.counts[k] for k in (*FUNCTION_FILTERS, "code_in_train") if funcs.counts[k]},
            "locations": dict(funcs.locations),
            "kept": {s: len(rows[s]) for s in SPLITS},
        },
        "split": {
            "depth": depth,
            "depth_chosen": "auto" if cfg.split_depth is None else "config",
            "num_groups": {s: len(g) for s, g in groups_by_split.items()},
            "groups": groups_by_split,
        },
        "seconds": round(time.time() - t0, 2),
    }
    with open(lang_dir / "report.json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
    log.info("%s", format_report(report))
    return report


def format_report(report: dict[str, Any]) -> str:
    f, fn, sp = report["files"], report["functions"], report["split"]
    lines = [
        f"{report['language']}: {report['src']} -> {report['out']}",
        f"  files: {f['candidates']} candidates, {f['parsed']} parsed",
    ]
    for reason, n in f["skipped"].items():
        locs = "; ".join(f["locations"].get(reason, [])[:3])
        lines.append(f"    skipped {n:>7} {reason}  [{locs}]")
    lines.append(f"  functions: {fn['extracted']} extracted")
    for reason, n in fn["removed"].items():
        lines.append(f"    removed {n:>7} {reason}")
    kept = fn["kept"]
    lines.append(f"  kept: train {kept['train']}, valid {kept['valid']}, test {kept['test']} "
                 f"(codebase {kept['valid'] + kept['test']})")
    ng = sp["num_groups"]
    lines.append(f"  split depth {sp['depth']} ({sp['depth_chosen']}): groups train {ng['train']}, "
                 f"valid {ng['valid']}, test {ng['test']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cocohanere_data.source_tree.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--src", required=True, help="directory of source code (a repository, packages...)")
    p.add_argument("--out", required=True, help="output root; writes OUT/<lang>/{train,valid,test,codebase}.jsonl")
    p.add_argument("--lang", required=True, choices=LANGUAGES)
    p.add_argument("--valid-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-depth", type=int, default=None,
                   help="path components forming a split group (1 = top-level package); default auto")
    p.add_argument("--min-groups", type=int, default=10, help="auto depth: smallest depth with this many groups")
    p.add_argument("--max-file-bytes", type=int, default=2_000_000)
    p.add_argument("--origin", default="", help="prefix for repo and url (e.g. the project name)")
    p.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = BuildConfig(lang=args.lang, valid_fraction=args.valid_fraction, test_fraction=args.test_fraction,
                      seed=args.seed, split_depth=args.split_depth, min_groups=args.min_groups,
                      max_file_bytes=args.max_file_bytes, origin=args.origin, jobs=args.jobs)
    try:
        build_corpus(args.src, args.out, cfg)
    except (BadInputError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
