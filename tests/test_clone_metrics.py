"""Label masks (against a numpy brute force) and the code-to-code / XLCoST metrics (hand-computed examples,
and the formulas of the benchmarks' own evaluators)."""

from pathlib import Path

import numpy as np
import pytest

from cocohanere_jax import clone_metrics as cm

FIX = Path(__file__).parent / "fixtures"

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
