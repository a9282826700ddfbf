"""Memory bank: FIFO push with wrap-around, update, empty start, masks, kNN against numpy brute force."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cocohanere_jax import bank as bank_lib
from tiny_models import numpy_search

push = jax.jit(bank_lib.push)
update = jax.jit(bank_lib.update)
search = jax.jit(bank_lib.search, static_argnums=(2,))


def unit(rng, *shape):
    x = rng.normal(size=shape)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class FifoModel:
    """A slot-by-slot python model of the ring with stale-copy invalidation."""

    def __init__(self, m, d):
        self.emb = np.zeros((m, d), np.float32)
        self.ids = np.full(m, -1)
        self.ptr = 0

    def push(self, emb, ids):
        m = len(self.ids)
        for row, i in enumerate(ids):
            self.ids[self.ids == i] = -1
            self.ids[self.ptr] = i
            self.emb[self.ptr] = emb[row]
            self.ptr = (self.ptr + 1) % m


def assert_bank_equals(bank, model):
    np.testing.assert_array_equal(np.asarray(bank.ids), model.ids)
    np.testing.assert_array_equal(np.asarray(bank.embeddings)[model.ids >= 0], model.emb[model.ids >= 0])
    assert int(bank.ptr) == model.ptr


def test_init_bank_is_empty_and_search_returns_nothing():
    bank = bank_lib.init_bank(9, 4)
    assert bank.embeddings.shape == (9, 4) and bank.embeddings.dtype == jnp.float32
    assert bank.ids.dtype == jnp.int32 and np.all(np.asarray(bank.ids) == -1) and int(bank.ptr) == 0
    assert int(bank_lib.num_valid(bank)) == 0
    rng = np.random.default_rng(0)
    hits = search(bank, jnp.asarray(unit(rng, 3, 4)), 4, anchor_ids=jnp.arange(3, dtype=jnp.int32))
    assert not np.any(np.asarray(hits.valid))
    assert np.all(np.asarray(hits.slots) == -1) and np.all(np.asarray(hits.ids) == -1)
    assert np.all(np.isneginf(np.asarray(hits.scores)))


@pytest.mark.parametrize("m,b,pushes", [(7, 3, 5), (8, 4, 3), (5, 7, 3)])
def test_push_wraps_around_like_a_fifo(m, b, pushes):
    """M not a multiple of B (7, 3), a multiple (8, 4) and B > M (5, 7): slot-exact FIFO contents."""
    rng = np.random.default_rng(1)
    bank, model = bank_lib.init_bank(m, 4), FifoModel(m, 4)
    for p in range(pushes):
        ids = np.arange(p * b, (p + 1) * b, dtype=np.int32)
        emb = unit(rng, b, 4)
        bank = push(bank, jnp.asarray(emb), jnp.asarray(ids))
        model.push(emb, ids)
        assert_bank_equals(bank, model)
    assert int(bank_lib.num_valid(bank)) == m  # full after enough pushes


def test_push_invalidates_stale_copies_and_in_batch_repeats():
    rng = np.random.default_rng(2)
    bank, model = bank_lib.init_bank(7, 4), FifoModel(7, 4)
    for ids in ([10, 11, 12], [13, 11, 14], [12, 15, 15]):
        emb = unit(rng, 3, 4)
        bank = push(bank, jnp.asarray(emb), jnp.asarray(ids, jnp.int32))
        model.push(emb, ids)
    assert_bank_equals(bank, model)
    ids = np.asarray(bank.ids)
    valid = ids[ids >= 0]
    assert len(valid) == len(set(valid.tolist())), "a DataID lives in at most one slot"
    # 10 was evicted by the wrap-around; the earlier copy of 15 left slot 0 empty.
    np.testing.assert_array_equal(ids, [-1, 15, -1, 13, 11, 14, 12])


def test_update_overwrites_only_matching_slots_first_wins():
    rng = np.random.default_rng(3)
    bank = push(bank_lib.init_bank(6, 4), jnp.asarray(unit(rng, 5, 4)), jnp.arange(100, 105, dtype=jnp.int32))
    before = np.asarray(bank.embeddings).copy()
    fresh = unit(rng, 6, 4)
    slots = np.array([1, 3, 1, 4, 2, -1], np.int32)
    ids = np.array([101, 103, 101, 999, 102, -1], np.int32)  # slot 4 holds 104, not 999: recycled
    valid = np.array([True, True, True, True, False, False])
    new = update(bank, jnp.asarray(slots), jnp.asarray(ids), jnp.asarray(fresh), jnp.asarray(valid))
    expected = before.copy()
    expected[1] = fresh[0]  # first of the two entries for slot 1 wins
    expected[3] = fresh[1]
    np.testing.assert_array_equal(np.asarray(new.embeddings), expected)
    np.testing.assert_array_equal(np.asarray(new.ids), np.asarray(bank.ids))
    assert int(new.ptr) == int(bank.ptr)
    # Any leading shape works ([n, k] slots from a search).
    new2 = update(bank, jnp.asarray(slots.reshape(2, 3)), jnp.asarray(ids.reshape(2, 3)),
                  jnp.asarray(fresh.reshape(2, 3, 4)), jnp.asarray(valid.reshape(2, 3)))
    np.testing.assert_array_equal(np.asarray(new2.embeddings), expected)


def test_update_after_push_skips_recycled_slots():
    """Search, then push (recycles slot 0), then update: slot 0 keeps the pushed row."""
    rng = np.random.default_rng(4)
    bank = push(bank_lib.init_bank(4, 3), jnp.asarray(unit(rng, 4, 3)), jnp.arange(4, dtype=jnp.int32))
    hits = search(bank, jnp.asarray(unit(rng, 1, 3)), 4, anchor_ids=jnp.array([99], jnp.int32))
    assert np.all(np.asarray(hits.valid))
    pushed = unit(rng, 1, 3)
    bank = push(bank, jnp.asarray(pushed), jnp.array([50], jnp.int32))  # ptr was 0
    fresh = unit(rng, 1, 4, 3)
    new = update(bank, hits.slots, hits.ids, jnp.asarray(fresh), hits.valid)
    np.testing.assert_array_equal(np.asarray(new.embeddings)[0], pushed[0])
    slots = np.asarray(hits.slots)[0]
    for j, s in enumerate(slots):
        if s != 0:
            np.testing.assert_array_equal(np.asarray(new.embeddings)[s], fresh[0, j])


def filled_bank(rng, m=23, d=6, n_valid=17):
    """A bank with n_valid written slots at scattered positions, DataIDs 0..n_valid-1 shuffled."""
    emb = unit(rng, m, d)
    ids = np.full(m, -1, np.int32)
    where = rng.choice(m, n_valid, replace=False)
    ids[where] = rng.permutation(n_valid)
    return bank_lib.Bank(embeddings=jnp.asarray(emb), ids=jnp.asarray(ids), ptr=jnp.zeros((), jnp.int32))


@pytest.mark.parametrize("k", [1, 5, 23])
def test_search_equals_numpy_brute_force(k):
    rng = np.random.default_rng(5)
    bank = filled_bank(rng)
    keys = unit(rng, 9, 6)
    anchor_ids = rng.integers(0, 20, size=9).astype(np.int32)  # mostly present in the bank
    keep = rng.random((9, 23)) < 0.7
    for extra in (None, keep):
        hits = search(bank, jnp.asarray(keys), k, anchor_ids=jnp.asarray(anchor_ids),
                      keep=None if extra is None else jnp.asarray(extra))
        slots, ids, scores, valid = numpy_search(bank.embeddings, bank.ids, keys, anchor_ids, k, extra)
        np.testing.assert_array_equal(np.asarray(hits.slots), slots)
        np.testing.assert_array_equal(np.asarray(hits.ids), ids)
        np.testing.assert_array_equal(np.asarray(hits.valid), valid)
        np.testing.assert_allclose(np.asarray(hits.scores)[valid], scores[valid], rtol=1e-5, atol=1e-6)
        assert np.all(np.isneginf(np.asarray(hits.scores)[~valid]))
    if k == 23:  # more neighbours asked than valid candidates: the rest come back masked
        assert not np.all(np.asarray(hits.valid)) and np.all(np.asarray(hits.valid).sum(1) <= 17)


def test_search_never_returns_own_data_id_or_empty_slots():
    rng = np.random.default_rng(6)
    bank = filled_bank(rng)
    ids = np.asarray(bank.ids)
    occupied = np.flatnonzero(ids >= 0)[:5]
    keys = np.asarray(bank.embeddings)[occupied]  # each anchor's own slot is its best match (cos = 1)
    hits = search(bank, jnp.asarray(keys), 3, anchor_ids=jnp.asarray(ids[occupied]))
    got_slots = np.asarray(hits.slots)
    assert not np.any(got_slots == occupied[:, None])
    assert not np.any(np.asarray(hits.ids) == ids[occupied][:, None])
    assert np.all(ids[got_slots[np.asarray(hits.valid)]] >= 0)
    # Without the own-ID mask the own slot would have been first: the mask is doing the work.
    s, *_ = numpy_search(bank.embeddings, bank.ids, keys, np.full(5, -7), 1)
    np.testing.assert_array_equal(s[:, 0], occupied)


def test_mask_helpers_match_numpy():
    rng = np.random.default_rng(7)
    bank_ids = np.array([3, -1, 7, 1, 9, 4], np.int32)
    batch_ids = np.array([7, 4, 8], np.int32)
    np.testing.assert_array_equal(
        np.asarray(bank_lib.in_batch_keep(jnp.asarray(bank_ids), jnp.asarray(batch_ids))),
        ~np.isin(bank_ids, batch_ids),
    )
    qh = rng.integers(0, 3, size=10).astype(np.int32)
    ch = rng.integers(0, 3, size=10).astype(np.int32)
    anchors = np.array([0, 5, 9], np.int32)
    hashes = [jnp.asarray(qh), jnp.asarray(ch)]
    got = np.asarray(bank_lib.duplicate_keep(jnp.asarray(bank_ids), jnp.asarray(anchors), hashes))
    for a, i in enumerate(anchors):
        for s, j in enumerate(bank_ids):
            j = max(j, 0)
            assert got[a, s] == (qh[i] != qh[j] and ch[i] != ch[j])
    scores = rng.uniform(-1, 1, size=(3, 6)).astype(np.float32)
    pos = np.array([0.5, -0.4, 0.2], np.float32)
    got = np.asarray(bank_lib.margin_keep(jnp.asarray(scores), jnp.asarray(pos), 0.1))
    np.testing.assert_array_equal(got, scores <= (pos + 0.1 * np.abs(pos))[:, None])


def test_search_rejects_bad_k():
    bank = bank_lib.init_bank(4, 3)
    with pytest.raises(ValueError, match="k <= bank size"):
        bank_lib.search(bank, jnp.zeros((1, 3)), 5, anchor_ids=jnp.zeros((1,), jnp.int32))
