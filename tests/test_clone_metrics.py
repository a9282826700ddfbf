"""Label masks (against a numpy brute force) and the code-to-code / XLCoST metrics (hand-computed examples,
and the formulas of the benchmarks' own evaluators)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cocohanere_jax import bank as bank_lib
from cocohanere_jax import clone_metrics as cm
from cocohanere_jax import label_mask, losses

FIX = Path(__file__).parent / "fixtures"

# ------------------------------------------------------------------------------------------ masks


def _keep_reference(cand, anchors):
    """numpy brute force: candidate j may be a negative of anchor i iff it has a label and another one."""
    out = np.zeros((len(anchors), len(cand)), bool)
    for i, a in enumerate(anchors):
        for j, c in enumerate(cand):
            out[i, j] = c >= 0 and c != a
    return out


def test_label_keep_matches_numpy_brute_force():
    rng = np.random.default_rng(0)
    cand = rng.integers(-1, 5, size=37).astype(np.int32)
    anchors = rng.integers(0, 5, size=11).astype(np.int32)
    keep = np.asarray(jax.jit(label_mask.label_keep)(cand, anchors))
    np.testing.assert_array_equal(keep, _keep_reference(cand, anchors))
    # Per-anchor candidates ([n, k], e.g. the labels of each anchor's retrieved top-k).
    per = rng.integers(-1, 5, size=(11, 4)).astype(np.int32)
    keep2 = np.asarray(label_mask.label_keep(per, anchors))
    np.testing.assert_array_equal(keep2, np.stack([_keep_reference(per[i], anchors[i:i + 1])[0] for i in range(11)]))


def test_bank_label_keep_and_search_never_return_a_same_label_candidate():
    rng = np.random.default_rng(1)
    n_data, m, d = 40, 24, 8
    table = rng.integers(0, 4, size=n_data).astype(np.int32)
    ids = rng.permutation(n_data)[:m].astype(np.int32)
    ids[[3, 10]] = -1  # empty slots
    anchor_ids = rng.integers(0, n_data, size=6).astype(np.int32)
    keep = np.asarray(label_mask.bank_label_keep(ids, anchor_ids, table))
    cand = np.where(ids >= 0, table[np.maximum(ids, 0)], -1)
    np.testing.assert_array_equal(keep, _keep_reference(cand, table[anchor_ids]))
    np.testing.assert_array_equal(np.asarray(label_mask.lookup_labels(table, jnp.asarray([-1, 0, 5]))),
                                  [-1, table[0], table[5]])
    # Through the real bank search: no same-label neighbour comes back, whatever the scores.
    emb = rng.normal(size=(m, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    b = bank_lib.init_bank(m, d).replace(embeddings=jnp.asarray(emb), ids=jnp.asarray(ids))
    keys = jnp.asarray(emb[:6])
    res = bank_lib.search(b, keys, 5, anchor_ids=jnp.asarray(anchor_ids), keep=jnp.asarray(keep))
    got = np.asarray(res.ids)[np.asarray(res.valid)]
    rows = np.nonzero(np.asarray(res.valid))[0]
    assert got.size > 0 and np.all(table[got] != table[anchor_ids][rows])


def _in_batch_reference(anchor_labels, cand_labels, pos):
    out = np.zeros((len(anchor_labels), len(cand_labels)), bool)
    for i in range(len(anchor_labels)):
        for j in range(len(cand_labels)):
            out[i, j] = j == pos[i] or (cand_labels[j] >= 0 and cand_labels[j] != anchor_labels[i])
    return out


def test_in_batch_label_keep_matches_numpy_and_keeps_the_positive():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, size=9).astype(np.int32)
    keep = np.asarray(label_mask.in_batch_label_keep(labels))
    np.testing.assert_array_equal(keep, _in_batch_reference(labels, labels, np.arange(9)))
    assert keep.diagonal().all()
    assert not any(keep[i, j] for i in range(9) for j in range(9) if i != j and labels[i] == labels[j])
    # Data-parallel shape: 3 local anchors (device 1 of 3) against the 9 gathered candidates.
    local = labels[3:6]
    keep_dp = np.asarray(label_mask.in_batch_label_keep(local, labels, 3 + jnp.arange(3)))
    np.testing.assert_array_equal(keep_dp, keep[3:6])
    assert int(label_mask.count_same_label(jnp.asarray(keep))) == int(np.sum(~keep))


def test_masked_in_batch_loss_ignores_same_label_candidates():
    """With the mask, moving a same-label candidate changes nothing in the anchor's loss (it left the
    softmax denominator); the numpy softmax over the kept columns gives the same value."""
    rng = np.random.default_rng(3)
    labels = np.asarray([0, 0, 1, 2, 1, 0], np.int32)
    a = rng.normal(size=(6, 4)).astype(np.float32)
    p = rng.normal(size=(6, 4)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    keep = label_mask.in_batch_label_keep(jnp.asarray(labels))
    rows = np.asarray(losses.info_nce_rows(a, p, jnp.arange(6), 0.1, keep))
    logits = a @ p.T / 0.1
    ref = [np.log(np.sum(np.exp(logits[i][np.asarray(keep)[i]]))) - logits[i, i] for i in range(6)]
    np.testing.assert_allclose(rows, ref, rtol=1e-5)
    p2 = p.copy()
    p2[1] = -p2[1]  # candidate 1 shares anchor 0's label
    rows2 = np.asarray(losses.info_nce_rows(a, p2, jnp.arange(6), 0.1, keep))
    np.testing.assert_allclose(rows2[[0, 5]], rows[[0, 5]], rtol=1e-6)


# ------------------------------------------------------------------------------------------ MAP@R


def _map_at_r_reference(emb, labels):
    """CodeXGLUE POJ-104 run.py's evaluation: full score matrix, self at -1e6, top R per query."""
    scores = emb @ emb.T
    np.fill_diagonal(scores, -1e6)
    aps = []
    for i in range(len(labels)):
        r = int(np.sum(labels == labels[i])) - 1
        if r == 0:
            continue
        order = np.argsort(-scores[i], kind="stable")[:r]
        hits, ap = 0, 0.0
        for j, idx in enumerate(order):
            if labels[idx] == labels[i]:
                hits += 1
                ap += hits / (j + 1)
        aps.append(ap / r)
    return float(np.mean(aps))


def test_map_at_r_evaluator_example_by_hand():
    """The example of CodeXGLUE's POJ-104 README, scored by its current evaluator's formula:
    AP = (1/R) sum over hits of P@k. By hand, index 0: answers {1,2}, predicted [3,2]: hit at rank 2 -> 1/2,
    AP = 0.5/2 = 0.25; 1: [0,4] -> 1/2 = 0.5; 2: [0,1] -> (1+1)/2 = 1; 4: [1,5] -> 0.25; 3: [4,2] -> 0.5;
    5: [4,3] -> 1. MAP@R = 3.5/6 = 0.5833. (The README prints 0.6667 = mean |answers & predictions| / R,
    the formula of an earlier evaluator.py revision.)"""
    answers = {"0": ["1", "2"], "1": ["0", "2"], "2": ["0", "1"], "4": ["3", "5"], "3": ["4", "5"], "5": ["4", "3"]}
    predictions = {"0": ["3", "2"], "1": ["0", "4"], "2": ["0", "1"], "4": ["1", "5"], "3": ["4", "2"], "5": ["4", "3"]}
    assert cm.map_at_r_from_predictions(answers, predictions) == pytest.approx(3.5 / 6)
    assert np.mean([len(set(answers[k]) & set(predictions[k])) / 2 for k in answers]) == pytest.approx(4 / 6)


def test_map_at_r_from_embeddings_by_hand():
    """Five points on a line (dot = product): labels A A A B B at x = 3, 2, -1, 1, -2 (1-d embeddings).
    Query 0 (x=3, R=2): others by score 2(A) 1(B) -1(A) -2(B): top 2 = [A, B] -> AP = (1/1)/2 = 0.5.
    Query 1 (x=2, R=2): 3(A) 1(B) -> 0.5.  Query 2 (x=-1, R=2): -2(B) 1(B)... scores: 3->-3, 2->-2, 1->-1, -2->2:
    top 2 = [-2 (B), 1 (B)] -> 0.  Query 3 (x=1, R=1): best 3 (A) -> 0.  Query 4 (x=-2, R=1): best -1 (A) -> 0.
    MAP@R = (0.5 + 0.5) / 5 = 0.2."""
    emb = np.asarray([[3.0], [2.0], [-1.0], [1.0], [-2.0]], np.float32)
    out = cm.map_at_r(emb, ["A", "A", "A", "B", "B"])
    assert out["map_at_r"] == pytest.approx(0.2)
    assert out["num_queries"] == 5 and out["singletons"] == 0 and out["max_r"] == 2
    assert _map_at_r_reference(emb, np.asarray([0, 0, 0, 1, 1])) == pytest.approx(0.2)


def test_map_at_r_blocked_equals_the_full_matrix_reference():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 6, size=53)
    labels[0] = 99  # a singleton: not a query, still a candidate
    centers = rng.normal(size=(100, 16))
    emb = centers[labels] + 1.5 * rng.normal(size=(53, 16))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    out = cm.map_at_r(emb, labels, query_block=7, code_block=5)  # ragged blocks on both sides
    assert out["singletons"] == 1 and out["num_queries"] == 52
    assert out["map_at_r"] == pytest.approx(_map_at_r_reference(emb, labels), abs=1e-9)
    assert cm.map_at_r(emb, labels)["map_at_r"] == pytest.approx(out["map_at_r"], abs=1e-9)
    nn = cm.nearest_neighbours(emb, 4, query_block=8, code_block=6)
    s = emb @ emb.T
    np.fill_diagonal(s, -np.inf)
    np.testing.assert_array_equal(nn, np.argsort(-s, axis=1, kind="stable")[:, :4])
    with pytest.raises(ValueError, match="no label has two"):
        cm.map_at_r(emb[:3], [1, 2, 3])


def test_map_at_r_on_the_poj104_fixture_with_bag_of_tokens():
    """End to end on the fixture programs (labels from the loader), with a deterministic bag-of-identifiers
    embedding standing in for a model."""
    import re

    from cocohanere_data import poj104

    codes = poj104.load_poj104(FIX / "poj104", "test")
    vocab = sorted({t for c in codes.codes for t in re.findall(r"[A-Za-z_]+", c)})
    emb = np.zeros((len(codes), len(vocab)), np.float32)
    for i, c in enumerate(codes.codes):
        for t in re.findall(r"[A-Za-z_]+", c):
            emb[i, vocab.index(t)] += 1
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    out = cm.map_at_r(emb, codes.labels)
    assert out["map_at_r"] == pytest.approx(_map_at_r_reference(emb, codes.label_ids()))
    assert out["num_queries"] == 8 and out["num_labels"] == 3


# ------------------------------------------------------------------------------------- BigCloneBench


def test_precision_recall_f1_by_hand():
    """The values of CodeXGLUE's BigCloneBench evaluator example (Recall 0.25, Precision 0.5, F1 1/3):
    4 clone pairs of which 1 is found, and 1 false alarm: P = 1/2, R = 1/4, F1 = 2*1/(2*1 + 1 + 3) = 1/3."""
    y = np.asarray([1, 1, 1, 1, 0, 0])
    p = np.asarray([1, 0, 0, 0, 1, 0])
    out = cm.precision_recall_f1(y, p)
    assert (out["precision"], out["recall"]) == (0.5, 0.25) and out["f1"] == pytest.approx(1 / 3)
    assert cm.precision_recall_f1([0, 0], [0, 0])["f1"] == 0.0  # sklearn's zero_division=0


def test_choose_threshold_by_hand_and_against_brute_force():
    # Scores 0.9(1) 0.8(0) 0.7(1) 0.4(1) 0.2(0): P = 3. Cut after k top scores: F1 = 2 TP / (k + 3):
    # k=1: 2/4, k=2: 2/5, k=3: 4/6, k=4: 6/7, k=5: 6/8 -> best k = 4, threshold between 0.4 and 0.2 = 0.3.
    s = np.asarray([0.4, 0.9, 0.2, 0.8, 0.7])
    y = np.asarray([1, 1, 0, 0, 1])
    t, f1 = cm.choose_threshold(s, y)
    assert t == pytest.approx(0.3) and f1 == pytest.approx(6 / 7)
    assert cm.choose_threshold(s, y, grid=[0.1, 0.5, 0.85]) == (0.1, pytest.approx(6 / 8))
    rng = np.random.default_rng(5)
    for _ in range(20):
        s = np.round(rng.normal(size=30), 1)  # many ties
        y = (rng.random(30) < 0.4).astype(int)
        t, f1 = cm.choose_threshold(s, y)
        cands = np.concatenate([np.unique(s), [s.min() - 1]])
        best = max(cm.precision_recall_f1(y, s > c)["f1"] for c in cands)
        assert f1 == pytest.approx(best) and cm.precision_recall_f1(y, s > t)["f1"] == pytest.approx(best)


def test_threshold_f1_protocol_on_the_bigclonebench_fixture():
    from cocohanere_data import bigclonebench

    valid = bigclonebench.load_bigclonebench(FIX / "bigclonebench", "valid")
    test = bigclonebench.load_bigclonebench(FIX / "bigclonebench", "test")
    rng = np.random.default_rng(6)
    ids = {k: rng.normal(size=8) for k in set(valid.func_keys) | set(test.func_keys)}

    def embed(split):
        e = np.stack([ids[k] for k in split.func_keys])
        return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)

    vs = cm.pair_scores(embed(valid), valid.left, valid.right, block=4)
    ts = cm.pair_scores(embed(test), test.left, test.right)
    e = embed(test)
    np.testing.assert_allclose(ts, np.sum(e[test.left] * e[test.right], axis=1), rtol=1e-6)
    out = cm.threshold_f1(vs, valid.labels, ts, test.labels)
    ref = cm.precision_recall_f1(test.labels, ts > out["threshold"])
    assert out["f1"] == ref["f1"] and out["num_test_pairs"] == 7
    assert out["valid_f1"] == cm.choose_threshold(vs, valid.labels)[1]


# --------------------------------------------------------------------------------------------- XLCoST


def test_xlcost_mrr_by_hand():
    """3 queries, 4 codes (query i's target is code i). Scores: q0: target 0.9, others 0.1 0.2 0.3 -> rank 1;
    q1: target 0.5, others 0.6 0.7 0.1 -> rank 3; q2: target 0.2, others 0.9 0.8 0.3 -> rank 4.
    MRR = (1 + 1/3 + 1/4) / 3 = 19/36; with a cutoff of 3 the rank-4 query scores 0: (1 + 1/3) / 3 = 4/9."""
    scores = np.asarray([[0.9, 0.1, 0.2, 0.3], [0.6, 0.5, 0.7, 0.1], [0.9, 0.8, 0.2, 0.3]], np.float32)
    q = scores  # query rows over a 4-d identity codebase: q @ c.T = scores
    c = np.eye(4, dtype=np.float32)
    out = cm.xlcost_mrr(q, c, cutoff=3)
    assert out["mrr"] == pytest.approx(19 / 36) and out["mrr@3"] == pytest.approx(4 / 9)
    assert out["r@1"] == pytest.approx(1 / 3) and out["num_queries"] == 3
    assert cm.xlcost_mrr(q, c)["mrr@100"] == pytest.approx(19 / 36)
    # The official evaluator's formula on predicted idx lists (top 3 here): the same numbers.
    answers = {"u0": "0", "u1": "1", "u2": "2"}
    predictions = {"u0": ["0", "3", "2"], "u1": ["2", "0", "1"], "u2": ["0", "1", "3"]}
    assert cm.mrr_from_predictions(answers, predictions) == pytest.approx(4 / 9)
