"""Ranking metrics on a hand-computed example; blocked ranking equals the plain full-matrix ranking."""

from unittest import mock

import jax
import numpy as np
import pytest

from cocohanere_jax import evaluate, reencode


def test_hand_computed_example():
    # 3 queries, 4 codes in 2-d. Scores (rows: queries):
    #   q0 = (1, 0):   codes (1,0)=1.0  (0.6,0.8)=0.6  (0,1)=0  (-1,0)=-1   target 1 -> rank 2
    #   q1 = (0, 1):   1.0 at code 2 (target 2)                             -> rank 1
    #   q2 = (-1, 0):  code 3 = 1.0, code 2 = 0, code 1 = -0.6, code 0 = -1; target 0 -> rank 4
    q = np.array([[1, 0], [0, 1], [-1, 0]], np.float32)
    c = np.array([[1, 0], [0.6, 0.8], [0, 1], [-1, 0]], np.float32)
    r = evaluate.ranks(q, c, np.array([1, 2, 0]))
    np.testing.assert_array_equal(r, [2, 1, 4])
    m = evaluate.metrics_from_ranks(r)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 + 1 / 4) / 3)
    assert m["r@1"] == pytest.approx(1 / 3)
    assert m["r@5"] == 1.0 and m["r@10"] == 1.0 and m["num_queries"] == 3


def test_blocked_equals_unblocked():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(37, 16)).astype(np.float32)
    c = rng.normal(size=(101, 16)).astype(np.float32)
    t = rng.integers(0, 101, size=37)
    scores = q @ c.T
    expected = 1 + (scores > scores[np.arange(37), t][:, None]).sum(1)
    for qb, cb in [(37, 101), (8, 16), (5, 7), (1000, 3)]:
        np.testing.assert_array_equal(evaluate.ranks(q, c, t, query_block=qb, code_block=cb), expected)


def test_match_by_key_counts_unmatched():
    task = evaluate.RetrievalTask.from_keys(["a", "b", "c"], ["u1", "u9", "u2"], ["x", "y", "z"], ["u2", "u1", "u3"])
    assert list(task.queries) == ["a", "c"] and task.targets.tolist() == [1, 0] and task.skipped == 1


def test_bad_targets():
    with pytest.raises(ValueError, match="targets"):
        evaluate.ranks(np.ones((1, 2), np.float32), np.ones((2, 2), np.float32), np.array([2]))


class _HashEncoder:
    """A stand-in encoder: a fixed random projection of token counts, counting codebase embeddings."""

    def __init__(self):
        self.proj = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
        self.code_calls = 0

    def with_params(self, params):
        return self

    def embed_ids(self, ids, batch_size=64):
        if ids.shape[1] == 6:
            self.code_calls += 1
        x = np.stack([np.bincount(r, minlength=50) for r in ids]).astype(np.float32) @ self.proj
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_shared_codebase_embedding_gives_the_same_metrics():
    rng = np.random.default_rng(1)
    codes = rng.integers(1, 50, size=(30, 6)).astype(np.int32)
    valid = evaluate.TokenizedTask(rng.integers(1, 50, size=(10, 4)).astype(np.int32), codes, np.arange(10))
    test = evaluate.TokenizedTask(rng.integers(1, 50, size=(12, 4)).astype(np.int32), codes.copy(), np.arange(12) + 15)
    other = evaluate.TokenizedTask(valid.query_ids, codes[::-1].copy(), valid.targets)
    assert evaluate.same_codebase(valid, test) and not evaluate.same_codebase(valid, other)
    enc = _HashEncoder()
    separate = [evaluate.evaluate(enc, t) for t in (valid, test)]
    assert enc.code_calls == 2
    shared = evaluate.embed_codebase(enc, valid)
    reused = [evaluate.evaluate(enc, t, code_embeddings=shared) for t in (valid, test)]
    assert enc.code_calls == 3 and reused == separate
    with pytest.raises(ValueError, match="rows"):
        evaluate.evaluate(enc, valid, code_embeddings=shared[:5])


def _tiny_t5_encoder():
    from cocohanere_jax.models.encoder import Encoder, build_module
    from cocohanere_jax.models.t5 import T5Config

    cfg = T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, relative_attention_max_distance=6, dropout_rate=0.1,
                   embed_dim=8)
    module = build_module("t5", cfg)
    ids = np.ones((2, 8), np.int32)
    params = module.init(jax.random.key(0), ids, ids)["params"]
    return Encoder("t5", cfg, module, params)


def test_sharded_evaluation_equals_single_device():
    """embed_ids_sharded (length-aware or padded, sharded over 1 or 4 devices) = Encoder.embed_ids; same metrics."""
    from cocohanere_jax import sharding

    rng = np.random.default_rng(2)

    def rows(n, width):
        x = rng.integers(1, 50, size=(n, width)).astype(np.int32)
        x[np.arange(width)[None, :] >= rng.integers(1, width + 1, size=n)[:, None]] = 0
        return x

    task = evaluate.TokenizedTask(rows(37, 8), rows(53, 24), rng.integers(0, 53, size=37))
    enc = _tiny_t5_encoder()
    single = evaluate.evaluate(enc, task, batch_size=16)
    reference = enc.embed_ids(task.code_ids, batch_size=16)
    for devices in (1, 4):
        mesh = sharding.make_mesh(jax.devices()[:devices])
        np.testing.assert_allclose(evaluate.embed_ids_sharded(enc, task.code_ids, mesh, rows_per_device=4),
                                   reference, rtol=1e-5, atol=1e-6)
        # Padded (one call per block, length_buckets=0; the bucketed path is not taken) gives the same embeddings.
        with mock.patch.object(reencode, "encode_rows_bucketed", side_effect=AssertionError("bucketed")):
            padded = evaluate.embed_ids_sharded(enc, task.code_ids, mesh, rows_per_device=4, length_buckets=0)
        np.testing.assert_allclose(padded, reference, rtol=1e-5, atol=1e-6)
        sharded = evaluate.evaluate(enc, task, batch_size=4, mesh=mesh)
        assert sharded == single
        np.testing.assert_allclose(evaluate.embed_codebase(enc, task, batch_size=4, mesh=mesh), reference,
                                   rtol=1e-5, atol=1e-6)
