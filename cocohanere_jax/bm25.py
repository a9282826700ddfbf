"""Okapi BM25 over code, in numpy: the lexical IR baseline of code search.

Tokenisation (`tokenize`) splits text on everything that is not a letter or digit (whitespace,
punctuation, operators, `_`), then splits identifiers at camelCase / PascalCase / acronym boundaries and
letter-digit boundaries, and lowercases: `parseHTTPResponse_v2(x)` -> `parse http response v 2 x`. The
same function is applied to queries (docstring text) and code, so `read_json` in code matches "read JSON"
in a query. No stemming and no stop words.

Scoring (Robertson et al. / Lucene): for a query q and document d,

    score(q, d) = sum over query tokens t (with repeats) of
                  idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

with k1 = 1.2, b = 0.75 by default, N documents, |d| in tokens. Lucene's idf is never negative (the
original one is for terms in more than half the documents).

Ranking (`ranks`): rank of the target = 1 + (documents scoring strictly above it) + a uniformly random
position among the other documents with exactly its score (a seeded random tie order, as a sort with random
tie-breaking gives). Ties matter for BM25: a query sharing no token with its target scores 0, tied with
every other document without a shared token; counting ties in the query's favour (as the dense
evaluator may, where ties do not occur) would rank such a query first.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Callable, Iterable, Sequence

import numpy as np

__all__ = ["tokenize", "BM25", "ranks", "evaluate"]

_WORD = re.compile(r"[A-Za-z0-9]+")
# Splits "parseHTTPResponse2x" into parse, HTTP, Response, 2, x.
_PIECE = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


def tokenize(text: str) -> list[str]:
    """Lowercased identifier pieces of `text` (see the module docstring)."""
    out = []
    for word in _WORD.findall(text):
        out.extend(p.lower() for p in _PIECE.findall(word))
    return out


class BM25:
    """An inverted index over tokenised documents; `scores(query)` -> float64 [n_docs].

    Args:
      documents: texts (tokenised with `tokenizer`) or token lists.
      k1, b: the BM25 parameters.
      tokenizer: text -> tokens (default `tokenize`).
    """

    def __init__(self, documents: Sequence[str] | Sequence[Sequence[str]], k1: float = 1.2, b: float = 0.75,
                 tokenizer: Callable[[str], list[str]] = tokenize):
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b, self.tokenizer = float(k1), float(b), tokenizer
        docs = [tokenizer(d) if isinstance(d, str) else list(d) for d in documents]
        if not docs:
            raise ValueError("BM25 needs at least one document")
        self.num_docs = len(docs)
        self.doc_len = np.asarray([len(d) for d in docs], np.float64)
        self.avgdl = float(self.doc_len.mean()) or 1.0
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for i, d in enumerate(docs):
            for term, tf in Counter(d).items():
                ids, tfs = postings.setdefault(term, ([], []))
                ids.append(i)
                tfs.append(tf)
        self.postings = {t: (np.asarray(ids, np.int64), np.asarray(tfs, np.float64)) for t, (ids, tfs) in postings.items()}
        self.norm = self.k1 * (1.0 - self.b + self.b * self.doc_len / self.avgdl)  # per document

    def idf(self, term: str) -> float:
        df = len(self.postings[term][0]) if term in self.postings else 0
        return float(np.log(1.0 + (self.num_docs - df + 0.5) / (df + 0.5)))

    def scores(self, query: str | Sequence[str]) -> np.ndarray:
        terms = self.tokenizer(query) if isinstance(query, str) else list(query)
        out = np.zeros(self.num_docs, np.float64)
        for term in terms:  # in query order, repeats included: equal documents get bitwise-equal scores
            if term not in self.postings:
                continue
            ids, tf = self.postings[term]
            out[ids] += self.idf(term) * tf * (self.k1 + 1.0) / (tf + self.norm[ids])
        return out


def ranks(index: BM25, queries: Iterable[str | Sequence[str]], targets: Sequence[int], seed: int = 0,
          return_details: bool = False):
    """1-based rank of each query's target document (random order among exact ties, seeded).

    With `return_details`: `(ranks, ties, target_scores)`, ties = the number of other documents with
    exactly the target's score.
    """
    rng = np.random.default_rng(seed)
    targets = np.asarray(targets, np.int64)
    out, ties_out, target_scores = [], [], []
    for query, target in zip(queries, targets, strict=True):
        if not 0 <= target < index.num_docs:
            raise ValueError(f"target {target} outside the {index.num_docs} documents")
        s = index.scores(query)
        t = s[target]
        above = int(np.sum(s > t))
        ties = int(np.sum(s == t)) - 1
        out.append(1 + above + int(rng.integers(0, ties + 1)))
        ties_out.append(ties)
        target_scores.append(t)
    r = np.asarray(out, np.int64)
    if return_details:
        return r, np.asarray(ties_out, np.int64), np.asarray(target_scores, np.float64)
    return r


def evaluate(task, k1: float = 1.2, b: float = 0.75, seed: int = 0) -> dict:
    """MRR and R@1/5/10 of BM25 on a `cocohanere_jax.evaluate.RetrievalTask` (whole codebase ranked).

    Adds `codebase_size`, `skipped_queries`, and `zero_score_targets` (queries sharing no token with their
    target) and `tied_targets` (queries whose target ties with at least one other document).
    """
    from cocohanere_jax.evaluate import metrics_from_ranks

    index = BM25(task.codebase, k1=k1, b=b)
    r, ties, target_scores = ranks(index, task.queries, task.targets, seed=seed, return_details=True)
    result = metrics_from_ranks(r)
    result.update(codebase_size=index.num_docs, skipped_queries=int(task.skipped),
                  zero_score_targets=int(np.sum(target_scores == 0.0)),
                  tied_targets=int(np.sum(ties > 0)), k1=k1, b=b)
    return result
