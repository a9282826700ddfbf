"""The CoCoHaNeRe train step: Algorithm 1 against an independent reference, gradients through the
re-encoded negatives (incl. finite differences), host vs device token table, 1 vs 4 devices, one trace.

Everything runs on a tiny stand-in encoder (tests/tiny_models.py) honouring the encoder contract. All
steps start from the same state whose banks already hold some items, so the very first step has hard
negatives (and some of them are DataIDs of the current batch, to exercise the masks and the push).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cocohanere_jax import bank as bank_lib
from cocohanere_jax import losses
from cocohanere_jax import sharding
from cocohanere_jax import objective as objective_lib
from cocohanere_jax import optim, reencode
from cocohanere_jax import step as S
from cocohanere_jax import token_table as TT
from cocohanere_jax.step_config import StepConfig
from tiny_models import PAD_ID, TinyEncoder, batch_for, init_params, numpy_search, token_table

N, LQ, LC, VOCAB, DIM = 40, 8, 12, 50, 16
B, K, M = 8, 3, 13
# Fast XLA:CPU compiles; the numerics are the same programs.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
PREFILL = np.array([20, 21, 22, 23, 24, 25, 26, 27, 28, 3, 5], np.int32)  # 3 and 5 are in batch 0
BATCHES = [np.arange(s * B, (s + 1) * B, dtype=np.int32) for s in range(5)]
STEPS = 5
# lr large enough that parameters move well beyond float noise; eps above the noise of near-zero grads.
# The padded path (length_buckets=0): the independent reference encodes every row at its cap, and
# TinyEncoder's flax dropout masks depend on the padded shape (tests/test_length_buckets.py covers the
# length-aware path against this one).
CONFIG = StepConfig(k=K, bank_size=M, learning_rate=1e-2, adam_eps=1e-6, mask_duplicates=False, length_buckets=0)


# Jitted for checks outside traced code (one compile instead of one per op).
bimodal_loss = jax.jit(losses.bimodal_loss, static_argnames="temperature")
hard_negative_loss = jax.jit(losses.hard_negative_loss, static_argnames="temperature")


def variant(**changes):
    """CONFIG with some fields changed."""
    return StepConfig(**{**CONFIG.__dict__, **changes})


class World:
    """Model, data and the initial state shared by the tests of this module (built once)."""

    def __init__(self):
        self.model = TinyEncoder(vocab_size=VOCAB, hidden=32, dim=DIM, dropout_rate=0.1)
        self.params = init_params(self.model)
        self.qt, self.ct = token_table(N, LQ, LC, VOCAB)
        self.table = TT.TokenTable(self.qt, self.ct, pad_id=PAD_ID).device_view()
        self.tx = optim.make_optimizer(CONFIG, total_steps=20)
        state = S.init_train_state(self.params, self.tx, CONFIG, DIM, rng=0)
        encode = jax.jit(lambda p, ids: self.model.apply({"params": p}, ids, ids != PAD_ID))
        state = state.replace(
            query_bank=bank_lib.push(state.query_bank, encode(self.params, self.qt[PREFILL]), jnp.asarray(PREFILL)),
            code_bank=bank_lib.push(state.code_bank, encode(self.params, self.ct[PREFILL]), jnp.asarray(PREFILL)),
        )
        self.state0 = jax.device_get(state)  # host copy; every run replicates it afresh

    def batch(self, s):
        return batch_for(BATCHES[s], self.qt, self.ct)

    def run(self, step_fn, mesh, n_steps, table):
        """Run ``n_steps``; return host snapshots, metrics, and whether every replica was identical."""
        state = sharding.replicate(self.state0, mesh)
        snapshots, metrics, replicas_identical = [], [], True
        for s in range(n_steps):
            state, m = step_fn(state, sharding.shard_batch(self.batch(s), mesh), table)
            for leaf in jax.tree.leaves((state, m)):
                first = np.asarray(leaf.addressable_shards[0].data)
                for shard in leaf.addressable_shards[1:]:
                    replicas_identical &= np.array_equal(np.asarray(shard.data), first)
            snapshots.append(jax.device_get(state))
            metrics.append(jax.device_get(m))
        return snapshots, metrics, replicas_identical


@pytest.fixture(scope="module")
def world():
    return World()


@pytest.fixture(scope="module")
def run4(world):
    """Five steps on 4 devices with the device token table, counting encoder traces."""
    traces = []

    def counting_apply(params, ids, mask, deterministic, key):
        traces.append(ids.shape)
        return world.model.apply({"params": params}, ids, mask, deterministic=deterministic, rngs={"dropout": key})

    mesh = sharding.make_mesh(jax.devices()[:4])
    step_fn = S.make_train_step(counting_apply, world.tx, CONFIG, mesh, pad_id=PAD_ID, compiler_options=FAST)
    counts = []
    state = sharding.replicate(world.state0, mesh)
    for s in range(STEPS):
        state, _ = step_fn(state, sharding.shard_batch(world.batch(s), mesh), world.table)
        counts.append(len(traces))
    snapshots, metrics, identical = world.run(step_fn, mesh, STEPS, world.table)
    return dict(snapshots=snapshots, metrics=metrics, identical=identical, trace_counts=counts,
                cache_size=step_fn._cache_size())


def tree_allclose(a, b, rtol, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------------- the full step


def test_step_zero_matches_independent_reference(world, run4):
    """Algorithm 1 step by step, written independently: per-row model.apply (no vmap), numpy search of the
    banks *before* the push, the public losses, jax.grad, the optimizer, a slot-by-slot FIFO push and
    a first-wins checked update."""
    st, batch = world.state0, world.batch(0)
    ids = batch["data_id"]
    key = jax.random.fold_in(st.rng, 0)  # documented scheme: fold_in(rng, step), stream, global row

    def enc(p, rows, stream):
        """Encode rows one at a time (lax.map, no vmap); row r gets key fold_in(fold_in(key, stream), r)."""

        def one(xs):
            row, index = xs
            k = jax.random.fold_in(jax.random.fold_in(key, stream), index)
            return world.model.apply({"params": p}, row[None], (row != PAD_ID)[None], deterministic=False,
                                     rngs={"dropout": k})[0]

        return jax.lax.map(one, (rows, jnp.arange(rows.shape[0])))

    def reference_loss(p, c_neg_rows, q_neg_rows, c_valid, q_valid):
        q, c = enc(p, batch["query_ids"], 0), enc(p, batch["code_ids"], 1)
        c_neg = enc(p, c_neg_rows.reshape(B * K, LC), 2).reshape(B, K, DIM)  # row index i * K + j
        q_neg = enc(p, q_neg_rows.reshape(B * K, LQ), 3).reshape(B, K, DIM)
        l_b = losses.bimodal_loss(q, c, CONFIG.temperature)
        l_hn = losses.hard_negative_loss(q, c, q_neg, c_neg, CONFIG.temperature, (q_valid, c_valid))
        return l_b + l_hn, (l_b, l_hn, q, c, c_neg, q_neg)

    reference = jax.jit(jax.value_and_grad(reference_loss, has_aux=True), compiler_options=FAST)
    # First call only for the batch embeddings (the neighbour arguments are placeholders).
    dummy = (world.ct[:B * K].reshape(B, K, LC), world.qt[:B * K].reshape(B, K, LQ), np.ones((B, K), bool))
    (_, (_, _, q0, c0, _, _)), _ = reference(world.params, dummy[0], dummy[1], dummy[2], dummy[2])
    q0, c0 = np.asarray(q0), np.asarray(c0)

    in_batch = lambda bank: ~np.isin(np.asarray(bank.ids), ids)[None, :]  # noqa: E731
    code_hits = numpy_search(st.code_bank.embeddings, st.code_bank.ids, q0, ids, K, in_batch(st.code_bank))
    query_hits = numpy_search(st.query_bank.embeddings, st.query_bank.ids, c0, ids, K, in_batch(st.query_bank))
    assert code_hits[3].sum() == query_hits[3].sum() == B * K  # 7 eligible items >= k: all valid
    (loss, (l_b, l_hn, _, _, c_neg, q_neg)), grads = reference(
        world.params, world.ct[code_hits[1]], world.qt[query_hits[1]], code_hits[3], query_hits[3]
    )
    updates, _ = world.tx.update(grads, world.tx.init(world.params), world.params)
    params1 = optax.apply_updates(world.params, updates)

    got, m = run4["snapshots"][0], run4["metrics"][0]
    np.testing.assert_allclose(m["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(m["loss_b"], l_b, rtol=1e-5)
    np.testing.assert_allclose(m["loss_hn"], l_hn, rtol=1e-5)
    np.testing.assert_allclose(m["grad_norm"], optax.tree.norm(grads), rtol=1e-4)
    np.testing.assert_allclose(m["lr"], CONFIG.learning_rate, rtol=1e-6)
    assert m["valid_negatives"] == K
    distinct = sum(len(set(h[1][h[3]].tolist())) for h in (code_hits, query_hits))
    np.testing.assert_allclose(m["distinct_negatives"], distinct / (2 * B * K), rtol=1e-6)
    tree_allclose(got.params, params1, rtol=1e-4, atol=1e-6)
    assert int(got.step) == 1

    # Banks: push the batch (FIFO from ptr 11, stale copies of 3 and 5 dropped), then refresh the
    # retrieved slots that still hold the retrieved DataID, first retrieval wins.
    for name, emb, hits, neg in (("query_bank", q0, query_hits, q_neg), ("code_bank", c0, code_hits, c_neg)):
        old = getattr(st, name)
        e, i = np.array(old.embeddings), np.array(old.ids)
        i[np.isin(i, ids)] = -1
        slots = (11 + np.arange(B)) % M
        e[slots], i[slots] = emb, ids
        done = set()
        for a in range(B):
            for j in range(K):
                s, did = hits[0][a, j], hits[1][a, j]
                if i[s] == did and s not in done:
                    e[s] = np.asarray(neg)[a, j]
                    done.add(s)
        assert done and len(done) < len(set(hits[0].ravel()))  # some refreshed, some recycled by the push
        new = getattr(got, name)
        np.testing.assert_array_equal(new.ids, i)
        assert int(new.ptr) == (11 + B) % M
        np.testing.assert_allclose(new.embeddings, e, rtol=1e-5, atol=1e-6)


def test_one_device_equals_four_devices_with_dropout(world, run4):
    """Same global batch on 1 and on 4 devices: same losses, parameters and banks after 3 steps."""
    mesh1 = sharding.make_mesh(jax.devices()[:1])
    step1 = S.make_train_step(world.model, world.tx, CONFIG, mesh1, pad_id=PAD_ID, compiler_options=FAST)
    snaps1, metrics1, _ = world.run(step1, mesh1, 3, world.table)
    for s in range(3):
        for name in ("loss", "loss_b", "loss_hn", "grad_norm", "valid_negatives", "distinct_negatives"):
            np.testing.assert_allclose(metrics1[s][name], run4["metrics"][s][name], rtol=2e-5, err_msg=name)
    a, b = snaps1[2], run4["snapshots"][2]
    moved = max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(b.params), jax.tree.leaves(world.params)))
    assert moved > 1e-2  # the comparison below is not vacuous
    tree_allclose(a.params, b.params, rtol=1e-4, atol=2e-6)
    tree_allclose(a.opt_state, b.opt_state, rtol=1e-4, atol=2e-6)
    for name in ("query_bank", "code_bank"):
        np.testing.assert_array_equal(getattr(a, name).ids, getattr(b, name).ids)
        np.testing.assert_allclose(getattr(a, name).embeddings, getattr(b, name).embeddings, rtol=1e-4, atol=2e-6)


def test_all_replicas_identical(run4):
    """Every leaf of the state (banks included) and every metric is bitwise equal on the 4 devices."""
    assert run4["identical"]


def test_step_traced_once_over_five_steps(run4):
    counts = run4["trace_counts"]
    assert counts[0] > 0 and counts == [counts[0]] * STEPS, counts
    assert run4["cache_size"] == 1
    assert int(run4["snapshots"][-1].step) == STEPS


def test_host_table_equals_device_table(world, run4):
    """token_table="host" (numpy via pure_callback, 4 devices) gives the device-table step's outputs."""

    calls = []

    class CountingHostTable(TT.TokenTable):
        def lookup(self, which, ids):
            calls.append((which, np.shape(ids)))
            return super().lookup(which, ids)

    config = variant(token_table="host")
    mesh = sharding.make_mesh(jax.devices()[:4])
    step_fn = S.make_train_step(world.model, world.tx, config, mesh, pad_id=PAD_ID, compiler_options=FAST,
                                host_table=CountingHostTable(world.qt, world.ct))
    snaps, metrics, identical = world.run(step_fn, mesh, 2, TT.DeviceTokenTable())
    assert identical
    assert ("code", (B // 4, K)) in calls and ("query", (B // 4, K)) in calls  # per device, local anchors
    for s in range(2):
        for name, value in metrics[s].items():
            np.testing.assert_allclose(value, run4["metrics"][s][name], rtol=1e-6, atol=1e-7, err_msg=name)
        tree_allclose(snaps[s], run4["snapshots"][s], rtol=1e-6, atol=1e-7)


def test_lr_follows_linear_decay(run4):
    lrs = [m["lr"] for m in run4["metrics"]]
    np.testing.assert_allclose(lrs, [1e-2 * (1 - s / 20) for s in range(STEPS)], rtol=1e-5)


# ------------------------------------------------------------------- the objective, single program


@functools.cache
def objective(config, dropout=0.0, grad=True):
    """The jitted single-program objective (memoised: each variant compiles once per session)."""
    model = TinyEncoder(vocab_size=VOCAB, hidden=32, dim=DIM, dropout_rate=dropout)  # same params as World
    f = functools.partial(objective_lib.loss_and_aux, apply_fn=reencode.as_apply_fn(model), config=config, pad_id=PAD_ID)
    if grad:
        f = jax.value_and_grad(f, has_aux=True)
    return jax.jit(f, compiler_options=FAST)


def call(f, world, params, state=None):
    st = state or world.state0
    return f(params, st.query_bank, st.code_bank, world.batch(0), world.table, jax.random.key_data(jax.random.key(7)))


def test_gradient_reaches_reencoded_negatives_finite_differences(world):
    """The gradient flows through the re-encoded negatives: it differs from the gradient with stop-gradient
    negatives (same loss value), and central differences of the whole objective (float64) along a random
    direction equal its directional derivative, not the stop-gradient one's."""
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), world.params)
        st = world.state0
        st64 = st.replace(
            query_bank=st.query_bank.replace(embeddings=jnp.asarray(st.query_bank.embeddings, jnp.float64)),
            code_bank=st.code_bank.replace(embeddings=jnp.asarray(st.code_bank.embeddings, jnp.float64)),
        )
        rng = np.random.default_rng(0)
        direction = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape)), p64)
        direction = jax.tree.map(lambda x: x / optax.tree.norm(direction), direction)
        # The gradient under test comes from the rematerialised, chunked re-encoding (5 chunks of 5 rows
        # for 24 negatives), so this also checks the gradient of the memory-saving path.
        f = objective(variant(remat=True, reencode_chunk=5))
        eps = 1e-5
        ((lp, auxp), _), ((lm, auxm), _) = (
            call(f, world, jax.tree.map(lambda p, v: p + s * eps * v, p64, direction), st64) for s in (1, -1)
        )
        np.testing.assert_array_equal(auxp.code_hits.slots, auxm.code_hits.slots)  # same neighbours
        np.testing.assert_array_equal(auxp.query_hits.slots, auxm.query_hits.slots)
        assert int(auxp.valid_negatives) == 2 * B * K
        fd = float((lp - lm) / (2 * eps))
        (l, _), g = call(f, world, p64, st64)
        (l_sg, _), g_sg = call(objective(variant(negative_gradient=False)), world, p64, st64)
        np.testing.assert_allclose(l_sg, l, rtol=1e-12)
        diff = optax.tree.norm(jax.tree.map(lambda a, b: a - b, g, g_sg))
        assert diff > 1e-2 * optax.tree.norm(g), (diff, optax.tree.norm(g))

        def dot(grad):
            return float(sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(direction))))

        assert g["proj"]["kernel"].dtype == jnp.float64
        np.testing.assert_allclose(dot(g), fd, rtol=1e-6, atol=1e-9)
        assert abs(dot(g_sg) - fd) > 1e-3 * abs(fd)


def test_remat_and_chunked_encoding_change_nothing(world):
    """jax.checkpoint + chunked encoding give the same embeddings and gradient as one call, dropout on:
    per-row keys make the dropout masks independent of the chunking."""
    apply_fn = reencode.as_apply_fn(world.model)
    rows = jnp.asarray(world.ct[:23])
    keys = reencode.row_keys(jax.random.key_data(jax.random.key(3)), 2, jnp.arange(23))
    weights = jnp.asarray(np.random.default_rng(0).normal(size=(23, DIM)), jnp.float32)

    @functools.partial(jax.jit, static_argnums=(1, 2), compiler_options=FAST)
    def value_and_grad(params, remat, chunk):
        def f(p):
            emb = reencode.encode_rows(apply_fn, p, rows, keys, pad_id=PAD_ID, remat=remat, chunk=chunk)
            return jnp.sum(emb * weights), emb
        return jax.value_and_grad(f, has_aux=True)(params)

    (v0, e0), g0 = value_and_grad(world.params, False, 0)
    (v1, e1), g1 = value_and_grad(world.params, True, 5)  # 23 rows: 5 chunks, the last one padded
    np.testing.assert_allclose(e1, e0, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(v1, v0, rtol=1e-5, atol=1e-5)
    tree_allclose(g1, g0, rtol=1e-5, atol=1e-6 * float(optax.tree.norm(g0)))
    # Dropout is really on: the deterministic encoding differs.
    det = reencode.encode_rows(apply_fn, world.params, rows, keys, pad_id=PAD_ID, deterministic=True)
    assert float(jnp.max(jnp.abs(det - e0))) > 1e-3


@pytest.mark.parametrize(
    "options",
    [
        dict(knn="bi", mask_duplicates=True, false_negative_margin=0.0),
        dict(knn="uni", mask_in_batch=False, mask_duplicates=True, false_negative_margin=-0.2),
    ],
    ids=["bi-dup-margin", "uni-no-batch-mask-dup-margin"],
)
def test_search_masks_and_reencoding(world, options):
    """Neighbours equal numpy brute force with the configured keys and masks; the re-encoded negatives are
    the encoder applied to the neighbours' token rows; the loss is L^B + L^HN on those."""
    model = TinyEncoder(vocab_size=VOCAB, hidden=32, dim=DIM, dropout_rate=0.0)  # same params as World
    encode = jax.jit(lambda p, ids: model.apply({"params": p}, ids, ids != PAD_ID), compiler_options=FAST)
    config = variant(**options)
    rng = np.random.default_rng(1)
    q_hash, c_hash = rng.integers(0, 12, N).astype(np.int32), rng.integers(0, 12, N).astype(np.int32)
    table = world.table.replace(query_hash=jnp.asarray(q_hash), code_hash=jnp.asarray(c_hash))
    st, batch = world.state0, world.batch(0)
    f = objective(config, grad=False)
    loss, aux = f(world.params, st.query_bank, st.code_bank, batch, table, jax.random.key_data(jax.random.key(7)))

    ids, q, c = batch["data_id"], np.asarray(aux.q, np.float64), np.asarray(aux.c, np.float64)
    pos = np.sum(q * c, axis=1)
    bi = config.knn == "bi"
    for bank, hits, keys, fn_anchor, table_rows, neg in (
        (st.code_bank, aux.code_hits, q if bi else c, q, world.ct, aux.c_neg),
        (st.query_bank, aux.query_hits, c if bi else q, c, world.qt, aux.q_neg),
    ):
        bank_ids = np.asarray(bank.ids)
        keep = np.ones((B, M), bool)
        if config.mask_in_batch:
            keep &= ~np.isin(bank_ids, ids)[None, :]
        if config.mask_duplicates:
            j = np.maximum(bank_ids, 0)
            keep &= (q_hash[ids][:, None] != q_hash[j][None, :]) & (c_hash[ids][:, None] != c_hash[j][None, :])
        if config.false_negative_margin is not None:
            fn = fn_anchor @ np.asarray(bank.embeddings, np.float64).T
            keep &= fn <= (pos + config.false_negative_margin * np.abs(pos))[:, None]
        slots, nids, scores, valid = numpy_search(bank.embeddings, bank.ids, keys, ids, K, keep)
        np.testing.assert_array_equal(np.asarray(hits.slots), slots)
        np.testing.assert_array_equal(np.asarray(hits.ids), nids)
        np.testing.assert_array_equal(np.asarray(hits.valid), valid)
        neighbour_rows = table_rows[np.maximum(nids, 0)].reshape(B * K, -1)
        expected = encode(world.params, neighbour_rows).reshape(B, K, DIM)
        np.testing.assert_allclose(np.asarray(neg)[valid], np.asarray(expected)[valid], rtol=1e-5, atol=1e-6)
    if options.get("mask_in_batch", True):
        assert not np.any(np.isin(np.asarray(aux.code_hits.ids), ids))
    else:
        hit_ids = np.concatenate([np.asarray(aux.code_hits.ids), np.asarray(aux.query_hits.ids)])
        assert np.any(np.isin(hit_ids, ids))  # 3 or 5 (in the batch and in the bank) come back when not masked

    in_batch_mask = None
    if config.mask_duplicates:
        in_batch_mask = (q_hash[ids][:, None] != q_hash[ids][None, :]) & (c_hash[ids][:, None] != c_hash[ids][None, :])
        assert not np.all(in_batch_mask | np.eye(B, dtype=bool))  # the hashes do collide in this batch
    l_b = bimodal_loss(aux.q, aux.c, config.temperature, in_batch_mask)
    l_hn = hard_negative_loss(aux.q, aux.c, aux.q_neg, aux.c_neg, config.temperature,
                                     (aux.query_hits.valid, aux.code_hits.valid))
    np.testing.assert_allclose(loss, l_b + l_hn, rtol=1e-5)
    if config.mask_duplicates:
        assert int(aux.valid_negatives) < 2 * B * K  # the masks removed candidates: missing ones are masked


def test_ablations(world):
    """In-batch baseline (no L^HN: no search, no negatives) and L^HN only (L^B reported, not trained)."""
    baseline = variant(hard_negative_weight=0.0)
    (loss, aux) = call(objective(baseline, grad=False), world, world.params)
    assert not np.any(np.asarray(aux.code_hits.valid)) and int(aux.valid_negatives) == 0
    np.testing.assert_allclose(loss, aux.loss_b_sum / B, rtol=1e-6)
    np.testing.assert_allclose(loss, bimodal_loss(aux.q, aux.c, CONFIG.temperature), rtol=1e-5)

    hn_only = variant(bimodal_weight=0.0)
    (loss, aux) = call(objective(hn_only, grad=False), world, world.params)
    np.testing.assert_allclose(loss, aux.loss_hn_sum / B, rtol=1e-6)
    assert float(aux.loss_b_sum) > 0 and float(aux.loss_hn_sum) > 0  # L^B still reported


# ---------------------------------------------------------------------------- config and optimizer


def test_config_from_config_dict_and_validation():
    cfg = ml_collections.ConfigDict({"k": 4, "knn": "uni", "false_negative_margin": None, "temperature": 0.07})
    sc = StepConfig.from_config(cfg)
    assert (sc.k, sc.knn, sc.temperature, sc.bank_size) == (4, "uni", 0.07, 8096)
    with pytest.raises(ValueError, match="unknown step config field"):
        StepConfig.from_config({"kk": 3})
    for bad in (dict(knn="tri"), dict(token_table="disk"), dict(k=0), dict(bank_size=5, k=10), dict(temperature=0.0),
                dict(bimodal_weight=0.0, hard_negative_weight=0.0), dict(reencode_fraction=0.5),
                dict(dedup_negatives=True, reencode_fraction=0.0), dict(dedup_negatives=True, reencode_fraction=1.5),
                dict(length_pack_keep=True)):
        with pytest.raises(ValueError, match="StepConfig"):
            StepConfig(**bad)
    with pytest.raises(ValueError, match="host_table"):
        S.make_train_step(TinyEncoder(), optax.sgd(0.1), StepConfig(token_table="host"), sharding.make_mesh(),
                          pad_id=0)


def test_make_optimizer_defaults():
    config = StepConfig()
    assert (config.learning_rate, config.adam_eps, config.weight_decay, config.grad_clip) == (3e-5, 1e-8, 0.01, 1.0)
    tx = optim.make_optimizer(config, total_steps=10)
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
    state = tx.init(params)
    huge = {"w": jnp.full((2, 2), 100.0), "b": jnp.full((2,), 100.0)}
    update = jax.jit(tx.update)
    updates, state = update(huge, state, params)
    np.testing.assert_allclose(optim.current_learning_rate(state), 3e-5, rtol=1e-6)
    # First AdamW step: -lr * (g/|g| + wd * p) per element (clipping does not change the direction).
    np.testing.assert_allclose(updates["w"], -3e-5 * (1 + 0.01), rtol=1e-4)
    for _ in range(4):
        updates, state = update(huge, state, params)
    np.testing.assert_allclose(optim.current_learning_rate(state), 3e-5 * (1 - 4 / 10), rtol=1e-5)
    # Biases can be exempted from weight decay.
    tx = optim.make_optimizer(StepConfig(weight_decay_vectors=False), total_steps=10)
    updates, _ = jax.jit(tx.update)(huge, tx.init(params), params)
    np.testing.assert_allclose(updates["b"], -3e-5, rtol=1e-4)


# ------------------------------------------------------------------- de-duplicated re-encoding


def _numpy_dedup(ids, valid, budget):
    """Plain-Python reference of reencode.dedup_neighbours: rank-major priority, first occurrence keeps its slot."""
    n, k = ids.shape
    unique, slot_of = [], {}
    index, kept = np.full((n, k), budget), np.zeros((n, k), bool)
    for j in range(k):
        for a in range(n):
            if not valid[a, j]:
                continue
            did = int(ids[a, j])
            if did not in slot_of:
                slot_of[did] = len(unique)
                unique.append(did)
            if slot_of[did] < budget:
                index[a, j], kept[a, j] = slot_of[did], True
    unique = (unique + [-1] * budget)[:budget]
    return np.asarray(unique), index, kept


def test_dedup_neighbours_matches_numpy():
    rng = np.random.default_rng(0)
    for trial in range(6):
        n, k = (5, 4) if trial % 2 else (8, 3)
        ids = rng.integers(0, 9, size=(n, k)).astype(np.int32)  # many shared neighbours
        valid = rng.random((n, k)) < 0.8
        for budget in (n * k, 7, 3, 1):
            got = jax.jit(reencode.dedup_neighbours, static_argnums=2, compiler_options=FAST)(ids, valid, budget)
            want = _numpy_dedup(ids, valid, budget)
            for g, w, name in zip(got, want, ("unique_ids", "index", "kept")):
                np.testing.assert_array_equal(np.asarray(g), w, err_msg=f"{name}, trial {trial}, budget {budget}")


def test_dedup_reencoding_same_objective_without_dropout(world):
    """Without dropout an embedding is a function of its tokens only, so re-encoding each distinct neighbour
    once gives the same loss, gradient and negatives as re-encoding it once per (anchor, rank); a budget
    below the number of distinct neighbours masks the farthest ones and counts them."""
    (l0, a0), g0 = call(objective(CONFIG), world, world.params)
    (l1, a1), g1 = call(objective(variant(dedup_negatives=True)), world, world.params)
    distinct = sum(len(set(np.asarray(h.ids)[np.asarray(h.valid)].tolist())) for h in (a0.code_hits, a0.query_hits))
    assert distinct < 2 * B * K  # the fixture's small bank makes anchors share neighbours: dedup is exercised
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    tree_allclose(g1, g0, rtol=1e-5, atol=1e-6 * float(optax.tree.norm(g0)))
    np.testing.assert_allclose(a1.c_neg, a0.c_neg, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a1.q_neg, a0.q_neg, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a1.code_hits.valid, a0.code_hits.valid)
    assert int(a1.dropped_negatives) == 0

    fraction = 0.25  # budget ceil(0.25 * 8 * 3) = 6 distinct rows per direction
    (l2, a2), _ = call(objective(variant(dedup_negatives=True, reencode_fraction=fraction)), world, world.params)
    dropped = 0
    for h0, h2, neg0, neg2 in ((a0.code_hits, a2.code_hits, a0.c_neg, a2.c_neg),
                               (a0.query_hits, a2.query_hits, a0.q_neg, a2.q_neg)):
        _, _, kept = _numpy_dedup(np.asarray(h0.ids), np.asarray(h0.valid), 6)
        np.testing.assert_array_equal(h2.valid, kept)
        np.testing.assert_allclose(np.asarray(neg2)[kept], np.asarray(neg0)[kept], rtol=1e-5, atol=1e-6)
        dropped += int(np.sum(np.asarray(h0.valid) & ~kept))
    assert dropped > 0 and int(a2.dropped_negatives) == dropped
    assert int(a2.valid_negatives) == int(a0.valid_negatives) - dropped
    assert not np.isclose(float(l2), float(l0))


def test_dedup_one_device_equals_four_devices_with_dropout(world):
    """With dropout on, a distinct neighbour's key comes from its DataID: the same on any device count."""
    config = variant(dedup_negatives=True)
    out = []
    for devices in (1, 4):
        mesh = sharding.make_mesh(jax.devices()[:devices])
        step_fn = S.make_train_step(world.model, world.tx, config, mesh, pad_id=PAD_ID, compiler_options=FAST)
        out.append(world.run(step_fn, mesh, 2, world.table))
    (snaps1, metrics1, _), (snaps4, metrics4, _) = out
    for s in range(2):
        for name in ("loss", "loss_hn", "grad_norm", "valid_negatives", "distinct_negatives", "dropped_negatives"):
            np.testing.assert_allclose(metrics1[s][name], metrics4[s][name], rtol=2e-5, err_msg=name)
    assert metrics1[1]["distinct_negatives"] < 1  # shared neighbours were de-duplicated
    tree_allclose(snaps1[1].params, snaps4[1].params, rtol=1e-4, atol=2e-6)
    tree_allclose(snaps1[1].code_bank, snaps4[1].code_bank, rtol=1e-4, atol=2e-6)
