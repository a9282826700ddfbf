"""The embedded default corpus built from this interpreter's standard library, split by module."""

import json

from cocohanere_data.codesearchnet import load_eval_split, load_pairs
from cocohanere_data.stdlib_corpus import build_stdlib_corpus, stdlib_dir

MODULES = ("bisect", "colorsys", "csv", "fnmatch", "glob", "heapq", "json", "shlex", "string", "textwrap")


def _rows(root, split):
    return [json.loads(x) for x in (root / "python" / f"{split}.jsonl").read_text().splitlines()]


def test_stdlib_corpus_split_by_module(tmp_path):
    root = build_stdlib_corpus(tmp_path, modules=MODULES, valid_fraction=0.2, test_fraction=0.2)
    assert (stdlib_dir() / "textwrap.py").is_file()
    modules = {}
    for split in ("train", "valid", "test"):
        for r in _rows(root, split):
            assert r["repo"].startswith("stdlib/") and r["url"].startswith("stdlib/")
            modules.setdefault(r["repo"].removeprefix("stdlib/"), set()).add(split)
    assert set(modules) <= set(MODULES) and len(modules) >= 6
    assert all(len(s) == 1 for s in modules.values())  # a module never spans two splits
    assert {s for v in modules.values() for s in v} == {"train", "valid", "test"}

    # A known real function with its real summary.
    every = {(r["path"], r["func_name"]): r for s in ("train", "valid", "test") for r in _rows(root, s)}
    dedent = every[("textwrap.py", "dedent")]
    assert " ".join(dedent["docstring_tokens"]).startswith("Remove any common leading whitespace from every line")
    assert load_pairs(root, "python", "train")
    ev = load_eval_split(root, "python", "test")
    assert (ev.target_index() >= 0).all()


def test_stdlib_corpus_is_reused_until_settings_change(tmp_path):
    root = build_stdlib_corpus(tmp_path, modules=("json", "csv", "textwrap"), valid_fraction=0.3, test_fraction=0.3)
    train = root / "python" / "train.jsonl"
    stamp = train.stat().st_mtime_ns
    assert build_stdlib_corpus(tmp_path, modules=("json", "csv", "textwrap"), valid_fraction=0.3,
                               test_fraction=0.3) == root
    assert train.stat().st_mtime_ns == stamp
    build_stdlib_corpus(tmp_path, modules=("json", "csv", "textwrap"), valid_fraction=0.3, test_fraction=0.3, seed=1)
    assert train.stat().st_mtime_ns != stamp
