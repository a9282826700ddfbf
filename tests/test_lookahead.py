"""Look-ahead neighbour batches (train.lookahead_batches): the grouping, the iterator's exact resume, the job."""

import os

import jax
import numpy as np
import pytest

from cocohanere_jax import input_pipeline, metrics, train
from cocohanere_jax.input_pipeline import BatchIterator, LookaheadBatches, language_batches, neighbour_groups

import tiny_setup
from test_train import _batches, _poison_data_id, _run_killed_before_batch, _saved_state, smoke_config


def _clusters(rng, n_clusters, size, dim=8):
    centres = rng.normal(size=(n_clusters, dim)) * 10
    label = np.repeat(np.arange(n_clusters), size)
    perm = rng.permutation(len(label))
    return centres[label[perm]] + rng.normal(size=(len(label), dim)) * 0.1, label[perm]


def test_groups_recover_clusters():
    rng = np.random.default_rng(0)
    emb, label = _clusters(rng, 6, 4)
    order, stats = neighbour_groups(emb, 4)
    assert sorted(order.tolist()) == list(range(24))
    for g in order.reshape(-1, 4):
        assert len(set(label[g])) == 1  # each group is one cluster
    assert stats["lookahead_fallback"] == 0 and stats["lookahead_score"] > 0.99


def _greedy_reference(emb, g, groups=None, keys=()):
    """The grouping written plainly: anchors in order, each takes its g - 1 most similar free rows."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    free, order = list(range(len(e))), []
    while free:
        a = free.pop(0)
        ok = [i for i in free if (groups is None or groups[i] == groups[a]) and all(k[i] != k[a] for k in keys)]
        picked = sorted(ok, key=lambda i: -float(e[a] @ e[i]))[:g - 1]
        rest = sorted((i for i in free if i not in picked), key=lambda i: -float(e[a] @ e[i]))
        picked += rest[:g - 1 - len(picked)]
        order += [a, *picked]
        free = [i for i in free if i not in picked]
    return order


@pytest.mark.parametrize("g", [1, 2, 4])
def test_groups_match_plain_greedy_with_languages_and_duplicates(g):
    rng = np.random.default_rng(g)
    emb = rng.normal(size=(32, 5))
    groups = rng.integers(0, 3, 32)
    keys = [rng.integers(0, 10, 32)]  # shared hashes: never neighbours
    order, stats = neighbour_groups(emb, g, groups, keys)
    assert order.tolist() == _greedy_reference(emb, g, groups, keys)
    if g > 1:
        # A neighbour shares its anchor's language and no hash with it, except the counted fallbacks.
        grouped = order.reshape(-1, g)
        off = sum(groups[i] != groups[a] or keys[0][i] == keys[0][a] for a, *rest in grouped for i in rest)
        assert off == round(stats["lookahead_fallback"] * (32 - 32 // g))


def test_group_size_must_divide_the_window():
    with pytest.raises(ValueError, match="groups of 3"):
        neighbour_groups(np.ones((8, 2)), 3)
    with pytest.raises(ValueError, match="lookahead_group=3 must divide"):
        LookaheadBatches(BatchIterator(40, 8, 0), 2, 3, embed=lambda ids: None)


def _embed(table):
    return lambda ids: table[ids]


def test_each_pair_once_per_epoch_in_the_same_windows():
    n, b, w = 50, 8, 2  # 6 batches per epoch: windows of 2, 2, 2; 2 rows dropped per epoch
    table = np.random.default_rng(0).normal(size=(n, 4))
    plain = BatchIterator(n, b, seed=3)
    look = LookaheadBatches(BatchIterator(n, b, seed=3), w, 4, _embed(table))
    for _ in range(2):  # two epochs
        for _ in range(plain.steps_per_epoch // w):
            window_plain = np.concatenate([next(plain) for _ in range(w)])
            window_look = np.concatenate([next(look) for _ in range(w)])
            assert sorted(window_plain) == sorted(window_look)
            assert not np.array_equal(window_plain, window_look)  # regrouped
    assert look.stats["lookahead_score"] > -1


def test_state_restore_continues_the_window_whatever_the_model_is_now():
    n, b = 64, 8
    table = np.random.default_rng(1).normal(size=(n, 4))
    it = LookaheadBatches(BatchIterator(n, b, seed=0), 4, 2, _embed(table))
    plain = BatchIterator(n, b, seed=0)
    for _ in range(5):  # mid-way through the second window
        assert {k: it.state()[k] for k in ("epoch", "position")} == {k: plain.state()[k] for k in ("epoch", "position")}
        next(it), next(plain)
    saved = it.state()
    assert (saved["epoch"], saved["position"]) == (plain.epoch, plain.position)
    expected = [next(it) for _ in range(7)]
    other = np.random.default_rng(2).normal(size=(n, 4))  # the model has moved on: the windows ahead differ
    resumed = LookaheadBatches(BatchIterator(n, b, seed=0), 4, 2, _embed(other))
    resumed.restore(saved)
    got = [next(resumed) for _ in range(7)]
    for x, y in zip(expected[:3], got[:3]):  # the rest of the saved window: the same batches
        np.testing.assert_array_equal(x, y)
    # The next window: the same pairs, grouped by the model of now.
    assert sorted(np.concatenate(expected[3:])) == sorted(np.concatenate(got[3:]))
    with pytest.raises(ValueError, match=r"look-ahead \(window batches, group\) = \[4, 2\]"):
        LookaheadBatches(BatchIterator(n, b, seed=0), 2, 2, _embed(table)).restore(saved)
    with pytest.raises(ValueError, match="lookahead_batches=4"):
        BatchIterator(n, b, seed=0).restore(saved)
    with pytest.raises(ValueError, match="without config.train.lookahead_batches"):
        LookaheadBatches(BatchIterator(n, b, seed=0), 4, 2, _embed(table)).restore(BatchIterator(n, b, 0).state())


def test_processes_slice_the_same_global_batches():
    n, b = 64, 8
    table = np.random.default_rng(1).normal(size=(n, 4))
    one = LookaheadBatches(BatchIterator(n, b, seed=0), 4, 4, _embed(table))
    two = [LookaheadBatches(BatchIterator(n, b, seed=0, process_index=p, process_count=2), 4, 4, _embed(table))
           for p in range(2)]
    for _ in range(6):
        np.testing.assert_array_equal(next(one), np.concatenate([next(t) for t in two]))


@pytest.mark.parametrize("group", [1, 4])
def test_language_batches_keep_groups_whole_and_mix_only_at_language_boundaries(group):
    rng = np.random.default_rng(group)
    w, b = 24 * 8, 8
    # A grouped window: groups of `group` rows, each group one language (as neighbour_groups lays it out).
    langs = np.repeat(rng.choice(4, size=w // group, p=[.5, .3, .15, .05]), group)
    order, stats = language_batches(langs, group, b)
    assert sorted(order.tolist()) == list(range(w))
    if group > 1:  # each group's rows stay together, in their order
        starts = order.reshape(-1, group)
        assert np.all(starts[:, 0] % group == 0) and np.all(starts == starts[:, :1] + np.arange(group))
    batches = langs[order].reshape(-1, b)
    mixed = sum(len(set(x.tolist())) > 1 for x in batches)
    assert mixed <= len(set(langs.tolist())) - 1  # one at most per boundary between languages
    assert stats["language_batches_mixed"] == mixed / len(batches)
    # Plainly: a language's rows, cut into batches, are whole batches but for one boundary batch.
    for lang in set(langs.tolist()):
        pure = sum(np.all(x == lang) for x in batches)
        assert pure == np.sum(langs == lang) // b or pure == np.sum(langs == lang) // b - 1
    # Spread over the window: the majority language is not all at the start.
    first = batches[:, 0]
    major = np.flatnonzero(first == 0)
    assert major.min() < len(batches) // 4 and major.max() > 3 * len(batches) // 4


def test_language_batches_need_whole_batches_of_groups():
    with pytest.raises(ValueError, match="groups of 3"):
        language_batches(np.zeros(24, int), 3, 8)


def test_language_batches_iterator_embeds_nothing_for_groups_of_one_and_resumes_exactly():
    n, b, w = 200, 8, 4
    langs = np.random.default_rng(0).integers(0, 3, n)

    def no_embed(ids):
        raise AssertionError("groups of 1 embed nothing")

    plain = BatchIterator(n, b, seed=1)
    it = LookaheadBatches(BatchIterator(n, b, seed=1), w, 1, no_embed, languages=langs)
    for _ in range(plain.steps_per_epoch // w):
        window_plain = np.concatenate([next(plain) for _ in range(w)])
        window = [next(it) for _ in range(w)]
        assert sorted(window_plain) == sorted(np.concatenate(window))  # the same pairs, once each
        assert sum(len(set(langs[x].tolist())) > 1 for x in window) == round(it.stats["language_batches_mixed"] * w)
    it = LookaheadBatches(BatchIterator(n, b, seed=1), w, 1, no_embed, languages=langs)
    for _ in range(6):
        next(it)
    saved = it.state()
    expected = [next(it) for _ in range(5)]
    resumed = LookaheadBatches(BatchIterator(n, b, seed=1), w, 1, no_embed, languages=langs)
    resumed.restore(saved)
    for x, y in zip(expected, [next(resumed) for _ in range(5)]):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="language_batches=True, this run has False"):
        LookaheadBatches(BatchIterator(n, b, seed=1), w, 1, no_embed).restore(saved)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("inputs")
    return tiny_setup.tiny_bert_folder(str(base / "model")), tiny_setup.csn_dir(str(base / "csn"))


def test_job_regroups_and_a_kill_mid_window_resumes_exactly(inputs, tmp_path, monkeypatch):
    c = smoke_config(inputs, checkpoint_every=2, eval_every=100, lookahead_batches=3, lookahead_group=2)
    c.step.bimodal_weight, c.step.hard_negative_weight = 1.0, 0.0  # the in-batch step it is meant for
    seen = []
    real = input_pipeline.LookaheadBatches._fill

    def recording_fill(self):
        real(self)
        seen.append(self.window.copy())

    with monkeypatch.context() as m:
        m.setattr(input_pipeline.LookaheadBatches, "_fill", recording_fill)
        full = str(tmp_path / "full")
        summary = train.train_and_evaluate(c, full)
    assert len(seen) == 2  # 6 steps = two windows of 3 batches
    plain = BatchIterator(summary["train_pairs"], 8, c.train.seed)
    for window in seen:  # the iterator's pairs, regrouped
        ids = np.concatenate([next(plain) for _ in range(3)])
        assert sorted(ids) == sorted(window) and not np.array_equal(ids, window)
    records = metrics.read_metrics(full, "train")
    assert all("lookahead_score" in r for r in records)

    resumed = str(tmp_path / "resumed")
    _run_killed_before_batch(c, resumed, monkeypatch, 6)  # checkpoint 4 lies inside the second window
    assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["2", "4"]
    train.train_and_evaluate(c, resumed)
    for x, y in zip(jax.tree.leaves(_saved_state(full, 6)), jax.tree.leaves(_saved_state(resumed, 6))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_nonfinite_rollback_skips_the_regrouped_batch(inputs, tmp_path, monkeypatch):
    """A rollback restores the checkpoint's window and skips the batch (as regrouped) whose step went NaN."""
    c = smoke_config(inputs, checkpoint_every=2, eval_every=100, on_nonfinite="rollback", lookahead_batches=3,
                     lookahead_group=2)
    c.step.bimodal_weight, c.step.hard_negative_weight = 1.0, 0.0
    window = np.concatenate(_batches(c, 6)[3:])  # the second window's pairs (steps 4-6), in iterator order
    bad = int(window[0])
    made = _poison_data_id(monkeypatch, bad)
    summary = train.train_and_evaluate(c, str(tmp_path))
    assert made[0].poisoned_calls == 1 and summary["rollbacks"] == 1
    (skipped,) = summary["skipped_batches"]
    assert bad in skipped["data_ids"] and set(skipped["data_ids"]) <= set(window.tolist())
    assert skipped["epoch"] == 0 and skipped["position"] == skipped["step"] - 1 and skipped["step"] in (4, 5, 6)
    state = _saved_state(str(tmp_path), 6)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


def test_language_batches_in_a_one_language_job_keep_the_iterators_order(caplog):
    """configs/repo.py sets train.language_batches whatever languages the tree has: with one, nothing is laid out
    (the iterator's order; said in the log), with several, each DataID's language is what lays the window out."""
    import logging
    import types

    import ml_collections

    c = ml_collections.ConfigDict({"train": {"language_batches": True}})
    with caplog.at_level(logging.INFO):
        assert train._languages(c, types.SimpleNamespace(groups=None)) is None
    assert "one language" in caplog.text
    groups = np.array([0, 1, 1, 0], np.int32)
    assert train._languages(c, types.SimpleNamespace(groups=groups)) is groups
    c.train.language_batches = False
    assert train._languages(c, types.SimpleNamespace(groups=groups)) is None


def test_config_errors(inputs, tmp_path):
    c = smoke_config(inputs, lookahead_batches=2, lookahead_group=3)
    with pytest.raises(ValueError, match=r"config\.train\.lookahead_group=3 must divide"):
        train.train_and_evaluate(c, str(tmp_path))
    c = smoke_config(inputs, lookahead_batches=-1)
    with pytest.raises(ValueError, match=r"config\.train\.lookahead_batches=-1"):
        train.train_and_evaluate(c, str(tmp_path))
    c = smoke_config(inputs, language_batches=True)
    with pytest.raises(ValueError, match=r"config\.train\.language_batches=True draws .*lookahead_batches"):
        train.train_and_evaluate(c, str(tmp_path))

