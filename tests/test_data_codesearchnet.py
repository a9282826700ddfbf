"""CodeSearchNet loaders on fixture files in the exact published layouts (real pairs, see fixtures/README)."""

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cocohanere_data.codesearchnet import detect_layout, load_eval_split, load_pairs, split_files
from cocohanere_data.records import Pairs

FIX = Path(__file__).parent / "fixtures"
GCB, RAW = FIX / "csn_gcb", FIX / "csn_raw"
LANGS = ("python", "java", "javascript", "go", "php", "ruby")
CSN_FIELDS = {"repo", "path", "func_name", "original_string", "language", "code", "code_tokens", "docstring",
              "docstring_tokens", "sha", "url", "partition"}


def _jsonl(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize("lang", LANGS)
def test_fixture_files_follow_the_published_formats(lang):
    """Guards the fixtures themselves: field set, blanked fields, and the raw shard naming."""
    for split in ("train", "valid", "test", "codebase"):
        rows = _jsonl(GCB / lang / f"{split}.jsonl")
        assert rows and all(set(r) == CSN_FIELDS for r in rows)
        assert all(r["language"] == lang and isinstance(r["code_tokens"], list) for r in rows)
        if split in ("valid", "test"):
            assert all(r["original_string"] == r["code"] == "" and r["code_tokens"] == [] for r in rows)
            assert all(r["docstring_tokens"] for r in rows)
        elif split == "codebase":
            assert all(r["docstring"] == "" and r["docstring_tokens"] == [] and r["code_tokens"] for r in rows)
        else:
            assert all(r["code_tokens"] and r["docstring_tokens"] for r in rows)
    names = sorted(p.name for p in (RAW / lang / "final" / "jsonl" / "train").iterdir())
    assert names == [f"{lang}_train_0.jsonl.gz", f"{lang}_train_1.jsonl.gz"]
    assert all(set(r) == CSN_FIELDS and r["code_tokens"] for r in _jsonl(RAW / lang / "final/jsonl/test" /
                                                                          f"{lang}_test_0.jsonl.gz"))


@pytest.mark.parametrize("lang", LANGS)
def test_load_pairs_graphcodebert_train(lang):
    rows = _jsonl(GCB / lang / "train.jsonl")
    pairs = load_pairs(GCB, lang, "train")
    assert isinstance(pairs, Pairs) and len(pairs) == len(rows)
    assert detect_layout(GCB, lang) == "graphcodebert"
    for i, (p, r) in enumerate(zip(pairs, rows)):
        assert p.data_id == i
        assert p.query == " ".join(r["docstring_tokens"])
        assert p.code == " ".join(r["code_tokens"])
        assert p.key == p.url == r["url"] and p.origin == r["repo"] and p.language == lang
    assert pairs.report.rows_read == pairs.report.rows_kept == len(rows) and not pairs.report.skipped


@pytest.mark.parametrize("lang", LANGS)
def test_load_eval_split_graphcodebert_ranks_against_the_whole_codebase(lang):
    queries = _jsonl(GCB / lang / "test.jsonl")
    codebase = _jsonl(GCB / lang / "codebase.jsonl")
    ev = load_eval_split(GCB, lang, "test")
    assert ev.query_texts == [" ".join(r["docstring_tokens"]) for r in queries]
    assert ev.query_keys == [r["url"] for r in queries]
    assert ev.code_keys == [r["url"] for r in codebase]        # valid + test codes + distractors
    assert ev.code_texts == [" ".join(r["code_tokens"]) for r in codebase]
    assert ev.num_codes > ev.num_queries
    targets = ev.target_index()
    assert (targets >= 0).all() and all(len(t) == 1 for t in ev.targets())
    np.testing.assert_array_equal(np.asarray(ev.code_keys)[targets], np.asarray(ev.query_keys))


@pytest.mark.parametrize("lang", LANGS)
def test_graphcodebert_valid_pairs_take_code_from_the_codebase(lang):
    pairs = load_pairs(GCB, lang, "valid")
    codebase = {r["url"]: " ".join(r["code_tokens"]) for r in _jsonl(GCB / lang / "codebase.jsonl")}
    assert len(pairs) == len(_jsonl(GCB / lang / "valid.jsonl"))
    assert all(p.code == codebase[p.key] and p.code for p in pairs)


@pytest.mark.parametrize("lang", LANGS)
def test_raw_csn_layout(lang):
    assert detect_layout(RAW, lang) == "csn"
    shards = split_files(RAW, lang, "train")
    rows = _jsonl(shards[0]) + _jsonl(shards[1])
    pairs = load_pairs(RAW, lang, "train")
    assert [p.query for p in pairs] == [" ".join(r["docstring_tokens"]) for r in rows]
    assert [p.code for p in pairs] == [" ".join(r["code_tokens"]) for r in rows]
    # Raw layout evaluation: a split's queries against that split's own code.
    ev = load_eval_split(RAW, lang, "valid")
    assert ev.num_queries == ev.num_codes == len(_jsonl(split_files(RAW, lang, "valid")[0]))
    np.testing.assert_array_equal(ev.target_index(), np.arange(ev.num_queries))


@pytest.mark.parametrize("lang", LANGS)
def test_both_layouts_agree_on_the_same_functions(lang):
    raw = {p.key: p for p in load_pairs(RAW, lang, "train")}
    gcb = load_pairs(GCB, lang, "train")
    assert all(raw[p.key].query == p.query and raw[p.key].code == p.code for p in gcb)
    raw_test = {p.key: p for p in load_pairs(RAW, lang, "test")}
    gcb_test = load_pairs(GCB, lang, "test")  # code joined from codebase.jsonl
    assert all(raw_test[p.key].code == p.code and raw_test[p.key].query == p.query for p in gcb_test)


def test_raw_shards_are_read_in_numeric_order(tmp_path):
    src = RAW / "go" / "final" / "jsonl" / "train"
    dst = tmp_path / "go" / "final" / "jsonl" / "train"
    dst.mkdir(parents=True)
    shutil.copy(src / "go_train_0.jsonl.gz", dst / "go_train_10.jsonl.gz")
    shutil.copy(src / "go_train_1.jsonl.gz", dst / "go_train_2.jsonl.gz")
    (dst / "README.txt").write_text("not a shard")
    assert [p.name for p in split_files(tmp_path, "go", "train")] == ["go_train_2.jsonl.gz", "go_train_10.jsonl.gz"]
    first = load_pairs(tmp_path, "go", "train")[0]
    assert first.key == _jsonl(src / "go_train_1.jsonl.gz")[0]["url"]


def test_split_names_and_errors(tmp_path):
    assert len(load_pairs(GCB, "ruby", "validation")) == len(load_pairs(GCB, "ruby", "valid"))
    with pytest.raises(ValueError, match="unknown split"):
        load_pairs(GCB, "ruby", "training")
    with pytest.raises(ValueError, match="codebase"):
        load_pairs(GCB, "ruby", "codebase")
    with pytest.raises(ValueError, match="valid' or 'test"):
        load_eval_split(GCB, "ruby", "train")
    with pytest.raises(FileNotFoundError) as e:
        load_pairs(tmp_path, "python", "train")
    msg = str(e.value)
    assert "GraphCodeBERT" in msg and "zenodo" in msg and "cocohanere_data.source_tree.build" in msg and str(tmp_path) in msg
    (tmp_path / "python").mkdir()
    (tmp_path / "python" / "train.jsonl").write_text((GCB / "python" / "train.jsonl").read_text())
    with pytest.raises(FileNotFoundError, match="codebase"):
        load_eval_split(tmp_path, "python", "test")
