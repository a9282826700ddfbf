"""config.data -> data: the "source_tree" source (train on your own repository, configs/repo.py)."""

import json
import os
import shutil
import sysconfig

import numpy as np
import pytest

from cocohanere_jax import datasets, metrics, train
from configs import repo

import tiny_setup

MODULES = ("json", "csv", "textwrap", "shlex", "fractions", "statistics", "difflib", "calendar")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A small 'repository': a few standard-library modules, one directory each."""
    root = tmp_path_factory.mktemp("repo")
    lib = sysconfig.get_paths()["stdlib"]
    for mod in MODULES:
        path = os.path.join(lib, mod + ".py")
        if os.path.isdir(os.path.join(lib, mod)):
            shutil.copytree(os.path.join(lib, mod), root / mod, ignore=shutil.ignore_patterns("__pycache__", "test*"))
        else:
            os.makedirs(root / mod)
            shutil.copy(path, root / mod / f"{mod}.py")
    return root


@pytest.fixture(scope="module")
def mixed_tree(tree, tmp_path_factory):
    """The same 'repository' with a Java part beside its Python (six packages of two documented methods)."""
    from test_data_source_tree import make_tree

    root = tmp_path_factory.mktemp("mixed") / "repo"
    shutil.copytree(tree, root)
    make_tree(root, "java")
    return root


def _config(tree, cache, **data):
    c = repo.get_config("smoke")
    c.data.src, c.data.root, c.data.min_groups = str(tree), str(cache), 4
    for k, v in data.items():
        c.data[k] = v
    return c


def test_tree_corpus_is_built_once_and_rebuilt_when_the_tree_changes(tree, tmp_path):
    c = _config(tree, tmp_path / "corpus")
    first = datasets.load(c, str(tmp_path))
    assert len(first.train) > 0 and len(first.valid.queries) > 0 and len(first.test.queries) > 0
    train_file = tmp_path / "corpus" / "python" / "train.jsonl"
    stamp = train_file.stat().st_mtime_ns
    datasets.load(c, str(tmp_path))
    assert train_file.stat().st_mtime_ns == stamp  # reused
    victim = tree / "textwrap" / "textwrap.py"
    victim.write_text(victim.read_text() + "\n\ndef added(x):\n    \"\"\"Return x doubled, for the test.\"\"\"\n"
                      "    y = x * 2\n    return y\n")
    again = datasets.load(c, str(tmp_path))
    assert train_file.stat().st_mtime_ns != stamp  # rebuilt
    assert len(again.train) > 0
    written = "".join((tmp_path / "corpus" / "python" / f"{s}.jsonl").read_text() for s in ("train", "codebase"))
    assert '"func_name": "added"' in written


def test_a_tree_in_several_languages_is_one_table(mixed_tree, tmp_path):
    """`data.language=all` on a source tree: every language it has source files of, one table, evaluated per
    language; languages it lacks are named as left out; a named language it lacks is an error naming it."""
    from cocohanere_data.records import BadInputError

    mixed = mixed_tree
    data = datasets.load(_config(mixed, tmp_path / "corpus", language="all"), str(tmp_path))
    assert set(data.valid.tasks) == set(data.test.tasks) == {"python", "java"}
    python_only = datasets.load(_config(mixed, tmp_path / "corpus"), str(tmp_path))
    assert list(data.train)[: len(python_only.train)] == [p for p in python_only.train]
    assert {p.language for p in data.train} == {"python", "java"}
    np.testing.assert_array_equal(data.train_groups, [p.language == "java" for p in data.train])
    for lang in ("go", "javascript", "php", "ruby"):
        assert f"{lang} left out: no source files" in data.description
    same = datasets.load(_config(mixed, tmp_path / "corpus", language="java,python"), str(tmp_path))
    assert list(same.test.tasks) == ["java", "python"] and "left out" not in same.description
    with pytest.raises(BadInputError, match=r"\(ruby\).*no ruby function"):
        datasets.load(_config(mixed, tmp_path / "corpus", language="python,ruby"), str(tmp_path))
    with pytest.raises(BadInputError, match="found no language"):
        datasets.load(_config(tmp_path / "corpus", tmp_path / "corpus2", language="all"), str(tmp_path))


def test_missing_source_tree_is_a_clear_error(tmp_path):
    c = _config(tmp_path / "nowhere", tmp_path / "corpus")
    with pytest.raises(FileNotFoundError, match="config.data.src"):
        datasets.check(c)
    c = _config(tmp_path, tmp_path / "corpus", language="python,rust")
    with pytest.raises(ValueError, match=r"config.data.language='python,rust': \['rust'\] not supported"):
        datasets.check(c)


def test_train_on_a_source_tree_end_to_end(mixed_tree, tmp_path):
    """configs/repo.py:smoke with a tiny model on a tree of two languages: corpora built from the tree, trained
    with its defaults (look-ahead batches of one language each), exported with its card."""
    c = _config(mixed_tree, "", language="all")
    assert c.train.language_batches and c.train.lookahead_batches and c.step.hard_negative_weight == 0
    c.model.path = tiny_setup.tiny_bert_folder(str(tmp_path / "model"))
    c.train.export_best, c.train.zero_shot_eval = True, False
    summary = train.train_and_evaluate(c, str(tmp_path / "run"))
    for lang in ("python", "java"):
        assert os.path.isfile(tmp_path / "run" / "corpus" / lang / "train.jsonl")
        assert 0 < summary["test"][f"{lang}/mrr"] <= 1
    logged = metrics.read_metrics(str(tmp_path / "run"), "train")
    assert [r["step"] for r in logged][-1] == c.train.num_steps
    assert any("language_batches_mixed" in r for r in logged)  # the window was laid out by language
    card = (tmp_path / "run" / "export" / "README.md").read_text()
    assert "base_model:" in card and f"{summary['test']['mrr']:.4f}" in card and "AutoModel.from_pretrained" in card


def _write_xlcost(root, lang="Python"):
    """XLCoST's program-level layout from real stdlib (docstring, function) pairs, split by module."""
    pairs = tiny_setup.stdlib_pairs()
    mods = sorted({m for *_, m in pairs})
    where = os.path.join(root, "nl2code_search", "program_level", lang)
    os.makedirs(where, exist_ok=True)
    files = {s: open(os.path.join(where, f"{s}.jsonl"), "w", encoding="utf-8") for s in ("train", "valid", "test")}
    for i, (doc, code, _, mod) in enumerate(pairs):
        split = "valid" if mod in mods[:2] else "test" if mod in mods[2:4] else "train"
        files[split].write(json.dumps({"docstring_tokens": doc, "code_tokens": code, "url": f"{i}-{lang}",
                                       "idx": i}) + "\n")
    for f in files.values():
        f.close()
    return root


def test_xlcost_config_smoke_run(tmp_path):
    """configs/xlcost_python.py:smoke trains and ranks each query within its split (published layout)."""
    from configs import xlcost_python

    c = xlcost_python.get_config("smoke")
    c.data.root = _write_xlcost(str(tmp_path / "xlcost"))
    c.model.path = tiny_setup.tiny_bert_folder(str(tmp_path / "model"))
    c.train.zero_shot_eval = False
    c.train.num_steps, c.train.eval_every, c.train.checkpoint_every = 4, 2, 4
    summary = train.train_and_evaluate(c, str(tmp_path / "run"))
    assert summary["data"].startswith("XLCoST program-level Python") and 0 < summary["test"]["mrr"] <= 1


def test_xlcost_source_trains_and_ranks_within_the_split(tmp_path):
    """configs/xlcost_python.py on the XLCoST fixture (published layout) with a tiny model, zero-shot (the
    fixture has too few training rows for a batch)."""
    from configs import xlcost_python

    c = xlcost_python.get_config("smoke,zero_shot")
    c.data.root = os.path.join(os.path.dirname(__file__), "fixtures", "xlcost")
    c.model.path = tiny_setup.tiny_bert_folder(str(tmp_path / "model"))
    data = datasets.load(c, str(tmp_path))
    assert data.description.startswith("XLCoST program-level Python")
    assert len(data.test.codebase) == len(data.test.queries)  # one code per query, ranked within the split
    import cocohanere_jax
    from cocohanere_jax import evaluate

    result = evaluate.evaluate(cocohanere_jax.load_encoder(c.model.path), data.test, batch_size=8)
    assert 0 < result["mrr"] <= 1 and result["num_queries"] == len(data.test.queries)
    c.data.root = str(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="XLCoST_data"):
        datasets.check(c)
