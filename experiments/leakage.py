"""Leakage check: no evaluation function appears in the training set.

A function is identified by the sha1 of its whitespace-normalised code (`' '.join(code.split())`) as the
model reads it (the corpus' `code` / `' '.join(code_tokens)`), so layout differences do not hide a copy.
The test functions are the codebase entries that answer a test query (all of them when a key has
several); the same count is reported for valid. A test function found in training raises `LeakageError`.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence


class LeakageError(RuntimeError):
    """A test function's code also occurs in the training set."""


def code_hash(code: str) -> str:
    return hashlib.sha1(" ".join(code.split()).encode("utf-8")).hexdigest()


def leaked(train_codes: Iterable[str], eval_codes: Sequence[str]) -> list[int]:
    """Indices of `eval_codes` whose normalised code occurs in `train_codes`."""
    seen = {code_hash(c) for c in train_codes}
    return [i for i, c in enumerate(eval_codes) if code_hash(c) in seen]


def eval_functions(split) -> list[str]:
    """The codebase code of every function answering a query of an `EvalSplit` (each once)."""
    index = sorted({int(i) for t in split.targets() for i in t})
    return [split.code_texts[i] for i in index]


def check_language(root: str, language: str, raise_on_leak: bool = True) -> dict:
    """Counts test and valid functions of a GraphCodeBERT-layout corpus found in its training set."""
    from cocohanere_data import codesearchnet

    train = codesearchnet.load_pairs(root, language, "train")
    seen = {code_hash(c) for c in train.codes}
    result = {"language": language, "train_functions": len(train), "unique_train_codes": len(seen)}
    for split_name in ("test", "valid"):
        split = codesearchnet.load_eval_split(root, language, split_name)
        codes = eval_functions(split)
        hits = [i for i, c in enumerate(codes) if code_hash(c) in seen]
        result[f"{split_name}_functions"] = len(codes)
        result[f"{split_name}_in_train"] = len(hits)
        result[f"{split_name}_examples"] = [codes[i][:120] for i in hits[:3]]
    if raise_on_leak and result["test_in_train"]:
        raise LeakageError(
            f"{language}: {result['test_in_train']} of {result['test_functions']} test functions occur in "
            f"{root}/{language}/train.jsonl (by hash of whitespace-normalised code), e.g. "
            f"{result['test_examples'][0]!r}. Rebuild the corpus (data/build_registry_corpus.py removes code "
            "found in train from valid/test) before reporting test numbers."
        )
    return result
