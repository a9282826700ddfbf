"""Labelled code groups from source trees: the same function across versions of a package.

A real code-to-code check that can be run here (no POJ-104 / BigCloneBench host is reachable): unpack two or
more releases of one package (``pip download --no-deps pkg==X``), extract every function with
`cocohanere_data.source_tree.extract`, and label each by its qualified name, ``<module path>::<Class.func>``.
A label present in several versions whose code *changed* between them is a group of near-duplicate clones
(edited, refactored, annotated); the versions' copies are its members. This is **not POJ-104**: POJ-104 groups
independent programs that solve one problem (semantic clones), these groups are mostly type-1..3 clones
(the same function edited over time); it measures how well an encoder finds a function's other version among
all functions of both releases.

    groups = build_version_groups({"7.1.2": Path("click-7.1.2"), "8.1.7": Path("click-8.1.7")})
    cocohanere_jax.clone_metrics.map_at_r(encoder.encode(groups.codes, kind="code"), groups.labels)

Rules (every removal is counted in ``report.filtered`` / ``report.skipped``, with locations):

* the code is the function's ``code`` (docstring removed, dedented), so unchanged docstrings do not make two
  versions look alike;
* functions shorter than ``min_lines`` lines are dropped (``too_short``: accessors, ``pass`` stubs);
* a name defined twice in one version (redefinitions, ``@property`` + setter, ``@overload``) is ambiguous and
  dropped in that version (``ambiguous_name``);
* within a group identical texts (after whitespace normalisation) count once (``identical_copy``); a group
  left with one text is ``unchanged`` and, with ``keep_unchanged=True`` (the default), stays as a single
  distractor (a candidate with a label of its own, never a query);
* names present in one version only stay as distractors too (``one_version_only``).
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Mapping
from pathlib import Path

from cocohanere_data.records import LabelledCode, LabelledCodes, LoadReport, normalize_whitespace

EXTENSIONS = {"python": (".py",), "java": (".java",), "javascript": (".js",), "go": (".go",), "php": (".php",),
              "ruby": (".rb",)}
_SKIP_DIRS = {"__pycache__", ".git", "node_modules"}


def module_path(rel: str) -> str:
    """A file path inside an unpacked release, made comparable across releases: drops a leading
    ``<name>-<version>/`` (sdists) and ``src/``; ``*.dist-info`` / ``*.egg-info`` files return ''."""
    parts = Path(rel).as_posix().split("/")
    if parts and re.fullmatch(r"[A-Za-z0-9_.\-]+-\d[\w.\-]*", parts[0]) and not parts[0].endswith((".dist-info", ".egg-info")):
        parts = parts[1:]
    if parts and parts[0] == "src":
        parts = parts[1:]
    if any(p.endswith((".dist-info", ".egg-info")) for p in parts):
        return ""
    return "/".join(parts)


def build_version_groups(trees: Mapping[str, str | os.PathLike], lang: str = "python", *, min_lines: int = 3,
                         keep_unchanged: bool = True, max_file_bytes: int = 2_000_000) -> LabelledCodes:
    """`LabelledCodes` over the functions of several versions (``{version: unpacked root}``, in order);
    ``label`` = ``<module path>::<qualified name>``, ``key`` = ``<version>/<module path>#L<start>-L<end>``,
    ``origin`` = the version."""
    from cocohanere_data.source_tree.extract import extract_functions

    if len(trees) < 2:
        raise ValueError("build_version_groups needs at least two versions")
    if lang not in EXTENSIONS:
        raise ValueError(f"unknown language {lang!r}; expected one of {sorted(EXTENSIONS)}")
    report = LoadReport()
    # label -> version -> [(key, code)]
    found: dict[str, dict[str, list[tuple[str, str]]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for version, root in trees.items():
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not a directory (the unpacked release of version {version})")
        for path in sorted(root.rglob("*")):
            if not path.is_file() or path.suffix not in EXTENSIONS[lang] or _SKIP_DIRS & set(path.parts):
                continue
            mod = module_path(str(path.relative_to(root)))
            if not mod:
                continue
            if path.stat().st_size > max_file_bytes:
                report.skip("file_too_large", path, None, f"{path.stat().st_size} bytes > {max_file_bytes}")
                continue
            try:
                source = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError as e:
                report.skip("invalid_utf8", path, None, f"byte {e.start}")
                continue
            for fn in extract_functions(source, lang, mod):
                report.rows_read += 1
                where = f"{version}/{mod}#L{fn.start_line}-L{fn.end_line}"
                if fn.has_error or not fn.has_body:
                    report.filter("no_body_or_parse_error", where, None)
                    continue
                if fn.end_line - fn.start_line + 1 < min_lines:
                    report.filter("too_short", where, None)
                    continue
                found[f"{mod}::{fn.func_name}"][version].append((where, fn.code))
    items: list[LabelledCode] = []
    groups = 0
    singles: collections.Counter[str] = collections.Counter()
    for label in sorted(found):
        members: list[tuple[str, str, str]] = []  # (version, key, code)
        for version, defs in found[label].items():
            if len(defs) > 1:
                for key, _ in defs:
                    report.filter("ambiguous_name", key, None, f"{label} defined {len(defs)} times in {version}")
                continue
            members.append((version, defs[0][0], defs[0][1]))
        distinct: dict[str, tuple[str, str, str]] = {}
        for m in members:
            norm = normalize_whitespace(m[2])
            if norm in distinct:
                report.filter("identical_copy", m[1], None, f"same text as {distinct[norm][1]}")
            else:
                distinct[norm] = m
        kept = list(distinct.values())
        if len(kept) >= 2:
            groups += 1
        elif kept:
            reason = "unchanged" if len(members) >= 2 else "one_version_only"
            singles[reason] += 1
            if not keep_unchanged:
                report.filter(reason, kept[0][1], None, label)
                continue
        for version, key, code in kept:
            items.append(LabelledCode(len(items), code, label, key, lang, version))
    report.rows_kept = len(items)
    report.notes.append(f"{groups} changed functions (groups of >= 2 versions); single-text names "
                        f"{'kept as distractors' if keep_unchanged else 'dropped'}: {singles['unchanged']} unchanged, "
                        f"{singles['one_version_only']} in one version only; {len(items)} functions in all")
    report.log(f"version groups {list(trees)}")
    return LabelledCodes(items, report)
