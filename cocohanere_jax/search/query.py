"""Formatting of search results: grep-like lines for terminals and editors, JSON lines for tools."""

from __future__ import annotations

import json
import os
from typing import Sequence

from cocohanere_jax.search.index import Result


def display_path(path: str, cwd: str | None = None) -> str:
    """`path` relative to the current directory when it is below it (as grep prints), else absolute."""
    cwd = os.path.abspath(cwd or os.getcwd())
    try:
        rel = os.path.relpath(path, cwd)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def snippet(text: str, lines: int = 3) -> list[str]:
    """The first `lines` non-blank lines of a chunk (its signature and doc first)."""
    out = [ln.rstrip() for ln in text.split("\n") if ln.strip()]
    return out[:lines]


def format_text(results: Sequence[Result], snippet_lines: int = 3, cwd: str | None = None) -> str:
    """`path:line  score  name` per result, then its first lines indented (``--lines 0``: none)."""
    out = []
    for r in results:
        out.append(f"{display_path(r.path, cwd)}:{r.line}  {r.score:.4f}  {r.name}")
        for ln in snippet(r.text, snippet_lines):
            out.append(f"    {ln}")
    return "\n".join(out)


def format_json(results: Sequence[Result], snippet_lines: int = 3) -> str:
    """One JSON object per line: path, line, end_line, name, kind, language, score, indexed_path, text."""
    return "\n".join(json.dumps(r.to_json(snippet_lines), ensure_ascii=False) for r in results)
