"""The tensorflow-datasets builder: builds array_record and reads back without tensorflow."""

import sys
from pathlib import Path

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from cocohanere_data.codesearchnet import load_eval_split, load_pairs  # noqa: E402
from cocohanere_data.tfds_builder import CodeSearchNet, codesearch_builder, read_pairs  # noqa: E402

FIX = Path(__file__).parent / "fixtures"


def _decode(b):
    return b.decode("utf-8")


def test_graphcodebert_build_and_read_back_without_tensorflow(tmp_path):
    builder = codesearch_builder(FIX / "csn_gcb", "ruby", tmp_path / "tfds")
    assert "tensorflow" not in sys.modules
    assert list(builder.info.splits.keys()) == ["train", "valid", "test", "codebase"]
    assert sorted(p.name.split("-")[1].split(".")[1] for p in Path(builder.data_dir).glob("*array_record*")) == \
        ["array_record"] * 4

    # DataIDs map each record to the row `load_pairs` gives (records themselves are shuffled).
    want = load_pairs(FIX / "csn_gcb", "ruby", "train")
    got = read_pairs(builder, "train")
    assert list(got) == list(want)
    source = builder.as_data_source()["train"]
    order = [int(source[i]["data_id"]) for i in range(len(source))]
    assert sorted(order) == list(range(len(want))) and order != sorted(order)
    rec = source[3]
    p = want[int(rec["data_id"])]
    assert (_decode(rec["query"]), _decode(rec["code"]), _decode(rec["url"])) == (p.query, p.code, p.key)

    ev = load_eval_split(FIX / "csn_gcb", "ruby", "test")
    test = builder.as_data_source()["test"]
    assert len(test) == ev.num_queries
    for i in range(len(test)):
        r = test[i]
        d = int(r["data_id"])
        assert _decode(r["query"]) == ev.query_texts[d] and _decode(r["url"]) == ev.query_keys[d]
        assert r["code"] == b""  # blanked, as in the published file
    codebase = builder.as_data_source()["codebase"]
    assert len(codebase) == ev.num_codes
    for i in range(len(codebase)):
        r = codebase[i]
        d = int(r["data_id"])
        assert _decode(r["code"]) == ev.code_texts[d] and _decode(r["url"]) == ev.code_keys[d]

    # A second call reuses the prepared files; the data source also opens by name.
    again = codesearch_builder(FIX / "csn_gcb", "ruby", tmp_path / "tfds")
    assert again.data_dir == builder.data_dir
    by_name = tfds.data_source(f"code_search_net/{builder.builder_config.name}", data_dir=str(tmp_path / "tfds"))
    assert len(by_name["train"]) == len(want)
    assert "tensorflow" not in sys.modules


def test_raw_layout_and_manual_dir(tmp_path):
    builder = codesearch_builder(FIX / "csn_raw", "go", tmp_path / "tfds")
    assert list(builder.info.splits.keys()) == ["train", "valid", "test"]
    assert list(read_pairs(builder, "valid")) == list(load_pairs(FIX / "csn_raw", "go", "valid"))

    # The predefined configs read tfds' manual_dir.
    b = CodeSearchNet(config="php", data_dir=str(tmp_path / "manual"), file_format="array_record")
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(FIX / "csn_gcb")))
    assert len(read_pairs(b, "train")) == len(load_pairs(FIX / "csn_gcb", "php", "train"))


def test_missing_source_explains_how_to_get_the_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="GraphCodeBERT") as e:
        codesearch_builder(tmp_path / "empty", "java", tmp_path / "tfds")
    assert "zenodo" in str(e.value)
    b = CodeSearchNet(config="java", data_dir=str(tmp_path / "tfds2"), file_format="array_record")
    with pytest.raises(FileNotFoundError, match="manual_dir"):
        b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "none")))
