"""Source files -> searchable chunks (functions, methods, classes, a per-file fallback).

Files: in a git work tree, `git ls-files --cached --others --exclude-standard` (so .gitignore is
honoured, untracked-but-not-ignored files are included); elsewhere a walk that never follows links and
prunes hidden directories (``.git``, ``.venv``...), ``node_modules``, ``vendor``, ``site-packages``
(below the root), ``__pycache__`` and ``bower_components``. Unlike the training-corpus builder, test
directories and test files are *kept*: people search their tests too. Every file then goes through the
corpus builder's reader (`cocohanere_data.source_tree.build._read_source`): files over ``max_file_bytes``,
binary files (NUL in the first 8 KB), invalid UTF-8 (with ``file:line``) and unreadable files are
skipped and counted, never fatal; so are symbolic links (which is what makes symlink loops harmless).

Chunks, per file (tree-sitter, `cocohanere_data.source_tree.extract`):
* every function and method, documented or not, nested ones included (kind ``function``);
* every class / interface / module / trait (kind ``class``), text cut to its first ``CLASS_LINES`` lines;
* when the file has neither: one ``file`` chunk (its first ``FILE_LINES`` lines).

The text a chunk is embedded with is its doc comment (if any) followed by its code (for Python the
docstring is part of the code already). Its identity for incremental updates is the sha1 of that text
plus the language: the same text at another place reuses its embedding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
from pathlib import Path

from cocohanere_data.source_tree.build import PRUNED_DIRS, _read_source
from cocohanere_data.source_tree.extract import extract_functions
from cocohanere_data.source_tree.languages import LANGUAGES, parser_for, spec_for

MAX_FILE_BYTES = 2_000_000
CLASS_LINES = 60
FILE_LINES = 80
MAX_CHUNK_CHARS = 20_000   # stored text; the model sees far less (max_length tokens)

EXTENSIONS: dict[str, str] = {ext: lang for lang in LANGUAGES for ext in spec_for(lang).extensions}


@dataclasses.dataclass(frozen=True)
class Chunk:
    path: str          # relative to its source root, posix; prefixed by the root's label when several
    name: str          # qualified: Class.method, Receiver.Method, the file stem for file chunks
    kind: str          # function | class | file
    language: str
    start_line: int    # 1-based, inclusive
    end_line: int
    text: str          # doc comment + code (what is embedded and shown)

    @property
    def key(self) -> str:
        return hashlib.sha1(f"{self.language}\0{self.text}".encode("utf-8", "surrogatepass")).hexdigest()


class SkipCounter:
    """Counts of skipped files per reason, with the first few locations."""

    def __init__(self, max_locations: int = 5):
        self.counts: dict[str, int] = {}
        self.locations: dict[str, list[str]] = {}
        self.max_locations = max_locations

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        locs = self.locations.setdefault(reason, [])
        if len(locs) < self.max_locations:
            locs.append(where)

    def as_dict(self) -> dict:
        return {"counts": dict(sorted(self.counts.items())), "locations": self.locations}


def language_of(path: str) -> str | None:
    return EXTENSIONS.get(os.path.splitext(path)[1])


def _git_files(root: Path) -> list[str] | None:
    """Files git knows of (tracked + untracked not ignored), relative to root; None if not a work tree."""
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"],
                             capture_output=True, text=True, timeout=60)
        if top.returncode != 0 or top.stdout.strip() != "true":
            return None
        # A directory the enclosing repository ignores (e.g. a virtualenv or ~/.pyenv/versions inside a
        # dotfiles repo): git knows none of its files, so walk it instead.
        ignored = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", "."], capture_output=True, timeout=60)
        if ignored.returncode == 0:
            return None
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard", "--", "."], capture_output=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return sorted({p for p in out.stdout.decode("utf-8", "surrogateescape").split("\0") if p})


def list_source_files(root: str | os.PathLike, skipped: SkipCounter, use_git: bool = True) -> tuple[list[str], str]:
    """(sorted relative posix paths of files in the six languages, "git" | "walk")."""
    root = Path(root)
    files = _git_files(root) if use_git else None
    if files is not None:
        out = []
        for rel in files:
            if language_of(rel) is None:
                continue
            full = root / rel
            if full.is_symlink():
                skipped.add("symlink", rel)
            elif not full.is_file():
                continue  # deleted in the work tree but still in the git index
            else:
                out.append(rel)
        return out, "git"
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root)
        keep = []
        for d in sorted(dirnames):
            full = Path(dirpath, d)
            if d.startswith(".") or d in PRUNED_DIRS:
                continue
            if full.is_symlink():
                skipped.add("symlink", (rel_dir / d).as_posix())
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            if language_of(name) is None:
                continue
            rel = (rel_dir / name).as_posix()
            if Path(dirpath, name).is_symlink():
                skipped.add("symlink", rel)
            else:
                out.append(rel)
    out.sort()
    return out, "walk"


def _class_chunks(source: bytes, lang: str, path: str) -> list[Chunk]:
    spec = spec_for(lang)
    if not spec.class_types:
        return []
    tree = parser_for(lang).parse(source)
    out = []
    stack = [(tree.root_node, ())]
    lines = None
    while stack:
        node, scope = stack.pop()
        if node.type in spec.comment_types:
            continue
        if node.type in spec.class_types:
            cname = node.child_by_field_name("name")
            if cname is not None:
                name = cname.text.decode("utf-8", "replace")
                if lines is None:
                    lines = source.decode("utf-8", "replace").split("\n")
                s, e = node.start_point[0], node.end_point[0]
                text = "\n".join(lines[s:min(e + 1, s + CLASS_LINES)])
                out.append(Chunk(path, ".".join([*scope, name]), "class", lang, s + 1, e + 1,
                                 _dedent(text)[:MAX_CHUNK_CHARS]))
                scope = (*scope, name)
        for child in reversed(node.children):
            stack.append((child, scope))
    return out


def _dedent(text: str) -> str:
    import textwrap

    return textwrap.dedent(text).strip("\n")


def chunks_of_source(source: bytes, lang: str, path: str) -> list[Chunk]:
    """Every chunk of one file's (UTF-8, \\n-normalised) bytes, in source order."""
    out = []
    for fn in extract_functions(source, lang, path):
        code = fn.original_string
        text = f"{fn.doc.strip()}\n{code}" if fn.doc and spec_for(lang).doc_style != "docstring" else code
        out.append(Chunk(path, fn.func_name, "function", lang, fn.start_line, fn.end_line,
                         text[:MAX_CHUNK_CHARS]))
    out.extend(_class_chunks(source, lang, path))
    if not out:
        text = source.decode("utf-8", "replace")
        n = text.count("\n") + (0 if text.endswith("\n") else 1)
        head = "\n".join(text.split("\n")[:FILE_LINES]).strip("\n")
        if head.strip():
            out.append(Chunk(path, Path(path).stem, "file", lang, 1, max(n, 1), head[:MAX_CHUNK_CHARS]))
    out.sort(key=lambda c: (c.start_line, c.kind != "class", c.end_line))
    return out


def extract_file(args: tuple[str, str, str, int]):
    """Worker: (label path, absolute path, language, max bytes) ->
    (label path, sha1 | None, chunks | None, skip reason, skip location)."""
    rel, full, lang, max_bytes = args
    data, reason, where = _read_source(Path(full), rel, max_bytes)
    if data is None:
        return rel, None, None, reason, where
    sha = hashlib.sha1(data).hexdigest()
    try:
        chunks = chunks_of_source(data, lang, rel)
    except Exception as e:  # a grammar crash on one file must not stop an index of millions
        return rel, None, None, "extract_error", f"{rel} ({type(e).__name__}: {e})"
    return rel, sha, chunks, None, ""
