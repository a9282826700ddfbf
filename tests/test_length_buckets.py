"""Length-aware encoding (StepConfig.length_buckets, reencode.encode_rows_bucketed) against the padded step.

* without dropout: the same loss and gradients as the padded step (TinyEncoder, a tiny T5 whose rows are
  longer than its relative max distance, a tiny RoBERTa), for all-short, all-at-cap and mixed rows, with
  and without de-duplicated negatives;
* with dropout (T5, masks drawn by position): 1 device and 4 devices give the same steps and banks, and
  the padded step gives the same steps too;
* the compiled step is traced once over steps with different length mixes;
* in device-table mode the step gathers the batch's rows by DataID (a batch of DataIDs only is enough);
* length plans (StepConfig.length_plan, reencode.encode_rows_planned): the same values and gradients as
  the padded encoding when the plan holds and when it does not (the fallback: padded or the bucketed
  chunks), and the same steps on
  1 and 4 devices with dropout;
* packed rows (StepConfig.length_pack, reencode.pack_rows / encode_rows_packed): first-fit decreasing as a
  plain numpy packing does it, the padded encoding's values and gradients (T5 past its relative max
  distance, RoBERTa positions, scanned layers with attention's custom VJP), dropout masks that do not
  depend on the packing, the padded step's loss and gradients, 1 device = 4 devices with dropout, one
  trace over length mixes, and a clear error for an encoder that cannot pack; with the fullest packed rows
  kept as one batch (StepConfig.length_pack_keep, reencode.choose_packed_keep) the same values, gradients
  and steps, and the host simulation packs as the device does.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cocohanere_jax import bank as bank_lib
from cocohanere_jax import objective as objective_lib
from cocohanere_jax import optim, reencode, sharding
from cocohanere_jax import step as S
from cocohanere_jax import token_table as TT
from cocohanere_jax.models.bert import BertConfig, BertEncoder
from cocohanere_jax.models.t5 import T5Config, T5Encoder
from cocohanere_jax.step_config import StepConfig
from tiny_models import TinyEncoder

N, LQ, LC, VOCAB = 40, 8, 24, 50
B, K, M = 8, 3, 13
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
PREFILL = np.array([20, 21, 22, 23, 24, 25, 26, 27, 28, 3, 5], np.int32)
PADDED = StepConfig(k=K, bank_size=M, learning_rate=1e-2, adam_eps=1e-6, mask_duplicates=False)
# Buckets 8, 16, 24 (three per cap, multiples of 8); chunks of 4 rows.
AWARE = StepConfig(**{**PADDED.__dict__, "length_buckets": 3, "length_chunk": 4})


def with_(config, **changes):
    return StepConfig(**{**config.__dict__, **changes})


def tables(mix: str, pad_id: int, seed: int = 0):
    """Token rows (ids in [2, VOCAB), right-padded with pad_id) whose lengths follow ``mix``."""
    rng = np.random.default_rng(seed)

    def rows(length):
        ids = rng.integers(2, VOCAB, size=(N, length)).astype(np.int32)
        if mix == "short":
            lengths = rng.integers(1, 4, size=N)
        elif mix == "cap":
            lengths = np.full(N, length)
        else:
            lengths = rng.integers(1, length + 1, size=N)
        ids[np.arange(length)[None, :] >= lengths[:, None]] = pad_id
        return ids

    return rows(LQ), rows(LC)


MODELS = {
    "tiny": (lambda rate: TinyEncoder(vocab_size=VOCAB, hidden=32, dim=16, dropout_rate=rate), 0),
    # Relative max distance 6 < 24: rows longer than it use the log-spaced far buckets.
    "t5": (lambda rate: T5Encoder(T5Config(vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                                           relative_attention_num_buckets=8, relative_attention_max_distance=6,
                                           dropout_rate=rate, embed_dim=8)), 0),
    "roberta": (lambda rate: BertEncoder(BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=32,
                                                    max_position_embeddings=40, hidden_dropout_prob=rate,
                                                    attention_probs_dropout_prob=rate, pad_token_id=1,
                                                    roberta_positions=True, pooling="mean")), 1),
}


def setup(model_name, mix, rate=0.0):
    make, pad_id = MODELS[model_name]
    model = make(rate)
    qt, ct = tables(mix, pad_id)
    ids = jnp.ones((2, 8), jnp.int32) * 2
    params = model.init(jax.random.key(0), ids, ids != pad_id)["params"]
    dim = jax.eval_shape(lambda: model.apply({"params": params}, ids, ids != pad_id)).shape[-1]
    table = TT.TokenTable(qt, ct, pad_id=pad_id)
    encode = jax.jit(lambda p, t: model.apply({"params": p}, t, t != pad_id))
    banks = [bank_lib.push(bank_lib.init_bank(M, dim), encode(params, t[PREFILL]), jnp.asarray(PREFILL))
             for t in (qt, ct)]
    return model, pad_id, jax.device_get(params), dim, table, jax.device_get(banks)  # host: runs donate


@pytest.mark.parametrize("model_name,mix,dedup", [
    ("tiny", "mixed", False), ("tiny", "short", False), ("tiny", "cap", False), ("tiny", "mixed", True),
    ("t5", "mixed", False), ("t5", "cap", True), ("roberta", "mixed", False), ("roberta", "short", True),
])
def test_same_loss_and_gradients_without_dropout(model_name, mix, dedup):
    _assert_padded_loss_and_gradients(model_name, mix, dedup, AWARE)


def _assert_padded_loss_and_gradients(model_name, mix, dedup, config, with_stats=False):
    """``config``'s step (no dropout) gives the padded step's loss, embeddings and gradients (``with_stats``:
    the step is given the table's length histograms, as train.py gives them)."""
    model, pad_id, params, dim, table, banks = setup(model_name, mix)
    stats = reencode.LengthStats.from_table(table) if with_stats else None
    qbank, cbank = jax.tree.map(jnp.asarray, banks)
    batch = table.batch(np.arange(B, dtype=np.int32))
    view = jax.tree.map(jnp.asarray, table.device_view())
    key = jax.random.key_data(jax.random.key(7))

    @functools.partial(jax.jit, static_argnums=0, compiler_options=FAST)
    def grad(config, p):
        f = functools.partial(objective_lib.loss_and_aux, apply_fn=reencode.as_apply_fn(model), config=config,
                              pad_id=pad_id, length_stats=stats)
        return jax.value_and_grad(f, has_aux=True)(p, qbank, cbank, batch, view, key)

    (l0, a0), g0 = grad(with_(PADDED, dedup_negatives=dedup), params)
    (l1, a1), g1 = grad(with_(config, dedup_negatives=dedup), params)
    assert int(a0.valid_negatives) > 0
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    for name in ("q", "c", "c_neg", "q_neg"):
        np.testing.assert_allclose(getattr(a1, name), getattr(a0, name), rtol=1e-5, atol=2e-6, err_msg=name)
    scale = float(optax.tree.norm(g0))
    assert scale > 0
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * scale)


def test_bucketed_rows_equal_padded_rows_and_vjp():
    """encode_rows_bucketed = encode_rows (deterministic), value and VJP, chunk sizes 3 and all rows."""
    model, pad_id, params, _, table, _ = setup("tiny", "mixed")
    apply_fn = reencode.as_apply_fn(model)
    rows = jnp.asarray(table.code_ids[:23])
    keys = reencode.row_keys(jax.random.key_data(jax.random.key(3)), 2, jnp.arange(23))
    weights = jnp.asarray(np.random.default_rng(0).normal(size=(23, 16)), jnp.float32)

    @functools.partial(jax.jit, static_argnums=(1,), compiler_options=FAST)
    def vg(p, chunk):
        def f(p):
            if chunk is None:
                e = reencode.encode_rows(apply_fn, p, rows, keys, pad_id=pad_id, deterministic=True)
            else:
                e = reencode.encode_rows_bucketed(apply_fn, p, rows, keys, pad_id=pad_id, buckets=(4, 8, 16),
                                                  chunk=chunk, deterministic=True)
            return jnp.sum(e * weights), e
        return jax.value_and_grad(f, has_aux=True)(p)

    (v0, e0), g0 = vg(params, None)
    for chunk in (3, 64):
        (v1, e1), g1 = vg(params, chunk)
        np.testing.assert_allclose(e1, e0, rtol=1e-5, atol=1e-6)
        scale = float(optax.tree.norm(g0))
        for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("model_name", ["t5", "roberta"])
def test_attention_custom_vjp_keeps_rows_independent_of_their_padding(model_name):
    """`model.attention_probs="float32"` (`layers.attention_core`), dropout on: rows encoded at bucket
    lengths equal rows encoded at the cap (its dropout mask, too, is drawn by position), value and VJP; and
    the values are the autodiff encoder's (the same masks)."""
    import dataclasses

    model, pad_id, params, _, table, _ = setup(model_name, "mixed", rate=0.2)
    core = model.clone(config=dataclasses.replace(model.config, attention_probs="float32"))
    rows = jnp.asarray(table.code_ids[:13])
    keys = reencode.row_keys(jax.random.key_data(jax.random.key(3)), 2, jnp.arange(13))
    weights = jnp.asarray(np.random.default_rng(0).normal(size=(13, 8 if model_name == "t5" else 16)), jnp.float32)

    @functools.partial(jax.jit, static_argnums=(1, 2), compiler_options=FAST)
    def vg(p, module, bucketed):
        apply_fn = reencode.as_apply_fn(module)

        def f(p):
            if bucketed:
                e = reencode.encode_rows_bucketed(apply_fn, p, rows, keys, pad_id=pad_id, buckets=(8, 16), chunk=4)
            else:
                e = reencode.encode_rows(apply_fn, p, rows, keys, pad_id=pad_id)
            return jnp.sum(e * weights), e
        return jax.value_and_grad(f, has_aux=True)(p)

    (_, e_auto), _ = vg(params, model, False)
    (_, e0), g0 = vg(params, core, False)
    (_, e1), g1 = vg(params, core, True)
    np.testing.assert_allclose(e0, e_auto, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e1, e0, rtol=1e-5, atol=1e-6)
    scale = float(optax.tree.norm(g0))
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * scale)


def _run(model, pad_id, params, dim, table, banks, config, devices, batches, token_rows=True, length_stats=None):
    mesh = sharding.make_mesh(jax.devices()[:devices])
    tx = optim.make_optimizer(config, total_steps=20)
    traces = []

    def counting_apply(p, ids, mask, deterministic, key):
        traces.append(ids.shape)
        return model.apply({"params": p}, ids, mask, deterministic=deterministic, rngs={"dropout": key})

    packed = getattr(reencode.as_apply_fn(model), "packed", None)
    if packed is not None:
        def counting_packed(p, ids, segments, rows, deterministic):
            traces.append(ids.shape)
            return packed(p, ids, segments, rows, deterministic)

        counting_apply.packed = counting_packed
    step_fn = S.make_train_step(counting_apply, tx, config, mesh, pad_id=pad_id, compiler_options=FAST,
                                length_stats=length_stats)
    state = S.init_train_state(params, tx, config, dim, rng=0)
    state = sharding.replicate(state.replace(query_bank=banks[0], code_bank=banks[1]), mesh)
    view = sharding.replicate(table.device_view(), mesh)
    snaps, metrics, counts = [], [], []
    for ids in batches:
        state, m = step_fn(state, sharding.shard_batch(table.batch(ids, token_rows=token_rows), mesh), view)
        snaps.append(jax.device_get(state))
        metrics.append(jax.device_get(m))
        counts.append(len(traces))
    return snaps, metrics, counts, step_fn._cache_size()


BATCHES = [np.arange(s * B, (s + 1) * B, dtype=np.int32) for s in range(3)]


@pytest.fixture(scope="module")
def dropout_runs():
    """Three length-aware steps with dropout on 4 devices, on a table with short, capped and mixed rows."""
    world = setup("t5", "mixed", rate=0.1)
    model, pad_id, params, dim, table, banks = world
    # Batch 0 all short, batch 1 all at the caps, batch 2 mixed: different length mixes, one program.
    qt, ct = table.query_ids.copy(), table.code_ids.copy()
    qt[:B, 2:] = pad_id
    ct[:B, 3:] = pad_id
    qt[B:2 * B] = np.where(qt[B:2 * B] == pad_id, 7, qt[B:2 * B])
    ct[B:2 * B] = np.where(ct[B:2 * B] == pad_id, 7, ct[B:2 * B])
    table = TT.TokenTable(qt, ct, pad_id=pad_id)
    world = (model, pad_id, params, dim, table, banks)
    return world, _run(*world, AWARE, 4, BATCHES)


def test_one_device_equals_four_devices_with_dropout(dropout_runs):
    world, (snaps4, metrics4, _, _) = dropout_runs
    snaps1, metrics1, _, _ = _run(*world, AWARE, 1, BATCHES)
    for s in range(3):
        for name in ("loss", "loss_b", "loss_hn", "grad_norm", "valid_negatives"):
            np.testing.assert_allclose(metrics1[s][name], metrics4[s][name], rtol=2e-5, err_msg=name)
    a, b = snaps1[-1], snaps4[-1]
    # Adam (lr 1e-2, eps 1e-6) turns float noise in near-zero gradients into ~1e-5 parameter noise.
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    for name in ("query_bank", "code_bank"):
        np.testing.assert_array_equal(getattr(a, name).ids, getattr(b, name).ids)
        np.testing.assert_allclose(getattr(a, name).embeddings, getattr(b, name).embeddings, rtol=1e-4, atol=2e-6)
    # Our layers draw dropout masks by position, not padded shape: the padded step is the same step.
    _, metrics_padded, _, _ = _run(*world, PADDED, 1, BATCHES[:2])
    for s in range(2):
        for name in ("loss", "loss_b", "loss_hn", "grad_norm"):
            np.testing.assert_allclose(metrics_padded[s][name], metrics1[s][name], rtol=2e-5, err_msg=name)


def test_traced_once_over_length_mixes(dropout_runs):
    _, (_, _, counts, cache_size) = dropout_runs
    assert counts[0] > 0 and counts == [counts[0]] * len(counts), counts
    assert cache_size == 1


def test_batch_rows_gathered_on_device(dropout_runs):
    """Device table: a batch of DataIDs only gives the step of a full batch (rows gathered by DataID)."""
    world, (snaps4, metrics4, _, _) = dropout_runs
    snaps, metrics, _, _ = _run(*world, AWARE, 4, BATCHES[:2], token_rows=False)
    for s in range(2):
        for name, value in metrics[s].items():
            np.testing.assert_array_equal(value, metrics4[s][name], err_msg=name)
    for x, y in zip(jax.tree.leaves(snaps[1]), jax.tree.leaves(snaps4[1])):
        np.testing.assert_array_equal(x, y)


def test_bucket_lengths():
    assert reencode.bucket_lengths((128, 256), 4) == (32, 64, 96, 128, 192, 256)
    assert reencode.bucket_lengths((8, 24), 3) == (8, 16, 24)
    np.testing.assert_array_equal(reencode.row_lengths(jnp.array([[3, 4, 0, 0], [0, 0, 0, 0], [1, 0, 2, 0]]), 0),
                                  [2, 0, 3])


def test_length_aware_on_cpu_only_by_default(monkeypatch):
    """`length_aware_on="cpu"` (the default): the step encodes every row padded to its cap on GPUs and TPUs
    (measured there: the padded step faster), length-aware on CPU; "all" keeps it everywhere; the step applies
    the rule to its mesh's platform."""
    assert AWARE.length_aware_on == "cpu" and AWARE.for_platform("cpu") == AWARE
    assert AWARE.for_platform("gpu") == with_(AWARE, length_buckets=0) == AWARE.for_platform("tpu")
    assert with_(AWARE, length_aware_on="all").for_platform("gpu").length_buckets == 3
    with pytest.raises(ValueError, match="length_aware_on"):
        with_(AWARE, length_aware_on="gpu")
    # The step asks with its mesh's platform and builds its body from the answer: here the platform is
    # reported as a GPU's, and the body's config is the padded one.
    seen, bodies = [], []
    original, shard_map = StepConfig.for_platform, jax.shard_map
    monkeypatch.setattr(StepConfig, "for_platform", lambda self, platform: seen.append(platform) or original(self, "gpu"))
    monkeypatch.setattr(jax, "shard_map", lambda body, **kw: bodies.append(body) or shard_map(body, **kw))
    model = TinyEncoder(vocab_size=VOCAB, hidden=32, dim=16, dropout_rate=0.0)
    S.make_train_step(model, optax.sgd(0.1), AWARE, sharding.make_mesh(jax.devices()[:1]), pad_id=0)
    assert seen == ["cpu"] and [b.keywords["config"].length_buckets for b in bodies] == [0]


PLANNED = with_(AWARE, length_plan="always")


def test_plan_lengths():
    rng = np.random.default_rng(0)
    q_len, c_len = rng.integers(3, 40, size=500), np.minimum(rng.geometric(1 / 60, size=500), 256)
    stats = reencode.LengthStats.from_lengths(q_len, c_len)
    for parts in ([(40, "code", 256), (40, "query", 128)], [(7, "query", 128)], [(300, "code", 256)]):
        plan = reencode.plan_lengths(parts, stats, max_groups=6)
        total = sum(n for n, _, _ in parts)
        assert sum(plan.sizes) == total and plan.lengths[0] <= max(w for _, _, w in parts)
        assert list(plan.lengths) == sorted(plan.lengths, reverse=True) and len(plan.lengths) <= 6
        assert all(n > 0 for n in plan.sizes)
        # Pools drawn from the table: the plan holds (rarely a miss at 3 standard deviations).
        starts = np.cumsum((0,) + plan.sizes[:-1])
        misses = 0
        for _ in range(200):
            lens = np.concatenate([rng.choice(q_len if kind == "query" else c_len, n) for n, kind, _ in parts])
            misses += any(np.sum(lens > t) > b for t, b in zip(plan.lengths, starts))
        assert misses <= 6, (parts, plan, misses)
        # It encodes far less than the padded pool (queries of 3-39 of 128 tokens, codes ~60 of 256).
        padded = sum(n * reencode._row_cost(w) for n, _, w in parts)
        assert plan.cost() < 0.6 * padded, (parts, plan)
    # No row is longer than 16: every row is planned at 16 (nothing can break that plan).
    short = reencode.LengthStats.from_lengths([5] * 10, [16] * 10)
    assert reencode.plan_lengths([(9, "code", 64)], short, max_groups=4) == reencode.LengthPlan((16,), (9,))


def test_plan_margin_chosen_per_pool_by_expected_work():
    """length_plan_margin=None: of the plans at each margin, the least expected work, where a pool that
    breaks its plan costs the padded pool (every row at the width, forward twice); the miss rate is the
    share of random pools the plan does not hold, the same as counted directly."""
    rng = np.random.default_rng(1)
    q_len, c_len = rng.integers(3, 40, size=2000), np.minimum(rng.geometric(1 / 80, size=2000), 256)
    stats = reencode.LengthStats.from_lengths(q_len, c_len)
    spec = [(20, "code", 256), (20, "query", 128)]
    fallback = 40 * reencode._row_cost(256) * 4 / 3
    expected = {}
    for m in reencode.PLAN_MARGINS:
        plan, e = reencode.choose_plan(spec, stats, margin=m, max_groups=6)
        assert plan == reencode.plan_lengths(spec, stats, margin=m, max_groups=6)
        miss = reencode.plan_miss_rate(plan, spec, stats)
        assert e == pytest.approx((1 - miss) * plan.cost() + miss * fallback)
        # The simulated miss rate is the share of drawn pools the plan does not hold.
        starts = np.cumsum((0,) + plan.sizes[:-1])
        direct = np.mean([any(np.sum(lens > t) > b for t, b in zip(plan.lengths, starts)) for lens in (
            np.concatenate([rng.choice(c_len, 20), rng.choice(q_len, 20)]) for _ in range(1000))])
        assert abs(direct - miss) < 0.03 + 0.2 * miss, (m, direct, miss)
        expected[m] = e
    plan, e = reencode.choose_plan(spec, stats, margin=None, max_groups=6)
    assert e == min(expected.values()) and plan == reencode.choose_plan(spec, stats, margin=None, max_groups=6)[0]
    # Tighter plans miss more often: at one standard deviation some pools break it, at three hardly any.
    tight, loose = (reencode.plan_lengths(spec, stats, margin=m, max_groups=6) for m in (1.0, 3.0))
    assert reencode.plan_miss_rate(tight, spec, stats) > 5 * reencode.plan_miss_rate(loose, spec, stats)
    assert tight.cost() < loose.cost()
    assert StepConfig(length_plan_margin=None).length_plan_margin is None
    with pytest.raises(ValueError, match="length_plan_margin"):
        StepConfig(length_plan_margin=-1.0)


def test_plans_for_neighbour_pools_hold_runs_of_alike_rows():
    """A pool of k neighbours per anchor (cluster k, length correlation rho): the plan holds the count of
    long rows with its variance times 1 + (k - 1) rho, and the simulated pools have that variance; rho 0 is
    the plan for independent rows, larger rho plans looser."""
    rng = np.random.default_rng(2)
    q_len, c_len = rng.integers(3, 40, size=2000), np.minimum(rng.geometric(1 / 80, size=2000), 256)
    stats = reencode.LengthStats.from_lengths(q_len, c_len)
    independent = [(80, "code", 256), (80, "query", 128)]
    plans = {rho: reencode.plan_lengths([p + (10, rho) for p in independent], stats, max_groups=6)
             for rho in (0.0, 0.25, 1.0)}
    assert plans[0.0] == reencode.plan_lengths(independent, stats, max_groups=6)
    assert plans[0.0].cost() < plans[0.25].cost() < plans[1.0].cost()
    # Pools of runs of 10 alike rows, drawn as the step's neighbours would come: the independent plan breaks
    # on far more of them than the plan that expects the runs.
    for rho in (0.25, 1.0):
        spec = [p + (10, rho) for p in independent]
        pools = reencode._sample_pools(spec, stats, 4000)
        base = reencode._sample_pools(independent, stats, 4000)
        t = 100  # codes longer than 100 tokens among the 80 codes: variance ratio 1 + 9 rho
        ratio = np.var((pools[:, :80] > t).sum(1)) / np.var((base[:, :80] > t).sum(1))
        assert ratio == pytest.approx(1 + 9 * rho, rel=0.2), (rho, ratio)
        assert np.mean(reencode.plan_breaks(plans[0.0], pools)) > 3 * np.mean(reencode.plan_breaks(plans[rho], pools))
    # The worst case: every run of one length.
    runs = reencode._sample_pools([(30, "code", 256, 10, 1.0)], stats, 50)
    assert (runs.reshape(50, 3, 10) == runs.reshape(50, 3, 10)[:, :, :1]).all()
    with pytest.raises(ValueError, match="correlation"):
        reencode.plan_lengths([(8, "code", 256, 4, 1.5)], stats)
    with pytest.raises(ValueError, match="cluster"):
        reencode.plan_lengths([(8, "code", 256, 0, 0.5)], stats)
    # The price of a miss (choose_plan's fallback=) moves the margin chosen: free misses take the tightest
    # plan, dear ones the loosest.
    spec = [p + (10, 0.25) for p in independent]
    cheap = reencode.choose_plan(spec, stats, margin=None, max_groups=6, fallback=0.0)[0]
    dear = reencode.choose_plan(spec, stats, margin=None, max_groups=6, fallback=1e12)[0]
    assert cheap == reencode.plan_lengths(spec, stats, margin=min(reencode.PLAN_MARGINS), max_groups=6)
    assert dear == reencode.plan_lengths(spec, stats, margin=max(reencode.PLAN_MARGINS), max_groups=6)
    assert StepConfig().length_plan_correlation == 0.25
    with pytest.raises(ValueError, match="length_plan_correlation"):
        StepConfig(length_plan_correlation=-0.1)


@pytest.mark.parametrize("plan,fallback", [
    (reencode.LengthPlan((24, 16, 8), (9, 8, 6)), None), (reencode.LengthPlan((24, 8), (2, 21)), None),
    (reencode.LengthPlan((24, 8), (2, 21)), (8, 16)),
])
def test_planned_rows_equal_padded_rows_and_vjp(plan, fallback):
    """encode_rows_planned = encode_rows (deterministic, a T5 with rows past its relative max distance),
    value and VJP, with a plan that holds the rows and one that does not (the fallback: padded, or the
    bucketed chunks with ``fallback_buckets``)."""
    model, pad_id, params, _, table, _ = setup("t5", "mixed")
    apply_fn = reencode.as_apply_fn(model)
    rows = jnp.asarray(table.code_ids[:23])
    keys = reencode.row_keys(jax.random.key_data(jax.random.key(3)), 2, jnp.arange(23))
    weights = jnp.asarray(np.random.default_rng(0).normal(size=(23, 8)), jnp.float32)
    lengths = np.asarray(reencode.row_lengths(rows, pad_id))
    bounds = np.cumsum(plan.sizes)
    holds = all(np.sum(lengths > t) <= b for t, b in zip(plan.lengths[1:], bounds[:-1]))
    assert fallback is None or not holds  # the bucketed fallback case must run the fallback

    @functools.partial(jax.jit, static_argnums=(1,), compiler_options=FAST)
    def vg(p, planned):
        def f(p):
            if planned:
                e, missed = reencode.encode_rows_planned(apply_fn, p, rows, keys, pad_id=pad_id, plan=plan,
                                                         deterministic=True, fallback_chunk=5,
                                                         fallback_buckets=fallback)
            else:
                e, missed = reencode.encode_rows(apply_fn, p, rows, keys, pad_id=pad_id, deterministic=True), 0
            return jnp.sum(e * weights), (e, missed)
        return jax.value_and_grad(f, has_aux=True)(p)

    (_, (e0, _)), g0 = vg(params, False)
    (_, (e1, missed)), g1 = vg(params, True)
    assert int(missed) == (0 if holds else 1)
    np.testing.assert_allclose(e1, e0, rtol=1e-5, atol=1e-6)
    scale = float(optax.tree.norm(g0))
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("model_name,mix,dedup,broken", [
    ("t5", "mixed", False, False), ("tiny", "cap", True, False), ("roberta", "short", False, False),
    ("t5", "mixed", True, True),
])
def test_plans_give_the_padded_loss_and_gradients(model_name, mix, dedup, broken):
    """The step's pools along length plans (from the table's histogram, or, ``broken``, from a histogram
    of short rows that the real rows break: the fallback, the bucketed chunks) = the padded step, without
    dropout."""
    model, pad_id, params, dim, table, banks = setup(model_name, mix)
    qbank, cbank = jax.tree.map(jnp.asarray, banks)
    batch = table.batch(np.arange(B, dtype=np.int32))
    view = jax.tree.map(jnp.asarray, table.device_view())
    key = jax.random.key_data(jax.random.key(7))
    stats = (reencode.LengthStats.from_lengths([1] * 50 + [LQ], [2] * 50 + [LC]) if broken
             else reencode.LengthStats.from_table(table))

    @functools.partial(jax.jit, static_argnums=(0, 1), compiler_options=FAST)
    def grad(config, stats, p):
        f = functools.partial(objective_lib.loss_and_aux, apply_fn=reencode.as_apply_fn(model), config=config,
                              pad_id=pad_id, length_stats=stats)
        return jax.value_and_grad(f, has_aux=True)(p, qbank, cbank, batch, view, key)

    (l0, a0), g0 = grad(with_(PADDED, dedup_negatives=dedup), None, params)
    # The roberta case with each pool's margin chosen by its expected work (length_plan_margin=None).
    margin = None if model_name == "roberta" else 3.0
    (l1, a1), g1 = grad(with_(PLANNED, dedup_negatives=dedup, length_plan_margin=margin), stats, params)
    assert int(a0.valid_negatives) > 0
    if broken:  # both pools (the batch, the negatives) had more long rows than the plan's room
        assert int(a1.plan_misses) == 2
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    for name in ("q", "c", "c_neg", "q_neg"):
        np.testing.assert_allclose(getattr(a1, name), getattr(a0, name), rtol=1e-5, atol=2e-6, err_msg=name)
    scale = float(optax.tree.norm(g0))
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * scale)


def test_plans_one_device_equals_four_devices_with_dropout(dropout_runs):
    """Length plans, dropout on: 1 and 4 devices (local pools of 8 and 2 anchors: different plans) give the
    steps of the bucketed chunks, compiled once over short, capped and mixed batches."""
    world, (snaps_chunks, metrics_chunks, _, _) = dropout_runs
    stats = reencode.LengthStats.from_table(world[4])
    # A histogram of short rows that every batch breaks: each pool runs the fallback (the chunks), counted.
    short = reencode.LengthStats.from_lengths([1] * 50 + [LQ], [2] * 50 + [LC])
    for devices, stats in ((1, stats), (4, stats), (4, short)):
        snaps, metrics, counts, cache_size = _run(*world, PLANNED, devices, BATCHES, length_stats=stats)
        assert cache_size == 1 and counts == [counts[0]] * len(counts)
        for s in range(3):
            for name in ("loss", "loss_b", "loss_hn", "grad_norm", "valid_negatives"):
                np.testing.assert_allclose(metrics[s][name], metrics_chunks[s][name], rtol=2e-5, err_msg=name)
        for x, y in zip(jax.tree.leaves(snaps[-1].params), jax.tree.leaves(snaps_chunks[-1].params)):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
        misses = [float(m["length_plan_misses"]) for m in metrics]
        assert all(0 <= x <= 2 * devices for x in misses), misses  # two pools per device and step
        if stats is short:
            assert sum(misses) > 0, misses


PACKED = with_(AWARE, length_pack=True)
KEPT = with_(PACKED, length_pack_keep=True)  # with the table's histogram: the fullest packed rows kept


def _first_fit_decreasing(lengths, width):
    """Plain numpy first-fit decreasing: (bin, slot, offset) per row."""
    fills, counts, out = [], [], {}
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # stable: ties in row order
        b = next((j for j, f in enumerate(fills) if f + lengths[i] <= width), len(fills))
        if b == len(fills):
            fills.append(0)
            counts.append(0)
        counts[b] += 1
        out[i] = (b, counts[b], fills[b])
        fills[b] += lengths[i]
    return [out[i] for i in range(len(lengths))], fills


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pack_rows_is_first_fit_decreasing(seed):
    rng = np.random.default_rng(seed)
    width = 24
    lengths = rng.integers(1, width + 1, size=int(rng.integers(5, 40)))
    if seed == 2:
        lengths[:] = rng.integers(1, 4, size=lengths.size)  # many rows per bin
    b, slot, offset, fill = map(np.asarray, jax.jit(reencode.pack_rows, static_argnums=1)(jnp.asarray(lengths), width))
    expected, fills = _first_fit_decreasing(list(lengths), width)
    assert [tuple(x) for x in zip(b, slot, offset)] == expected
    np.testing.assert_array_equal(fill[: len(fills)], fills)
    assert not fill[len(fills):].any()
    # No two rows overlap, and each lies within its bin.
    taken = np.zeros((lengths.size, width), int)
    for i, n in enumerate(lengths):
        taken[b[i], offset[i]: offset[i] + n] += 1
    assert taken.max() == 1 and (offset + lengths <= width).all()


@pytest.mark.parametrize("model_name,variant", [("t5", "unrolled"), ("roberta", "unrolled"), ("t5", "scanned")])
def test_packed_rows_equal_padded_rows_and_vjp(model_name, variant):
    """encode_rows_packed = encode_rows without dropout (values and VJP, chunks of 2 and of all rows; the
    scanned variant also keeps attention probabilities through `layers.attention_core`, and remats its
    blocks); with dropout a row's embedding does not depend on the rows packed beside it."""
    import dataclasses

    model, pad_id, params, _, table, _ = setup(model_name, "mixed", rate=0.2)
    if variant == "scanned":
        model = model.clone(config=dataclasses.replace(model.config, attention_probs="float32"), scan_layers=True,
                            remat=True)
        params = model.init(jax.random.key(0), jnp.full((2, 8), 2), jnp.ones((2, 8), jnp.int32))["params"]
    apply_fn = reencode.as_apply_fn(model)
    rows = np.asarray(table.code_ids[:13]).copy()
    rows[0, :] = np.where(rows[0] == pad_id, 5, rows[0])  # one row at the cap
    rows[1, 1:] = pad_id  # one of a single token
    rows = jnp.asarray(rows)
    keys = reencode.row_keys(jax.random.key_data(jax.random.key(3)), 2, jnp.arange(13))
    weights = jnp.asarray(np.random.default_rng(0).normal(size=(13, 8 if model_name == "t5" else 16)), jnp.float32)

    @functools.partial(jax.jit, static_argnums=(1, 2, 3, 4), compiler_options=FAST)
    def vg(p, chunk, deterministic, start=0, keep=0):
        def f(p):
            if chunk is None:
                e = reencode.encode_rows(apply_fn, p, rows, keys, pad_id=pad_id, deterministic=deterministic)
            else:
                e = reencode.encode_rows_packed(apply_fn.packed, p, rows[start:], keys[start:], pad_id=pad_id,
                                                buckets=(8, 16), chunk=chunk, deterministic=deterministic, keep=keep)
            return jnp.sum(e * weights[start:]), e
        return jax.value_and_grad(f, has_aux=True)(p)

    (_, e0), g0 = vg(params, None, True)
    scale = float(optax.tree.norm(g0))
    # Chunks of 2 and of all rows; the 4 fullest packed rows kept as one batch, the rest in chunks of 2;
    # every packed row kept (no chunks).
    for chunk, keep in ((2, 0), (13, 0), (2, 4), (2, 13)):
        (_, e1), g1 = vg(params, chunk, True, 0, keep)
        np.testing.assert_allclose(e1, e0, rtol=1e-5, atol=1e-6)
        for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * scale)
    (_, d_all), _ = vg(params, 2, False)
    (_, d_some), _ = vg(params, 3, False, 4)
    (_, d_kept), _ = vg(params, 3, False, 4, 2)
    np.testing.assert_allclose(d_some, d_all[4:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d_kept, d_all[4:], rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(d_all - e0))) > 1e-2  # dropout did something


@pytest.mark.parametrize("model_name,mix,dedup", [
    ("t5", "mixed", False), ("t5", "cap", True), ("roberta", "short", True), ("roberta", "mixed", False),
])
def test_packed_step_gives_the_padded_loss_and_gradients(model_name, mix, dedup):
    _assert_padded_loss_and_gradients(model_name, mix, dedup, PACKED)


@pytest.mark.parametrize("model_name,mix", [("t5", "mixed"), ("roberta", "cap")])
def test_packed_step_with_kept_rows_gives_the_padded_loss_and_gradients(model_name, mix):
    """With the table's histogram the step keeps its pools' fullest packed rows (`choose_packed_keep`
    chooses some here) and still gives the padded step's loss and gradients."""
    _, pad_id, _, _, table, _ = setup(model_name, mix)
    stats = reencode.LengthStats.from_table(table)
    spec = [(B * K, "query", LQ, K, PACKED.length_plan_correlation), (B * K, "code", LC, K, PACKED.length_plan_correlation)]
    assert 0 < reencode.choose_packed_keep(spec, stats, reencode.bucket_lengths((LQ, LC), 3), PACKED.length_chunk) < 2 * B * K
    _assert_padded_loss_and_gradients(model_name, mix, True, KEPT, with_stats=True)


def test_choose_packed_keep():
    """The host simulation packs as `pack_rows` does; pools of rows at the width keep every packed row (a
    chunk would cost a second forward), pools of one-token rows the packed rows they fill, and pools in
    between some of their rows."""
    rng = np.random.default_rng(0)
    pools = rng.integers(1, 25, size=(5, 30))
    fills = reencode.packed_fills(pools, 24)
    for pool, f in zip(pools, fills):
        expected = np.sort(_first_fit_decreasing(list(pool), 24)[1])[::-1]
        np.testing.assert_array_equal(f[: len(expected)], expected)
        assert not f[len(expected):].any()
    lens = reencode.bucket_lengths((LQ, LC), 3)
    at_cap = reencode.LengthStats.from_lengths(np.full(100, LQ), np.full(100, LC))
    ones = reencode.LengthStats.from_lengths(np.ones(100), np.ones(100))
    spec = [(20, "query", LQ), (20, "code", LC)]
    assert reencode.choose_packed_keep([(40, "code", LC)], at_cap, lens, 4) == 40
    assert reencode.choose_packed_keep(spec, ones, lens, 4) == 2  # 40 one-token rows fill 2 rows of 24
    mixed = reencode.LengthStats.from_lengths(rng.integers(1, LQ + 1, 200), rng.integers(1, LC + 1, 200))
    assert 0 < reencode.choose_packed_keep(spec, mixed, lens, 4) < 40


def test_packed_one_device_equals_four_devices_with_dropout(dropout_runs):
    """Packed rows, dropout on: 1 and 4 devices (local pools of 8 and 2 anchors, packed differently) give
    the same steps and banks, compiled once over short, capped and mixed batches; with the table's
    histogram, so each pool's fullest packed rows are kept as one batch and the rest run in chunks."""
    world, _ = dropout_runs
    stats = reencode.LengthStats.from_table(world[4])
    runs = {d: _run(*world, KEPT, d, BATCHES, length_stats=stats) for d in (1, 4)}
    for snaps, metrics, counts, cache_size in runs.values():
        assert cache_size == 1 and counts[0] > 0 and counts == [counts[0]] * len(counts), counts
    (snaps1, metrics1, _, _), (snaps4, metrics4, _, _) = runs[1], runs[4]
    for s in range(3):
        for name in ("loss", "loss_b", "loss_hn", "grad_norm", "valid_negatives"):
            np.testing.assert_allclose(metrics1[s][name], metrics4[s][name], rtol=2e-5, err_msg=name)
    for x, y in zip(jax.tree.leaves(snaps1[-1].params), jax.tree.leaves(snaps4[-1].params)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    for name in ("query_bank", "code_bank"):
        np.testing.assert_array_equal(getattr(snaps1[-1], name).ids, getattr(snaps4[-1], name).ids)
        np.testing.assert_allclose(getattr(snaps1[-1], name).embeddings, getattr(snaps4[-1], name).embeddings,
                                   rtol=1e-4, atol=2e-6)


def test_packing_needs_an_encoder_that_packs():
    model, pad_id, params, dim, table, banks = setup("tiny", "mixed")
    with pytest.raises(ValueError, match="step.length_pack=True needs an encoder that takes packed rows"):
        _run(model, pad_id, params, dim, table, banks, PACKED, 1, BATCHES[:1])
