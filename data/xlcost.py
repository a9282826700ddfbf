"""Reader for XLCoST's NL code search data (Zhu et al. 2022): text -> code in 7 languages.

Published layout (the XLCoST_data archive, metadata/codesearch/README.md of
reddy-lab-code-research/XLCoST):

    XLCoST_data/nl2code_search/{program_level,snippet_level}/<Lang>/{train,valid,test}.jsonl

with ``<Lang>`` one of ``C++ Java Python C# Javascript PHP C``; the snippet-level validation file is
named ``val.jsonl`` (both names are accepted at both levels). One JSON object per line; the fields NL
code search uses:

* ``docstring_tokens``: list of str, the query (program level: the problem description; snippet level:
  the snippet's comment);
* ``code_tokens``: list of str, the target program / snippet, tokenised (``NEW_LINE``, ``INDENT``,
  ``DEDENT`` mark the layout);
* ``url``: ``"<problem_id>-<Lang>"`` (program) or ``"<problem_id>-<Lang>-<snippet_id>"`` (snippet);
* ``idx``: the problem id (program, an int) or problem id and snippet id concatenated (snippet).

Texts follow XLCoST's ``code/run.py`` (adapted from CodeXGLUE NL-code-search-Adv): query =
``' '.join(docstring_tokens)``, code = ``' '.join(code_tokens)``. Evaluation ranks each query of a split
against all codes of the same split (`load_xlcost_eval`; the key is ``url``, unique per row); the metric is
MRR (`cocohanere_jax.clone_metrics.xlcost_mrr`). Bad rows follow `cocohanere_data.records`.
"""

from __future__ import annotations

import collections
import os
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

LANGUAGES = {  # accepted spelling (lower case) -> the folder name XLCoST uses
    "c++": "C++", "cpp": "C++", "java": "Java", "python": "Python", "py": "Python", "c#": "C#",
    "csharp": "C#", "cs": "C#", "javascript": "Javascript", "js": "Javascript", "php": "PHP", "c": "C",
}
LEVELS = ("program", "snippet")
SPLITS = ("train", "valid", "test")
_SPLIT_FILES = {"train": ("train.jsonl",), "valid": ("valid.jsonl", "val.jsonl"), "test": ("test.jsonl",)}
_ALIASES = {"dev": "valid", "val": "valid", "validation": "valid"}

DOWNLOAD_INSTRUCTIONS = """\
XLCoST is not downloaded automatically. Download XLCoST_data.zip (Google Drive link in
https://github.com/reddy-lab-code-research/XLCoST#data:
https://drive.google.com/file/d/10GaFasuLllexWbiH_oCgWKWXv_fFSkUY/view), e.g.
  pip install gdown && gdown 10GaFasuLllexWbiH_oCgWKWXv_fFSkUY && unzip XLCoST_data.zip
and point the loader at XLCoST_data/ (or at its nl2code_search/ folder):
  XLCoST_data/nl2code_search/{program_level,snippet_level}/<Lang>/{train,valid|val,test}.jsonl"""


def language_folder(lang: str) -> str:
    """XLCoST's folder name for `lang` ('python' -> 'Python', 'cpp' -> 'C++', 'csharp' -> 'C#', ...)."""
    try:
        return LANGUAGES[lang.lower()]
    except KeyError:
        raise ValueError(f"unknown XLCoST language {lang!r}; expected one of "
                         f"{sorted(set(LANGUAGES.values()))} (or cpp, csharp, js, py)") from None


def split_file(root: str | os.PathLike, lang: str, split: str, level: str = "program") -> Path:
    """The .jsonl of `split` for `lang` at `level`; `root` may be XLCoST_data/, nl2code_search/, the
    ``<level>_level`` folder, the language folder, or the file itself."""
    split = _ALIASES.get(split, split)
    if split not in SPLITS:
        raise ValueError(f"unknown XLCoST split {split!r}; expected one of {SPLITS}")
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    root = Path(root)
    if root.is_file():
        return root
    folder = language_folder(lang)
    for base in (root / "nl2code_search" / f"{level}_level" / folder, root / f"{level}_level" / folder,
                 root / folder, root):
        for name in _SPLIT_FILES[split]:
            if (base / name).is_file():
                return base / name
    raise FileNotFoundError(
        f"No XLCoST {level}-level {folder} {split} file under {root} (looked for "
        f"{root}/nl2code_search/{level}_level/{folder}/{' or '.join(_SPLIT_FILES[split])}).\n" + DOWNLOAD_INSTRUCTIONS)


def _rows(path: Path, report: LoadReport, strict: bool, max_line_bytes: int):
    urls: dict[str, int] = {}
    idxs: collections.Counter = collections.Counter()
    for line, row in iter_jsonl(path, report, strict=strict, max_line_bytes=max_line_bytes):
        q = get_field(row, "docstring_tokens", list, report, path, line, strict)
        c = get_field(row, "code_tokens", list, report, path, line, strict) if q is not None else None
        url = get_field(row, "url", str, report, path, line, strict) if c is not None else None
        if url is None:
            continue
        query, code = join_tokens(q).strip(), join_tokens(c).strip()
        if not query:
            skip_row(report, strict, "empty_query", path, line, "'docstring_tokens' is empty")
            continue
        if not code:
            skip_row(report, strict, "empty_code", path, line, "'code_tokens' is empty")
            continue
        if url in urls:
            skip_row(report, strict, "duplicate_url", path, line, f"url {url!r} already on line {urls[url]}")
            continue
        urls[url] = line
        if "idx" in row:
            idxs[str(row["idx"])] += 1
        yield line, query, code, url
    shared = sum(n for n in idxs.values() if n > 1)
    if shared:
        # XLCoST's snippet idx concatenates two numbers, so distinct snippets can share one; its evaluator
        # matches predictions by idx and would count either as a hit. We key by url (unique).
        report.notes.append(f"{shared} rows share an idx with another row (keyed by url here)")


def load_xlcost_pairs(root: str | os.PathLike, lang: str, split: str = "train", level: str = "program", *,
                      strict: bool = False, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Pairs:
    """(query, code) pairs of one XLCoST NL-code-search file; key = url, origin = "xlcost/<level>"."""
    path = split_file(root, lang, split, level)
    report = LoadReport()
    language = language_folder(lang)
    pairs = [Pair(i, q, c, url, language, f"xlcost/{level}")
             for i, (_, q, c, url) in enumerate(_rows(path, report, strict, max_line_bytes))]
    report.rows_kept = len(pairs)
    report.log(f"XLCoST {path}")
    if not pairs:
        raise BadInputError(f"{path}: no usable pair ({report.summary()}).")
    return Pairs(pairs, report)


def load_xlcost_eval(root: str | os.PathLike, lang: str, split: str = "test", level: str = "program", *,
                     strict: bool = False, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> EvalSplit:
    """Each query of the split ranked against every code of the same split (XLCoST's protocol)."""
    path = split_file(root, lang, split, level)
    report = LoadReport()
    rows = list(_rows(path, report, strict, max_line_bytes))
    report.rows_kept = len(rows)
    report.log(f"XLCoST {path} eval")
    if not rows:
        raise BadInputError(f"{path}: no usable query ({report.summary()}).")
    q = [r[1] for r in rows]
    c = [r[2] for r in rows]
    keys = [r[3] for r in rows]
    return EvalSplit(language_folder(lang), _ALIASES.get(split, split), q, keys, list(keys), c, report)
