"""Doc comments: delimiters stripped, summary (first paragraph without tags), CSN docstring tokens."""

from __future__ import annotations

import ast
import inspect
import re

# CodeSearchNet's docstring tokenizer (function_parser, tokenize_docstring), so that
# ' '.join(docstring_tokens) looks like the published data.
_DOCSTRING_TOKEN = re.compile(
    r"[^\s,'\"`.():\[\]=*;>{\}+-/\\]+|\\+|\.+|\(\)|{\}|\[\]|\(+|\)+|:+|\[+|\]+|{+|\}+|=+|\*+|;+|>+|\++|-+|/+")

# A line that starts a tag/field section: Javadoc/JSDoc/PHPDoc "@param", reST ":param x:",
# Google/NumPy-style "Args:" headers.
_TAG_LINE = re.compile(
    r"^\s*(@\w|:(param|parameter|arg|argument|key|keyword|type|raises?|except|exception|returns?|rtype|"
    r"yields?|ytype|var|ivar|cvar|meta)\b|(Args|Arguments|Parameters|Params|Returns?|Yields?|Raises|"
    r"Throws|Example|Examples|Note|Notes|See Also|Attributes)\s*:\s*$)")
_INLINE_TAG = re.compile(r"\{@(?:link|linkplain|code|literal|see|value|inheritdoc)\s*([^}]*)\}", re.IGNORECASE)
_HTML_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(\s[^<>]*)?/?>")
_WORD = re.compile(r"[A-Za-z0-9]")


def tokenize_docstring(text: str) -> list[str]:
    return [t for t in _DOCSTRING_TOKEN.findall(text) if t]


def python_docstring(literal: str) -> str | None:
    """The value of a Python string literal used as a docstring (None for f-strings / bytes)."""
    try:
        value = ast.literal_eval(literal)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(value, str):
        return None
    return inspect.cleandoc(value)


def strip_block_comment(text: str) -> str:
    """`/** ... */` -> its text, leading `*` of each line removed, dedented."""
    body = text
    if body.startswith("/**"):
        body = body[3:]
    elif body.startswith("/*"):
        body = body[2:]
    if body.endswith("*/"):
        body = body[:-2].rstrip("*")
    lines = []
    for line in body.split("\n"):
        s = line.strip()
        if s.startswith("*"):
            s = s[1:]
            if s.startswith(" "):
                s = s[1:]
        lines.append(s.rstrip())
    return _trim_blank(lines)


def strip_line_comments(texts: list[str], prefixes: tuple[str, ...]) -> str:
    """A run of `//` or `#` comments -> their text with the markers removed."""
    lines = []
    for t in texts:
        s = t.strip()
        for p in prefixes:
            if s.startswith(p):
                s = s[len(p):]
                if p == "#":
                    s = s.lstrip("#")  # RDoc's "##" marks documentation of meta-programmed methods
                break
        if s.startswith(" "):
            s = s[1:]
        lines.append(s.rstrip())
    return _trim_blank(lines)


def strip_ruby_block(text: str) -> str:
    lines = text.split("\n")
    if lines and lines[0].startswith("=begin"):
        lines = lines[1:]
    if lines and lines[-1].startswith("=end"):
        lines = lines[:-1]
    return _trim_blank([line.rstrip() for line in lines])


def _trim_blank(lines: list[str]) -> str:
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines)


def summary(doc: str) -> str:
    """First paragraph of `doc`, stopping at the first tag line, inline tags and HTML removed."""
    out = []
    for line in doc.split("\n"):
        if not line.strip():
            if out:
                break
            continue
        if _TAG_LINE.match(line):
            break
        out.append(line.strip())
    text = " ".join(out)
    text = _INLINE_TAG.sub(lambda m: m.group(1).strip(), text)
    text = _HTML_TAG.sub(" ", text)
    return " ".join(text.split())


def word_count(text: str) -> int:
    return sum(1 for w in text.split() if _WORD.search(w))
