"""CoSQA reader on fixture files in CoSQA's published JSON formats."""

import json
import shutil
from pathlib import Path

import pytest

from cocohanere_data.cosqa import cosqa_file, load_cosqa_eval, load_cosqa_pairs

FIX = Path(__file__).parent / "fixtures" / "cosqa"


def _array(name):
    return json.loads((FIX / name).read_text())


def _only(pattern):
    (path,) = FIX.glob(pattern)
    return path


def test_retrieval_train_pairs():
    rows = _array(_only("cosqa-retrieval-train-*.json").name)
    pairs = load_cosqa_pairs(FIX, "train")
    assert len(pairs) == len(rows) and all(r["label"] == 1 for r in rows)
    for i, (p, r) in enumerate(zip(pairs, rows)):
        assert p.data_id == i and p.language == "python"
        assert p.query == " ".join(r["doc"].split())
        assert p.code == " ".join(r["code_tokens"].split())  # UniXcoder: code_tokens, docstring removed
        assert p.key == str(r["retrieval_idx"]) and p.origin == r["idx"]


def test_only_label_one_rows_are_positives(tmp_path):
    rows = _array("cosqa-dev.json")
    positives = [r for r in rows if r["label"] == 1]
    assert 0 < len(positives) < len(rows)
    pairs = load_cosqa_pairs(FIX / "cosqa-dev.json")
    assert [p.query for p in pairs] == [" ".join(r["doc"].split()) for r in positives]
    assert [p.key for p in pairs] == [r["idx"] for r in positives]  # no retrieval_idx in the QA release
    rep = pairs.report
    assert rep.filtered["label_0_not_a_positive"] == len(rows) - len(positives)
    assert rep.rows_read == rep.rows_kept + sum(rep.skipped.values()) + sum(rep.filtered.values())
    # With both releases present, the retrieval release is chosen for the split.
    assert cosqa_file(FIX, "valid").name.startswith("cosqa-retrieval-dev-")
    solo = tmp_path / "qa"
    solo.mkdir()
    shutil.copy(FIX / "cosqa-dev.json", solo)
    assert cosqa_file(solo, "dev").name == "cosqa-dev.json"


@pytest.mark.parametrize("split", ["valid", "test"])
def test_eval_ranks_against_code_idx_map(split):
    rows = _array(cosqa_file(FIX, split).name)
    code_map = json.loads((FIX / "code_idx_map.txt").read_text())
    ev = load_cosqa_eval(FIX, split)
    assert ev.query_texts == [" ".join(r["doc"].split()) for r in rows]
    assert ev.query_keys == [str(r["retrieval_idx"]) for r in rows]
    assert ev.num_codes == len(code_map) > ev.num_queries
    idx = ev.target_index()
    for i, r in enumerate(rows):
        assert ev.code_texts[idx[i]] == " ".join(r["code"].split())


def test_missing_files_say_where_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="CoCLR"):
        load_cosqa_pairs(tmp_path, "train")
    shutil.copy(_only("cosqa-retrieval-test-*.json"), tmp_path)
    with pytest.raises(FileNotFoundError, match="code_idx_map"):
        load_cosqa_eval(tmp_path, "test")
