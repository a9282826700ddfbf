"""Bad input: each case is skipped and counted with its file:line, or a clear error naming the file.

Policy (data/records.py, data/README.md): row-level problems are skipped, counted and located
(``strict=True`` raises instead); file-level problems raise naming the file.
"""

import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from cocohanere_data.codesearchnet import load_eval_split, load_pairs
from cocohanere_data.cosqa import load_cosqa_eval, load_cosqa_pairs
from cocohanere_data.records import BadInputError
from cocohanere_data.source_tree import build as B

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture
def corpus(tmp_path):
    """A writable copy of the GraphCodeBERT-layout Python fixture."""
    root = tmp_path / "csn"
    shutil.copytree(FIX / "csn_gcb" / "python", root / "python")
    return root


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _row(path: Path, i: int) -> dict:
    return json.loads(_lines(path)[i])


def test_bad_rows_are_skipped_counted_and_located(corpus, caplog):
    train = corpus / "python" / "train.jsonl"
    good = _lines(train)
    r = _row(train, 0)
    bad = [
        b'{"url": "x", "docstring_tokens": ["a"], \n',                              # malformed JSON
        json.dumps({k: v for k, v in r.items() if k != "docstring_tokens"}).encode() + b"\n",  # missing
        json.dumps({**r, "code_tokens": "def f ( ) : pass"}).encode() + b"\n",     # wrong type
        json.dumps({**r, "docstring_tokens": []}).encode() + b"\n",                # empty docstring
        json.dumps({**r, "docstring_tokens": ["  ", ""]}).encode() + b"\n",        # blank docstring
        json.dumps({**r, "code_tokens": []}).encode() + b"\n",                     # empty code
        json.dumps({**r, "docstring": "caf\u00e9"}, ensure_ascii=False).encode().replace(b"\xc3\xa9", b"\xe9")
        + b"\n",                                                                     # invalid UTF-8
        b"[1, 2, 3]\n",                                                               # not an object
        b"\n",                                                                        # blank: ignored
    ]
    # Interleave: bad rows land on known 1-based lines.
    lines = good[:3] + bad + good[3:]
    train.write_bytes(b"".join(lines))
    with caplog.at_level(logging.WARNING, logger="cocohanere_data.records"):
        pairs = load_pairs(corpus, "python", "train")
    rep = pairs.report
    assert len(pairs) == len(good)
    assert dict(rep.skipped) == {"malformed_json": 1, "missing_field:docstring_tokens": 1,
                                 "bad_field_type:code_tokens": 1, "empty_query": 2, "empty_code": 1,
                                 "invalid_utf8": 1, "not_an_object": 1}
    assert rep.rows_read == rep.rows_kept + rep.num_skipped
    (loc,) = rep.locations["malformed_json"]
    assert loc.startswith(f"{train}:4 (column ") and loc.endswith(")")
    assert rep.locations["empty_query"][0].startswith(f"{train}:7 ")
    assert rep.locations["empty_query"][1].startswith(f"{train}:8 ")
    assert rep.locations["invalid_utf8"][0].startswith(f"{train}:10 ")
    # The summary reaches the log, with counts and the first locations.
    assert any("skipped 1 malformed_json" in m and f"{train}:4" in m for m in caplog.messages)
    # DataIDs stay contiguous over the kept rows.
    assert [p.data_id for p in pairs] == list(range(len(good)))

    with pytest.raises(BadInputError, match=rf"{train}:4: malformed_json"):
        load_pairs(corpus, "python", "train", strict=True)


def test_only_the_first_locations_are_kept(corpus):
    train = corpus / "python" / "train.jsonl"
    train.write_bytes(b"{broken\n" * 12 + b"".join(_lines(train)))
    rep = load_pairs(corpus, "python", "train").report
    assert rep.skipped["malformed_json"] == 12 and len(rep.locations["malformed_json"]) == 5


def test_an_over_long_line_is_skipped_and_the_next_row_read(corpus):
    train = corpus / "python" / "train.jsonl"
    good = _lines(train)
    huge = json.dumps({**_row(train, 0), "original_string": "x" * 50_000}).encode() + b"\n"
    train.write_bytes(good[0] + huge + b"".join(good[1:]))
    pairs = load_pairs(corpus, "python", "train", max_line_bytes=10_000)
    assert len(pairs) == len(good)
    assert pairs.report.skipped["line_too_long"] == 1
    assert pairs.report.locations["line_too_long"][0].startswith(f"{train}:2 ")


def test_binary_or_corrupt_files_raise_naming_the_file(corpus, tmp_path):
    train = corpus / "python" / "train.jsonl"
    train.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(256))
    with pytest.raises(BadInputError, match=rf"{train}: binary content"):
        load_pairs(corpus, "python", "train")

    raw = tmp_path / "raw"
    shutil.copytree(FIX / "csn_raw" / "ruby", raw / "ruby")
    shard = raw / "ruby" / "final" / "jsonl" / "train" / "ruby_train_1.jsonl.gz"
    shard.write_bytes(shard.read_bytes()[: len(shard.read_bytes()) // 2])  # truncated download
    with pytest.raises(BadInputError, match=rf"{shard}:\d+: corrupt or truncated gzip"):
        load_pairs(raw, "ruby", "train")
    shard.write_bytes(b"this is not gzip at all\n")
    with pytest.raises(BadInputError, match=str(shard)):
        load_pairs(raw, "ruby", "train")


def test_eval_query_without_target_is_counted(corpus):
    test = corpus / "python" / "test.jsonl"
    lines = _lines(test)
    orphan = json.dumps({**json.loads(lines[0]), "url": "nowhere#L1-L2"}).encode() + b"\n"
    test.write_bytes(b"".join(lines) + orphan)
    ev = load_eval_split(corpus, "python", "test")
    assert ev.num_queries == len(lines)
    assert ev.report.skipped["target_not_in_codebase"] == 1
    assert ev.report.locations["target_not_in_codebase"][0].startswith(f"{test}:{len(lines) + 1} ")
    cb = corpus / "python" / "codebase.jsonl"
    cb.write_bytes(b"not json\n" + cb.read_bytes())
    ev = load_eval_split(corpus, "python", "test")
    assert ev.report.skipped["codebase:malformed_json"] == 1
    assert ev.report.locations["codebase:malformed_json"][0].startswith(f"{cb}:1 ")


def test_nothing_usable_is_an_error(corpus):
    (corpus / "python" / "train.jsonl").write_bytes(b'{"url": "a"}\n{"url": "b"}\n')
    with pytest.raises(BadInputError, match="no usable pairs.*missing_field:docstring_tokens"):
        load_pairs(corpus, "python", "train")


def test_cosqa_bad_input(tmp_path):
    rows = json.loads(next((FIX / "cosqa").glob("cosqa-retrieval-train-*.json")).read_text())
    rows[1] = {k: v for k, v in rows[1].items() if k != "doc"}
    rows[2]["label"] = 2
    rows[3]["doc"] = "   "
    rows.append("not an object")
    path = tmp_path / "cosqa-retrieval-train-x.json"
    path.write_text(json.dumps(rows, indent=1))
    pairs = load_cosqa_pairs(path)
    assert len(pairs) == len(rows) - 4
    rep = pairs.report
    assert dict(rep.skipped) == {"missing_field:doc": 1, "bad_field_value:label": 1, "empty_query": 1,
                                 "not_an_object": 1}
    # Locations carry the line each array element starts on.
    text = path.read_text().splitlines()
    line = int(rep.locations["bad_field_value:label"][0].split(":")[1].split()[0])
    assert text[line - 1].strip() == "{" and '"label": 2' in "\n".join(text[line:line + 12])
    with pytest.raises(BadInputError, match=rf"{path}:11: missing_field:doc"):
        load_cosqa_pairs(path, strict=True)

    broken = tmp_path / "cosqa-retrieval-dev-1.json"
    broken.write_text('[\n {"idx": "a", "doc": "q", "label": 1,\n  "retrieval_idx": }\n]')
    with pytest.raises(BadInputError, match=rf"{broken}:3: malformed JSON"):
        load_cosqa_pairs(broken)
    (tmp_path / "code_idx_map.txt").write_text('{"def f(): pass": 0,\n "x": ')
    shutil.copy(next((FIX / "cosqa").glob("cosqa-retrieval-test-*.json")), tmp_path)
    with pytest.raises(BadInputError, match=r"code_idx_map.txt:2: not a JSON object"):
        load_cosqa_eval(tmp_path, "test")


def _doc_fn(name: str) -> str:
    return f'def {name}(x):\n    """Compute the thing for the caller now."""\n    y = x\n    z = y\n    return z\n'


def test_source_tree_bad_files_are_skipped_with_locations(tmp_path):
    src = tmp_path / "src"
    for k in range(4):
        (src / f"pkg{k}").mkdir(parents=True)
        (src / f"pkg{k}" / "ok.py").write_text(_doc_fn(f"ok{k}"))
    (src / "pkg0" / "latin1.py").write_bytes(b"# comment\nx = 1\ns = 'caf\xe9'\n" + _doc_fn("latin").encode())
    (src / "pkg0" / "blob.py").write_bytes(b"\x00\x01\x02binary" * 100)
    (src / "pkg1" / "huge.py").write_bytes(_doc_fn("huge").encode() + b"#" * 3_000_000)
    (src / "pkg1" / "empty.py").write_bytes(b"")
    (src / "pkg2" / "broken.py").write_text(_doc_fn("fine") + "def broken(:\n    '''Doc of a broken function.'''\n"
                                            "    return (\n")
    os.symlink(src / "pkg0" / "ok.py", src / "pkg2" / "link.py")
    report = B.build_corpus(src, tmp_path / "out", B.BuildConfig(lang="python", split_depth=1, valid_fraction=0.25,
                                                                 test_fraction=0.25))
    files = report["files"]
    assert files["skipped"] == {"invalid_utf8": 1, "binary_file": 1, "file_too_large": 1, "symlink": 1}
    assert files["locations"]["invalid_utf8"] == ["pkg0/latin1.py:3 (byte 24: invalid continuation byte)"]
    assert files["locations"]["binary_file"] == ["pkg0/blob.py"]
    assert files["locations"]["file_too_large"][0].startswith("pkg1/huge.py (")
    assert files["locations"]["symlink"] == ["pkg2/link.py"]
    kept = report["functions"]["kept"]
    assert sum(kept.values()) == 5  # ok0..ok3 and `fine`; `broken` has a parse error
    assert report["functions"]["removed"].get("parse_error", 0) <= 1


def test_source_tree_error_names_the_problem(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("x = 1\n")
    with pytest.raises(BadInputError, match="no python function passed the filters"):
        B.build_corpus(src, tmp_path / "out", B.BuildConfig(lang="python"))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        B.build_corpus(tmp_path / "nope", tmp_path / "out", B.BuildConfig(lang="python"))
    with pytest.raises(ValueError, match="unsupported language"):
        B.BuildConfig(lang="cobol")
