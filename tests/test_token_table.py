"""The token table: one host object, its device view and its host-callback view, one batch layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cocohanere_jax import sharding
from cocohanere_jax import token_table as TT


def _table(n=6, lq=5, lc=7, pad_id=0):
    rng = np.random.default_rng(0)
    q = rng.integers(1, 50, (n, lq)).astype(np.int32)
    c = rng.integers(1, 50, (n, lc)).astype(np.int32)
    for i in range(n):  # row i has i % lq real query tokens (at least 1) and i % lc + 1 real code tokens
        q[i, max(1, i % lq):] = pad_id
        c[i, i % lc + 1:] = pad_id
    return TT.TokenTable(q, c, TT.text_hash([f"q{i}" for i in range(n)]), TT.text_hash([f"c{i}" for i in range(n)]),
                         "fp", pad_id)


def test_lengths_are_the_real_token_counts():
    t = _table()
    np.testing.assert_array_equal(t.query_lengths, [max(1, i % 5) for i in range(6)])
    np.testing.assert_array_equal(t.code_lengths, [i % 7 + 1 for i in range(6)])
    assert t.query_lengths.dtype == t.code_lengths.dtype == np.int32


def test_batch_and_batch_spec_agree():
    t = _table()
    ids = np.array([3, 0, 5, 3])
    batch = t.batch(ids)
    assert tuple(batch) == TT.BATCH_KEYS
    np.testing.assert_array_equal(batch["data_id"], ids)
    np.testing.assert_array_equal(batch["query_ids"], t.query_ids[ids])
    np.testing.assert_array_equal(batch["code_ids"], t.code_ids[ids])
    spec = t.batch_spec(4)
    for name in TT.BATCH_KEYS:
        assert spec[name].shape == batch[name].shape and spec[name].dtype == batch[name].dtype == np.int32
    with pytest.raises(IndexError, match="outside"):
        t.batch(np.array([6]))


def test_device_view_holds_the_rows_only_in_device_mode():
    t = _table()
    d = t.device_view("device")
    np.testing.assert_array_equal(d.code_ids, t.code_ids)
    np.testing.assert_array_equal(d.code_lengths, t.code_lengths)
    h = t.device_view("host")
    assert h.query_ids is None and h.code_ids is None
    np.testing.assert_array_equal(h.code_hash, t.code_hash)
    with pytest.raises(ValueError, match="token_table"):
        t.device_view("disk")


def test_lookup_rows_device_and_host_callback_agree():
    t = _table()
    ids = jnp.array([[1, 4], [5, 0]], jnp.int32)
    mesh = sharding.make_mesh(jax.devices()[:1])
    device = sharding.replicate(t.device_view("device"), mesh)
    host = sharding.replicate(t.device_view("host"), mesh)
    for which in ("query", "code"):
        on_device = jax.jit(lambda i, d: TT.lookup_rows(which, i, d, None, None))(ids, device)
        via_host = jax.jit(lambda i, d: TT.lookup_rows(which, i, d, t, None))(ids, host)
        np.testing.assert_array_equal(on_device, t.lookup(which, np.asarray(ids)))
        np.testing.assert_array_equal(via_host, on_device)
    with pytest.raises(ValueError, match="no code token rows"):
        TT.lookup_rows("code", ids, t.device_view("host"), None, None)


def test_bad_tables_are_refused():
    q = np.ones((3, 4), np.int32)
    with pytest.raises(ValueError, match="one row per DataID"):
        TT.TokenTable(q, np.ones((2, 4), np.int32))
    with pytest.raises(ValueError, match=r"\[N, L\]"):
        TT.TokenTable(q[0], q)
    with pytest.raises(ValueError, match="integer"):
        TT.TokenTable(q.astype(np.float32), q)
