"""Code-to-code tasks in the job: the label table as the step's false-negative mask (checked against a
numpy brute force), and smoke runs of configs/poj104.py and configs/bigclonebench.py on data written in
their published formats from real standard-library functions (label = module)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cocohanere_jax import bank as bank_lib
from cocohanere_jax import clone_tasks, datasets, objective, reencode, train
from cocohanere_jax.step_config import StepConfig
from cocohanere_jax.token_table import TokenTable

import tiny_setup
from tiny_models import PAD_ID, TinyEncoder, init_params, numpy_search, token_table


def _programs():
    """(module, code) of real stdlib functions, modules with at least 3 functions."""
    by_module = {}
    for _, code, _, mod in tiny_setup.stdlib_pairs():
        by_module.setdefault(mod, []).append(" ".join(code))
    return {m: codes[:6] for m, codes in by_module.items() if len(codes) >= 3}


def write_poj104(root):
    """POJ-104's CodeXGLUE layout: {train,valid,test}.jsonl rows {"label", "index", "code"}, split by label."""
    mods = sorted(_programs())
    splits = {"valid": mods[:2], "test": mods[2:4], "train": mods[4:]}
    os.makedirs(root, exist_ok=True)
    index = 0
    for split, names in splits.items():
        with open(os.path.join(root, f"{split}.jsonl"), "w", encoding="utf-8") as f:
            for label, mod in enumerate(names):
                for code in _programs()[mod]:
                    f.write(json.dumps({"label": str(mods.index(mod) + 1), "index": str(index), "code": code}) + "\n")
                    index += 1
    return root


def write_bigclonebench(root):
    """BigCloneBench's CodeXGLUE layout: data.jsonl {"func", "idx"} and {split}.txt "idx1<TAB>idx2<TAB>label";
    same-module pairs are the clones."""
    programs = _programs()
    mods = sorted(programs)
    os.makedirs(root, exist_ok=True)
    idx, of = {}, {}
    with open(os.path.join(root, "data.jsonl"), "w", encoding="utf-8") as f:
        for mod in mods:
            for code in programs[mod]:
                key = str(1000 + len(idx))
                idx[key], of[key] = code, mod
                f.write(json.dumps({"func": code, "idx": key}) + "\n")
    keys = sorted(idx)
    splits = {"valid": mods[:2], "test": mods[2:4], "train": mods[4:]}
    for split, names in splits.items():
        members = [k for k in keys if of[k] in names]
        with open(os.path.join(root, f"{split}.txt"), "w", encoding="utf-8") as f:
            for i, a in enumerate(members):
                for b in members[i + 1:]:
                    f.write(f"{a}\t{b}\t{int(of[a] == of[b])}\n")
    return root


def test_label_table_masks_same_label_candidates_in_banks_and_batch():
    """With the labels as the duplicate table, no valid hard negative shares its anchor's label (numpy brute
    force over the same bank), and the in-batch loss leaves same-label pairs out of the denominator."""
    n_items, lq, lc, vocab, dim, k, m = 40, 6, 8, 30, 16, 4, 24
    labels = (np.arange(n_items) % 7).astype(np.int32)
    qt, ct = token_table(n_items, lq, lc, vocab)
    model = TinyEncoder(vocab_size=vocab, hidden=32, dim=dim, dropout_rate=0.0)
    params = init_params(model)
    table = TokenTable(qt, ct, query_hash=labels, pad_id=PAD_ID).device_view()
    encode = jax.jit(lambda ids: model.apply({"params": params}, ids, ids != PAD_ID))
    bank_ids = np.arange(10, 10 + m, dtype=np.int32)
    qb = bank_lib.push(bank_lib.init_bank(m, dim), encode(qt[bank_ids]), jnp.asarray(bank_ids))
    cb = bank_lib.push(bank_lib.init_bank(m, dim), encode(ct[bank_ids]), jnp.asarray(bank_ids))
    ids = np.arange(8, dtype=np.int32)
    batch = {"data_id": ids, "query_ids": qt[ids], "code_ids": ct[ids]}
    config = StepConfig(k=k, bank_size=m, mask_duplicates=True, mask_in_batch=False)
    f = jax.jit(lambda b, t: objective.loss_and_aux(params, qb, cb, b, t, jax.random.key(0),
                                                    apply_fn=reencode.as_apply_fn(model), config=config, pad_id=PAD_ID))
    _, aux = f(batch, table)
    for hits, bank, keys in ((aux.code_hits, cb, aux.q), (aux.query_hits, qb, aux.c)):
        keep = labels[bank_ids][None, :] != labels[ids][:, None]
        _, want_ids, _, want_valid = numpy_search(bank.embeddings, bank.ids, keys, ids, k, keep)
        np.testing.assert_array_equal(np.asarray(hits.valid), want_valid)
        np.testing.assert_array_equal(np.where(want_valid, np.asarray(hits.ids), -1), want_ids)
        got = np.asarray(hits.ids)[np.asarray(hits.valid)]
        anchors = np.repeat(ids, k).reshape(-1, k)[np.asarray(hits.valid)]
        assert got.size and (labels[got] != labels[anchors]).all()
    # In-batch: rows 0 and 7 share label 0; the loss of row 0 must not count code 7 as a negative.
    q, c = np.asarray(aux.q, np.float64), np.asarray(aux.c, np.float64)
    logits = q @ c.T / config.temperature
    allowed = (labels[ids][:, None] != labels[ids][None, :]) | np.eye(len(ids), dtype=bool)
    rows_q = [np.log(np.sum(np.exp(logits[i][allowed[i]]))) - logits[i, i] for i in range(len(ids))]
    logits_c = c @ q.T / config.temperature
    rows_c = [np.log(np.sum(np.exp(logits_c[i][allowed[i]]))) - logits_c[i, i] for i in range(len(ids))]
    np.testing.assert_allclose(float(aux.loss_b_sum), 0.5 * (np.sum(rows_q) + np.sum(rows_c)), rtol=1e-5)
    assert not allowed[0, 7]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return tiny_setup.tiny_bert_folder(str(tmp_path_factory.mktemp("model")))


def test_poj104_smoke_run_selects_on_map_at_r(tiny_model, tmp_path):
    from configs import poj104

    c = poj104.get_config("smoke")
    c.data.root, c.model.path, c.data.cache_dir = write_poj104(str(tmp_path / "poj")), tiny_model, ""
    c.train.zero_shot_eval = True
    c.train.num_steps, c.train.eval_every, c.train.checkpoint_every = 4, 2, 4
    data = datasets.load(c, str(tmp_path))
    assert isinstance(data.valid, clone_tasks.GroupTask) and data.train_labels.shape == (len(data.train),)
    assert all(p.query != p.code for p in data.train)  # anchor and positive are two programs
    summary = train.train_and_evaluate(c, str(tmp_path / "run"))
    for split in ("zero_shot_valid", "zero_shot_test", "best_valid", "test"):
        assert 0 < summary[split]["map@r"] <= 1, split
    assert summary["best_valid"]["map@r"] == max(r["map@r"] for r in _records(tmp_path / "run", "valid"))


def test_bigclonebench_smoke_run_tests_at_the_valid_threshold(tiny_model, tmp_path):
    from configs import bigclonebench

    c = bigclonebench.get_config("smoke")
    c.data.root, c.model.path, c.data.cache_dir = write_bigclonebench(str(tmp_path / "bcb")), tiny_model, ""
    c.train.zero_shot_eval = False
    c.train.num_steps, c.train.eval_every, c.train.checkpoint_every = 4, 2, 4
    summary = train.train_and_evaluate(c, str(tmp_path / "run"))
    assert 0 <= summary["test"]["f1"] <= 1 and 0 <= summary["best_valid"]["f1"] <= 1
    assert summary["test"]["threshold"] == summary["best_valid"]["threshold"]  # chosen on valid, applied to test
    assert summary["test"]["num_queries"] > 0


def _records(workdir, kind):
    from cocohanere_jax import metrics

    return metrics.read_metrics(str(workdir), kind)
