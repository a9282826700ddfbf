"""Neighbour batches (step.neighbour_pairs, docs/METHOD.md section 9): each anchor's nearest bank codes join
the batch as whole pairs, encoded with gradient inside L^B.

Same tiny world as tests/test_step.py (banks pre-filled with DataIDs 20-28, 3 and 5; batch 0 is 0-7).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cocohanere_jax import bank as bank_lib
from cocohanere_jax import sharding
from cocohanere_jax import step as S
from cocohanere_jax.step_config import StepConfig
from test_step import B, PAD_ID, World, call, objective, tree_allclose, variant

J = 1  # neighbour pairs per anchor: groups of 2 rows


@pytest.fixture(scope="module")
def world():
    return World()


def in_batch(**changes):
    return variant(hard_negative_weight=0.0, **changes)


def _numpy_info_nce(q, c, ids, temperature):
    """L^B in numpy (float64), both directions; a pair never counts a copy of its own DataID as negative."""
    q, c = np.asarray(q, np.float64), np.asarray(c, np.float64)
    ids = np.asarray(ids)
    same = ids[:, None] == ids[None, :]
    keep = ~same | np.eye(len(ids), dtype=bool)

    def direction(a, b):
        logits = np.where(keep, a @ b.T / temperature, -np.inf)
        m = logits.max(-1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(logits - m).sum(-1))
        return lse - np.diag(logits)

    return np.mean(0.5 * (direction(q, c) + direction(c, q)))


def test_empty_bank_is_the_in_batch_step_with_dropout(world):
    """With nothing in the bank every row keeps the iterator's pair, and the step is the in-batch step:
    same loss and gradients with dropout on (the keys are per global row)."""
    empty = world.state0.replace(
        query_bank=bank_lib.init_bank(world.state0.query_bank.size, world.state0.query_bank.embeddings.shape[1]),
        code_bank=bank_lib.init_bank(world.state0.code_bank.size, world.state0.code_bank.embeddings.shape[1]))
    (l0, a0), g0 = call(objective(in_batch(), dropout=0.1), world, world.params, empty)
    (l1, a1), g1 = call(objective(in_batch(neighbour_pairs=J), dropout=0.1), world, world.params, empty)
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    tree_allclose(g1, g0, rtol=1e-4, atol=1e-6)  # the same sums, in another order
    np.testing.assert_array_equal(a1.ids, np.asarray(world.batch(0)["data_id"]))
    assert int(a1.neighbour_rows) == 0


@pytest.mark.parametrize("knn", ["bi", "uni"])
def test_neighbours_are_the_nearest_bank_codes_and_train_as_pairs(world, knn):
    """Each anchor (even rows) brings the pair of its nearest allowed bank code (to its query; to its code
    with uni-knn); the neighbour's embeddings are its own pair's, encoded from its token rows; L^B over the
    assembled batch equals numpy's."""
    config = in_batch(neighbour_pairs=J, knn=knn)
    (loss, aux), grads = call(objective(config), world, world.params)
    ids = np.asarray(aux.ids)
    batch_ids = np.asarray(world.batch(0)["data_id"])
    np.testing.assert_array_equal(ids[0::2], batch_ids[0::2])  # the anchors stay
    encode = jax.jit(lambda p, t: world.model.apply({"params": p}, t, t != PAD_ID))
    bank = world.state0.code_bank
    bank_ids, bank_emb = np.asarray(bank.ids), np.asarray(bank.embeddings)
    q, c = np.asarray(aux.q), np.asarray(aux.c)
    for a in range(B // 2):
        key = q[2 * a] if knn == "bi" else c[2 * a]
        allowed = (bank_ids >= 0) & ~np.isin(bank_ids, batch_ids)  # never written, or in this batch: masked
        scores = np.where(allowed, bank_emb @ key, -np.inf)
        assert ids[2 * a + 1] == bank_ids[np.argmax(scores)]
    assert int(aux.neighbour_rows) == B // 2
    neighbours = ids[1::2]
    np.testing.assert_allclose(q[1::2], encode(world.params, world.qt[neighbours]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c[1::2], encode(world.params, world.ct[neighbours]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss), _numpy_info_nce(q, c, ids, config.temperature), rtol=1e-5)
    assert float(jax.tree.reduce(lambda s, x: s + jnp.sum(jnp.abs(x)), grads, 0.0)) > 0


def test_one_device_equals_four_devices_with_dropout_one_program(world):
    """Three steps with neighbour batches: 1 device == 4 devices with dropout (metrics, params, both banks),
    the replicas identical, one compiled program; the bank receives the neighbours' fresh embeddings."""
    config = in_batch(neighbour_pairs=J)
    runs = {}
    for devices in (1, 4):
        mesh = sharding.make_mesh(jax.devices()[:devices])
        step_fn = S.make_train_step(world.model, world.tx, config, mesh, pad_id=PAD_ID)
        runs[devices] = world.run(step_fn, mesh, 3, world.table) + (step_fn._cache_size(),)
    (snaps1, metrics1, same1, cache1), (snaps4, metrics4, same4, cache4) = runs[1], runs[4]
    assert same1 and same4 and cache1 == cache4 == 1
    for s in range(3):
        for name in ("loss", "loss_b", "grad_norm", "in_batch_accuracy", "neighbour_rows", "neighbour_score"):
            np.testing.assert_allclose(metrics1[s][name], metrics4[s][name], rtol=2e-5, atol=1e-7, err_msg=name)
    assert float(metrics1[0]["neighbour_rows"]) == 0.5
    tree_allclose(snaps1[2].params, snaps4[2].params, rtol=1e-4, atol=2e-6)
    tree_allclose(snaps1[2].code_bank, snaps4[2].code_bank, rtol=1e-4, atol=2e-6)
    tree_allclose(snaps1[2].query_bank, snaps4[2].query_bank, rtol=1e-4, atol=2e-6)
    # After step 0 the bank holds the pushed rows of the assembled batch: the anchors and their neighbours.
    pushed = set(np.asarray(snaps1[0].code_bank.ids).tolist())
    # The replaced rows 1 and 7 were never trained, so never pushed (3 and 5 may remain from the prefill).
    assert {0, 2, 4, 6} <= pushed and not {1, 7} & pushed


def test_batch_not_divisible_is_a_clear_error(world):
    with pytest.raises(ValueError, match="neighbour_pairs=2 needs a per-device batch divisible by 3"):
        call(objective(in_batch(neighbour_pairs=2)), world, world.params)
    with pytest.raises(ValueError, match="neighbour_pairs"):
        StepConfig(neighbour_pairs=-1)
    with pytest.raises(ValueError, match="bimodal_weight > 0"):
        StepConfig(neighbour_pairs=1, bimodal_weight=0.0)
