"""L^B and L^HN against plain numpy on random inputs, with and without masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cocohanere_jax import losses as _losses


class losses:  # noqa: N801  (jitted views of the module: one compile per test instead of one per op)
    info_nce_rows = jax.jit(_losses.info_nce_rows, static_argnames="temperature")
    bimodal_loss = jax.jit(_losses.bimodal_loss, static_argnames="temperature")
    hard_negative_rows = jax.jit(_losses.hard_negative_rows, static_argnames="temperature")
    hard_negative_loss = jax.jit(_losses.hard_negative_loss, static_argnames="temperature")
    joint_rows = jax.jit(_losses.joint_rows, static_argnames=("temperature", "hard_weight"))


def unit(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_logsumexp(x):
    x = np.asarray(x, np.float64)
    m = np.max(x)
    return m + np.log(np.sum(np.exp(x - m)))


def np_bimodal(q, c, tau, mask=None):
    """Literal transcription of docs/METHOD.md section 3 with explicit loops."""
    n = q.shape[0]
    total = 0.0
    for i in range(n):
        use = [j for j in range(n) if j == i or mask is None or mask[i, j]]
        lq = -(q[i] @ c[i] / tau - np_logsumexp([q[i] @ c[j] / tau for j in use]))
        lc = -(c[i] @ q[i] / tau - np_logsumexp([c[i] @ q[j] / tau for j in use]))
        total += 0.5 * (lq + lc)
    return total / n


def np_hard_negative(q, c, q_neg, c_neg, tau, q_mask=None, c_mask=None):
    n, k = c_neg.shape[:2]
    total = 0.0
    for i in range(n):
        pos = q[i] @ c[i] / tau
        negs_q = [q[i] @ c_neg[i, j] / tau for j in range(k) if c_mask is None or c_mask[i, j]]
        negs_c = [c[i] @ q_neg[i, j] / tau for j in range(k) if q_mask is None or q_mask[i, j]]
        lq = -(pos - np_logsumexp([pos] + negs_q))
        lc = -(pos - np_logsumexp([pos] + negs_c))
        total += 0.5 * (lq + lc)
    return total / n


@pytest.mark.parametrize("tau", [0.05, 0.07, 1.0])
def test_bimodal_loss_matches_numpy(tau):
    rng = np.random.default_rng(0)
    q, c = unit(rng, 7, 5), unit(rng, 7, 5)
    got = losses.bimodal_loss(jnp.asarray(q, jnp.float32), jnp.asarray(c, jnp.float32), tau)
    np.testing.assert_allclose(float(got), np_bimodal(q, c, tau), rtol=2e-5)


def test_bimodal_loss_masked_matches_numpy():
    rng = np.random.default_rng(1)
    q, c = unit(rng, 6, 4), unit(rng, 6, 4)
    mask = rng.random((6, 6)) < 0.6
    mask[2, :] = False  # a row with no usable negative: only the positive remains, loss 0 for that row
    mask[3, 3] = False  # the diagonal is kept whatever the mask says
    got = losses.bimodal_loss(jnp.asarray(q, jnp.float32), jnp.asarray(c, jnp.float32), 0.05, jnp.asarray(mask))
    np.testing.assert_allclose(float(got), np_bimodal(q, c, 0.05, mask), rtol=2e-5)
    # Masking really changes the value (the test is not vacuous).
    assert abs(float(got) - np_bimodal(q, c, 0.05)) > 1e-3


def test_info_nce_rows_shards_sum_to_global_loss():
    """The data-parallel step scores local rows against global candidates; the shards add up."""
    rng = np.random.default_rng(2)
    q, c = jnp.asarray(unit(rng, 8, 5), jnp.float32), jnp.asarray(unit(rng, 8, 5), jnp.float32)
    total = 0.0
    for shard in range(4):
        rows = jnp.arange(2 * shard, 2 * shard + 2)
        per_row = 0.5 * (losses.info_nce_rows(q[rows], c, rows, 0.05) + losses.info_nce_rows(c[rows], q, rows, 0.05))
        total += float(jnp.sum(per_row)) / 8
    np.testing.assert_allclose(total, float(losses.bimodal_loss(q, c, 0.05)), rtol=1e-6)


@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_hard_negative_loss_matches_numpy(tau):
    rng = np.random.default_rng(3)
    n, k, d = 5, 4, 6
    q, c = unit(rng, n, d), unit(rng, n, d)
    q_neg, c_neg = unit(rng, n, k, d), unit(rng, n, k, d)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    got = losses.hard_negative_loss(f32(q), f32(c), f32(q_neg), f32(c_neg), tau)
    np.testing.assert_allclose(float(got), np_hard_negative(q, c, q_neg, c_neg, tau), rtol=2e-5)


def test_hard_negative_loss_masks_match_numpy():
    rng = np.random.default_rng(4)
    n, k, d = 6, 3, 5
    q, c = unit(rng, n, d), unit(rng, n, d)
    q_neg, c_neg = unit(rng, n, k, d), unit(rng, n, k, d)
    q_mask, c_mask = rng.random((n, k)) < 0.5, rng.random((n, k)) < 0.5
    q_mask[0], c_mask[0] = False, False  # a row without any valid negative
    c_mask[1] = True
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    got_pair = losses.hard_negative_loss(
        f32(q), f32(c), f32(q_neg), f32(c_neg), 0.05, (jnp.asarray(q_mask), jnp.asarray(c_mask))
    )
    np.testing.assert_allclose(float(got_pair), np_hard_negative(q, c, q_neg, c_neg, 0.05, q_mask, c_mask), rtol=2e-5)
    got_one = losses.hard_negative_loss(f32(q), f32(c), f32(q_neg), f32(c_neg), 0.05, jnp.asarray(c_mask))
    np.testing.assert_allclose(float(got_one), np_hard_negative(q, c, q_neg, c_neg, 0.05, c_mask, c_mask), rtol=2e-5)
    # A row whose negatives are all masked contributes exactly 0.
    rows = losses.hard_negative_rows(f32(q), f32(c), f32(c_neg), 0.05, jnp.zeros((n, k), bool))
    assert np.all(np.asarray(rows) == 0.0)


def np_joint_rows(a, cands, labels, tau, mask, hard, hard_mask, w):
    """One softmax per row over its usable in-batch candidates and its valid hard negatives (each w times)."""
    out = []
    for i in range(a.shape[0]):
        terms = [np.exp(a[i] @ cands[j] / tau) for j in range(cands.shape[0]) if j == labels[i] or mask[i, j]]
        terms += [w * np.exp(a[i] @ hard[i, r] / tau) for r in range(hard.shape[1]) if hard_mask[i, r]]
        out.append(np.log(np.sum(terms)) - a[i] @ cands[labels[i]] / tau)
    return np.asarray(out)


@pytest.mark.parametrize("w", [1.0, 0.25])
def test_joint_rows_match_numpy(w):
    """The hard negatives join the in-batch softmax: numpy's loop, masks on both parts; weight 0 is L^B."""
    rng = np.random.default_rng(6)
    n, m, k, d = 4, 8, 3, 5
    a, cands, hard = unit(rng, n, d), unit(rng, m, d), unit(rng, n, k, d)
    labels = np.array([1, 3, 4, 6])
    mask, hard_mask = rng.random((n, m)) < 0.6, rng.random((n, k)) < 0.6
    hard_mask[0] = False  # a row without hard negatives is its in-batch row
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    args = (f32(a), f32(cands), jnp.asarray(labels), 0.05, jnp.asarray(mask), f32(hard), jnp.asarray(hard_mask))
    got = np.asarray(losses.joint_rows(*args, hard_weight=w))
    np.testing.assert_allclose(got, np_joint_rows(a, cands, labels, 0.05, mask, hard, hard_mask, w), rtol=2e-5)
    plain = np.asarray(losses.info_nce_rows(f32(a), f32(cands), jnp.asarray(labels), 0.05, jnp.asarray(mask)))
    np.testing.assert_allclose(got[0], plain[0], rtol=1e-6)
    assert np.all(got >= plain) and np.any(got > plain + 1e-2)  # hard negatives only add to the denominator
    np.testing.assert_allclose(np.asarray(losses.joint_rows(*args, hard_weight=0.0)), plain, rtol=1e-6)


def test_masked_negatives_get_zero_gradient_and_no_nan():
    """Masked entries (e.g. garbage rows of missing neighbours) must not leak into value or gradient."""
    rng = np.random.default_rng(5)
    n, k, d = 4, 3, 5
    q, c = jnp.asarray(unit(rng, n, d), jnp.float32), jnp.asarray(unit(rng, n, d), jnp.float32)
    c_neg = jnp.asarray(unit(rng, n, k, d), jnp.float32)
    mask = jnp.asarray(rng.random((n, k)) < 0.5).at[0].set(False)
    grad = jax.grad(lambda x: jnp.sum(losses.hard_negative_rows(q, c, x, 0.05, mask)))(c_neg)
    assert np.all(np.isfinite(np.asarray(grad)))
    assert np.all(np.asarray(grad)[~np.asarray(mask)] == 0.0)
    assert np.any(np.asarray(grad)[np.asarray(mask)] != 0.0)
    # Garbage (huge) values in masked slots change nothing.
    junk = jnp.where(mask[..., None], c_neg, 1e4)
    np.testing.assert_array_equal(
        np.asarray(losses.hard_negative_rows(q, c, junk, 0.05, mask)),
        np.asarray(losses.hard_negative_rows(q, c, c_neg, 0.05, mask)),
    )
