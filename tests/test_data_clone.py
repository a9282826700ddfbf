"""Loaders of the code-to-code tasks and XLCoST on fixtures in their exact published formats
(tests/fixtures/{poj104,bigclonebench,xlcost}, written by tests/fixtures/make_clone_fixtures.py)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from cocohanere_data import bigclonebench, poj104, xlcost
from cocohanere_data.records import BadInputError, LabelledCode, LabelledCodes

FIX = Path(__file__).parent / "fixtures"
POJ = FIX / "poj104"
BCB = FIX / "bigclonebench"
XL = FIX / "xlcost"


# ------------------------------------------------------------------------------------------ POJ-104


def test_poj104_splits_in_published_format():
    sizes = {}
    for split in ("train", "valid", "test"):
        codes = poj104.load_poj104(POJ, split)
        sizes[split] = len(codes)
        assert codes.report.num_skipped == 0
        assert codes.report.rows_read == codes.report.rows_kept == len(codes)
    assert sizes == {"train": 6, "valid": 4, "test": 8}
    test = poj104.load_poj104(POJ, "test")
    assert sorted(set(test.labels)) == ["81", "82", "83"]
    assert test.keys == [str(i) for i in range(10, 18)]  # preprocess.py's running index continues over splits
    raw = [json.loads(l) for l in (POJ / "test.jsonl").read_text().splitlines()]
    assert test[0].code == " ".join(raw[0]["code"].split())  # run.py's whitespace normalisation
    assert poj104.load_poj104(POJ / "test.jsonl", normalize=False)[0].code == raw[0]["code"]
    assert poj104.load_poj104(POJ, "dev").keys == poj104.load_poj104(POJ, "valid").keys


def test_labelled_codes_label_ids_groups_and_positive_pairs():
    codes = poj104.load_poj104(POJ, "test")
    ids = codes.label_ids()
    assert ids.dtype == np.int32 and ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert {k: v.tolist() for k, v in codes.groups().items()} == {"81": [0, 1, 2], "82": [3, 4, 5], "83": [6, 7]}
    pairs, labels = codes.positive_pairs(seed=3)
    assert len(pairs) == len(codes) and labels.tolist() == ids.tolist()
    by_key = {c.key: c for c in codes}
    for p, lab in zip(pairs, labels):
        a, b = p.key.split("|")
        assert a != b and by_key[a].label == by_key[b].label == p.origin
        assert p.query == by_key[a].code and p.code == by_key[b].code
    again, _ = codes.positive_pairs(seed=3)
    assert again.keys == pairs.keys  # seeded
    # A program alone in its label is no anchor; it is counted, not lost silently.
    alone = LabelledCodes(list(codes) + [LabelledCode(len(codes), "int main(){}", "99", "x", "c", "t")])
    p2, l2 = alone.positive_pairs()
    assert len(p2) == len(codes) and p2.report.filtered["singleton_label"] == 1
    with pytest.raises(BadInputError, match="no label has two"):
        LabelledCodes([LabelledCode(0, "a", "1", "k", "c", "t")]).positive_pairs()


def _write(path: Path, lines):
    path.write_bytes(b"".join(l if isinstance(l, bytes) else (l + "\n").encode() for l in lines))
    return path


def test_poj104_bad_rows_are_skipped_and_counted_with_file_line(tmp_path):
    good = (POJ / "test.jsonl").read_text().splitlines()
    path = _write(tmp_path / "test.jsonl", [
        good[0],
        '{"label": "81", "index": "90", "code": "int main(){',  # 2: malformed
        '{"label": "81", "index": "91"}',  # 3: no code
        '{"label": true, "index": "92", "code": "int x;"}',  # 4: bool label
        '{"label": 81, "index": 93, "code": "int main(){return 0;}"}',  # 5: ints are accepted
        '{"label": "82", "index": "94", "code": "   \\n\\t "}',  # 6: empty code
        good[0],  # 7: duplicate index 10
        b'{"label": "82", "index": "95", "code": "\xff"}\n',  # 8: invalid UTF-8
        "[1, 2]",  # 9: not an object
    ])
    codes = poj104.load_poj104(tmp_path, "test")
    rep = codes.report
    assert len(codes) == 2 and codes[1].label == "81" and codes[1].key == "93"
    assert dict(rep.skipped) == {"malformed_json": 1, "missing_field:code": 1, "bad_field_type:label": 1,
                                 "empty_code": 1, "duplicate_index": 1, "invalid_utf8": 1, "not_an_object": 1}
    assert rep.locations["missing_field:code"] == [f"{path}:3 (no 'code' field)"]
    assert rep.locations["duplicate_index"][0].startswith(f"{path}:7 (index '10' already on line 1")
    assert rep.rows_read == rep.rows_kept + rep.num_skipped
    with pytest.raises(BadInputError, match=re.escape(f"{path}:2: malformed_json")):
        poj104.load_poj104(tmp_path, "test", strict=True)


def test_poj104_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="(?s)gdown.*preprocess.py"):
        poj104.load_poj104(tmp_path, "test")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(BadInputError, match="no usable program"):
        poj104.load_poj104(tmp_path / "empty.jsonl")
    with pytest.raises(ValueError, match="unknown POJ-104 split"):
        poj104.load_poj104(POJ, "eval")


def test_poj104_extracted_archive_layout(tmp_path):
    base = tmp_path / "ProgramData"
    for problem, files in {"81": ["1.txt", "2.txt"], "82": ["1.txt"], "64": ["1.txt"]}.items():
        (base / problem).mkdir(parents=True)
        for name in files:
            (base / problem / name).write_bytes(b"int main(){ /* caf\xe9 */ return 0; }\n")
    (base / "82" / "2.txt").write_bytes(b"")  # empty file: skipped and counted
    test = poj104.load_poj104(tmp_path, "test")
    assert test.labels == ["81", "81", "82"]
    assert test.keys == ["ProgramData/81/1.txt", "ProgramData/81/2.txt", "ProgramData/82/1.txt"]
    assert "caf\u00e9" in test[0].code  # latin-1, as preprocess.py reads the archive
    assert test.report.skipped["empty_code"] == 1
    assert poj104.load_poj104(tmp_path, "train").labels == ["64"]
    with pytest.raises(FileNotFoundError, match="none of the problem folders 65..80"):
        poj104.load_poj104(tmp_path, "valid")


# ------------------------------------------------------------------------------------- BigCloneBench


def test_bigclonebench_pairs_in_published_format():
    test = bigclonebench.load_bigclonebench(BCB, "test")
    assert test.num_pairs == 7 and test.labels.tolist() == [1, 1, 0, 0, 1, 0, 0]
    rows = [l.split("\t") for l in (BCB / "test.txt").read_text().splitlines()]
    for p, (a, b, _) in enumerate(rows):
        assert test.func_keys[test.left[p]] == a and test.func_keys[test.right[p]] == b
    data = {json.loads(l)["idx"]: json.loads(l)["func"] for l in (BCB / "data.jsonl").read_text().splitlines()}
    assert test.funcs[0] == " ".join(data[test.func_keys[0]].split())
    assert len(set(test.func_keys)) == len(test.func_keys)
    assert bigclonebench.load_bigclonebench(BCB, "test", normalize=False).funcs[0] == data[test.func_keys[0]]
    assert bigclonebench.load_bigclonebench(BCB, "test", max_pairs=3).num_pairs == 3
    assert test.report.num_skipped == 0


def test_bigclonebench_clone_groups_and_training_pairs():
    train = bigclonebench.load_bigclonebench(BCB, "train")
    g = train.clone_groups()
    key = dict(zip(train.func_keys, g))
    assert key["1135019"] == key["2704612"] == key["9133657"]  # 1135019-2704612 and 2704612-9133657: one group
    assert key["13653451"] == key["21955002"] != key["1135019"]
    assert len({key["14322332"], key["1188160"], key["16765164"], key["1135019"], key["13653451"]}) == 5
    pairs, labels = train.positive_pairs()
    assert len(pairs) == 3 and pairs.report.filtered["label_0_not_a_positive"] == 2
    assert pairs[0].key == "1135019|2704612" and labels[0] == labels[2] != labels[1]


def test_bigclonebench_bad_rows(tmp_path):
    lines = (BCB / "data.jsonl").read_text().splitlines()
    _write(tmp_path / "data.jsonl", lines + ['{"idx": "5"}', '{"func": "", "idx": "6"}', lines[0]])
    txt = _write(tmp_path / "valid.txt", [
        "1135019\t9133657\t1",
        "1135019\t424242\t1",  # 2: idx not in data.jsonl (run.py drops it)
        "1135019 9133657",  # 3: two fields
        "1188160\t8831513\t2",  # 4: label 2
        "1135019\t9133657\t1",  # 5: repeated pair, kept
    ])
    pairs = bigclonebench.load_bigclonebench(tmp_path, "valid")
    rep = pairs.report
    assert pairs.num_pairs == 2
    assert rep.skipped["function_not_in_data"] == 1 and rep.skipped["malformed_pair_line"] == 1
    assert rep.skipped["bad_field_value:label"] == 1
    assert rep.skipped["data:missing_field:func"] == 1 and rep.skipped["data:empty_code"] == 1
    assert rep.skipped["data:duplicate_idx"] == 1
    assert rep.locations["function_not_in_data"] == [f"{txt}:2 (idx 424242 not in data.jsonl)"]
    assert any("1 repeated" in n for n in rep.notes)
    with pytest.raises(BadInputError, match=re.escape(f"{txt}:2: function_not_in_data")):
        _write(tmp_path / "data.jsonl", lines)
        bigclonebench.load_bigclonebench(tmp_path, "valid", strict=True)


def test_bigclonebench_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="(?s)test.txt.*CodeXGLUE"):
        bigclonebench.load_bigclonebench(tmp_path, "test")
    (tmp_path / "test.txt").write_text("1\t2\t0\n")
    with pytest.raises(FileNotFoundError, match="data.jsonl"):
        bigclonebench.load_bigclonebench(tmp_path, "test")


# --------------------------------------------------------------------------------------------- XLCoST


def test_xlcost_program_level_pairs_and_eval():
    pairs = xlcost.load_xlcost_pairs(XL, "python", "train")
    raw = [json.loads(l) for l in (XL / "nl2code_search/program_level/Python/train.jsonl").read_text().splitlines()]
    assert len(pairs) == 2
    assert pairs[0].query == " ".join(raw[0]["docstring_tokens"]) and pairs[0].code == " ".join(raw[0]["code_tokens"])
    assert pairs[0].key == "10001-Python" and pairs[0].language == "Python" and pairs[0].origin == "xlcost/program"
    ev = xlcost.load_xlcost_eval(XL / "nl2code_search", "py", "test")
    assert ev.num_queries == ev.num_codes == 2 and ev.target_index().tolist() == [0, 1]
    assert ev.split == "test" and ev.language == "Python"


def test_xlcost_snippet_level_reads_val_jsonl():
    ev = xlcost.load_xlcost_eval(XL, "Python", "valid", level="snippet")
    assert ev.num_queries == 4 and ev.query_keys[0] == "10003-Python-1"
    assert ev.query_texts[0] == "Returns sum of first n natural numbers"
    assert len(xlcost.load_xlcost_pairs(XL, "python", "dev", level="snippet")) == 4


def test_xlcost_bad_rows_and_missing(tmp_path):
    d = tmp_path / "nl2code_search" / "program_level" / "C++"
    d.mkdir(parents=True)
    path = _write(d / "test.jsonl", [
        json.dumps({"docstring_tokens": ["gcd", "of", "two"], "code_tokens": ["int", "gcd", "(", ")"], "url": "1-C++", "idx": 1}),
        json.dumps({"docstring_tokens": [], "code_tokens": ["x"], "url": "2-C++", "idx": 2}),  # 2: empty query
        json.dumps({"docstring_tokens": ["a"], "code_tokens": "int x ;", "url": "3-C++", "idx": 3}),  # 3: str tokens
        json.dumps({"docstring_tokens": ["b"], "code_tokens": ["y"], "idx": 4}),  # 4: no url
        json.dumps({"docstring_tokens": ["c"], "code_tokens": ["z"], "url": "1-C++", "idx": 1}),  # 5: same url
        json.dumps({"docstring_tokens": ["d"], "code_tokens": ["w"], "url": "6-C++", "idx": 1}),  # shares idx 1
    ])
    ev = xlcost.load_xlcost_eval(tmp_path, "cpp", "test")
    rep = ev.report
    assert ev.query_keys == ["1-C++", "6-C++"]
    assert dict(rep.skipped) == {"empty_query": 1, "bad_field_type:code_tokens": 1, "missing_field:url": 1,
                                 "duplicate_url": 1}
    assert rep.locations["empty_query"] == [f"{path}:2 ('docstring_tokens' is empty)"]
    assert any("share an idx" in n for n in rep.notes)
    with pytest.raises(BadInputError, match=re.escape(f"{path}:2: empty_query")):
        xlcost.load_xlcost_eval(tmp_path, "cpp", "test", strict=True)
    with pytest.raises(FileNotFoundError, match="(?s)C#.*XLCoST_data"):
        xlcost.load_xlcost_pairs(tmp_path, "csharp", "train")
    with pytest.raises(ValueError, match="unknown XLCoST language"):
        xlcost.language_folder("rust")


# ------------------------------------------------------------------ groups from releases of a source tree


def test_version_groups_from_two_source_trees(tmp_path):
    from cocohanere_data.code_groups import build_version_groups, module_path

    v1 = tmp_path / "pkg-1.0" / "src" / "pkg"
    v2 = tmp_path / "pkg-2.0" / "pkg"
    v1.mkdir(parents=True)
    v2.mkdir(parents=True)
    (v1 / "util.py").write_text(
        'def add(a, b):\n    """Add."""\n    total = a + b\n    return total\n\n'
        'def same(x):\n    y = x * 2\n    return y\n\n'
        'def gone(x):\n    z = x - 1\n    return z\n\n'
        'def twice(x):\n    v = x\n    return v\n\ndef twice(x):\n    w = x\n    return w\n')
    (v2 / "util.py").write_text(
        'def add(a: int, b: int) -> int:\n    """Add two ints."""\n    total = a + b\n    return total\n\n'
        'def same(x):\n    y = x * 2\n    return y\n\n'
        'def tiny(x): return x\n\n'
        'def twice(x):\n    v = x\n    return v\n')
    (tmp_path / "pkg-2.0" / "pkg-2.0.dist-info").mkdir()
    (tmp_path / "pkg-2.0" / "pkg-2.0.dist-info" / "x.py").write_text("def meta():\n    a = 1\n    return a\n")
    assert module_path("pkg-1.0/src/pkg/util.py") == "pkg/util.py" and module_path("pkg/util.py") == "pkg/util.py"
    assert module_path("pkg-2.0.dist-info/x.py") == ""
    g = build_version_groups({"1.0": tmp_path / "pkg-1.0", "2.0": tmp_path / "pkg-2.0"})
    groups = {k: [g[i].origin for i in v] for k, v in g.groups().items()}
    assert groups["pkg/util.py::add"] == ["1.0", "2.0"]  # changed: a group of two
    assert groups["pkg/util.py::same"] == ["1.0"]  # unchanged: one distractor
    assert groups["pkg/util.py::gone"] == ["1.0"]  # one version only: distractor
    assert groups["pkg/util.py::twice"] == ["2.0"]  # ambiguous in 1.0 (defined twice)
    assert "pkg/util.py::tiny" not in groups  # one line
    assert '"""' not in g[g.groups()["pkg/util.py::add"][0]].code  # docstrings removed
    rep = g.report
    assert rep.filtered["too_short"] == 1 and rep.filtered["ambiguous_name"] == 2 and rep.filtered["identical_copy"] == 1
    assert rep.rows_read == rep.rows_kept + sum(rep.filtered.values())
    strict = build_version_groups({"1.0": tmp_path / "pkg-1.0", "2.0": tmp_path / "pkg-2.0"}, keep_unchanged=False)
    assert sorted(set(strict.labels)) == ["pkg/util.py::add"]
    pairs, labels = strict.positive_pairs()
    assert len(pairs) == 2 and labels.tolist() == [0, 0]
