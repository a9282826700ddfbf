"""The config's `data` section -> training pairs and the valid/test retrieval tasks.

Sources: "codesearchnet" (the GraphCodeBERT-filtered `<lang>/{train,valid,test,codebase}.jsonl` or the raw
CSN v2 layout, and any corpus that `python -m cocohanere_data.source_tree.build` made from a source tree), "cosqa",
"stdlib" (the embedded default: the running interpreter's standard library, built on first use) and
"source_tree" (your own repository, `config.data.src`: the corpus is built from it with the tree-sitter
builder, cached in `config.data.root` or `<workdir>/corpus`, and rebuilt when the tree changes) and "xlcost"
(XLCoST's NL code search data, `config.data.level` program or snippet: each query of a split ranked against
every code of that split). Code-to-code: "poj104" (programs grouped by problem; MAP@R) and "bigclonebench"
(clone pairs; F1 at a threshold chosen on valid): training pairs are (anchor code, positive code) with a
label per pair (`Datasets.train_labels`) that the step's duplicate mask reads (`cocohanere_jax.clone_tasks`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections
import numpy as np

from cocohanere_jax import multilingual
from cocohanere_jax.evaluate import RetrievalTask

SOURCES = ("codesearchnet", "cosqa", "stdlib", "source_tree", "xlcost", "poj104", "bigclonebench")


@dataclasses.dataclass
class Datasets:
    train: object  # cocohanere_data.records.Pairs (data_id = row index = DataID)
    valid: Any  # RetrievalTask, or a clone_tasks.GroupTask / PairTask
    test: Any
    description: str
    train_labels: np.ndarray | None = None  # int32 [N] label per DataID (code-to-code tasks), else None
    train_groups: np.ndarray | None = None  # int32 [N] language index per DataID (several languages), else None
    also_test: Any = None  # the test queries against the other pool (config.data.also_test_candidates), else None


def check(config: ml_collections.ConfigDict) -> None:
    """Config errors that need no data reading, raised before anything is loaded or compiled."""
    d = config.data
    if d.source not in SOURCES:
        raise ValueError(f"config.data.source={d.source!r} is not one of {SOURCES}.")
    if d.source in ("xlcost", "poj104", "bigclonebench") and not (d.root and os.path.isdir(d.root)):
        import importlib

        module = importlib.import_module(f"cocohanere_data.{d.source}")
        raise FileNotFoundError(f"config.data.root={d.root!r} is not a directory.\n{module.DOWNLOAD_INSTRUCTIONS}")
    if d.source in ("codesearchnet", "cosqa"):
        if not d.root or not os.path.isdir(d.root):
            hint = (
                "the directory that holds <language>/train.jsonl, valid.jsonl, test.jsonl, codebase.jsonl "
                "(GraphCodeBERT's filtered CodeSearchNet) or <language>/final/jsonl/ (raw CodeSearchNet v2), "
                "or a corpus built with `python -m cocohanere_data.source_tree.build`"
                if d.source == "codesearchnet"
                else "the CoSQA directory (cosqa-train.json, cosqa-dev.json / cosqa-test.json, code_idx_map.txt)"
            )
            raise FileNotFoundError(
                f"config.data.root={d.root!r} is not a directory. Set --config.data.root to {hint}."
            )
    if d.source == "source_tree":
        src = os.path.expanduser(d.get("src", ""))
        if not src or not os.path.isdir(src):
            raise FileNotFoundError(
                f"config.data.src={src!r} is not a directory. Set --config.data.src to the source tree to train on "
                "(configs/repo.py), e.g. a git checkout of your repository."
            )
        from cocohanere_data.source_tree.languages import LANGUAGES

        unknown = [lang for lang in multilingual.languages(d.language) if lang not in LANGUAGES]
        if unknown:
            raise ValueError(f"config.data.language={d.language!r}: {unknown} not supported by the source-tree "
                             f"builder; use one or several of {list(LANGUAGES)} (comma-separated), or all.")
    if d.get("eval_candidates", "codebase") not in ("codebase", "targets"):
        raise ValueError(f"config.data.eval_candidates={d.eval_candidates!r}: use \"codebase\" (every query against "
                         "the whole codebase) or \"targets\" (against the queries' own target codes only).")
    also = d.get("also_test_candidates", "")
    if also and d.source in ("poj104", "bigclonebench"):
        raise ValueError(f"config.data.also_test_candidates={also!r}: {d.source} is a code-to-code task with one "
                         "protocol; set it to \"\".")
    candidates = d.get("eval_candidates", "codebase")
    other = "targets" if candidates == "codebase" else "codebase"
    if also not in ("", other):
        raise ValueError(f"config.data.also_test_candidates={also!r} must be {other!r} (the pool that "
                         f"config.data.eval_candidates={candidates!r} is not) or \"\" for none.")
    for key in ("query_length", "code_length"):
        if d[key] < 2:
            raise ValueError(f"config.data.{key}={d[key]} must be at least 2 tokens.")


def _task(split, max_queries: int, candidates: str = "codebase") -> RetrievalTask:
    """The split's first ``max_queries`` queries (0 = all) ranked against the whole codebase, or with
    ``candidates="targets"`` against their own target codes only (`evaluate.targets_only`)."""
    from cocohanere_jax import evaluate

    n = max_queries or len(split.query_texts)
    task = RetrievalTask.from_keys(split.query_texts[:n], split.query_keys[:n], split.code_texts, split.code_keys)
    return evaluate.targets_only(task) if candidates == "targets" else task


def _build_tree_corpus(d: ml_collections.ConfigDict, workdir: str, lang: str | None = None):
    """The corpus of ``config.data.src`` in one language (built, or reused when neither the tree nor the
    settings changed): ``<root>/<lang>/``, root ``config.data.root`` or ``<workdir>/corpus``."""
    from cocohanere_data.records import BadInputError
    from cocohanere_data.source_tree.build import BuildConfig, build_corpus_cached

    cfg = BuildConfig(lang=lang or d.language, split_depth=d.get("split_depth", 0) or None,
                      min_groups=d.get("min_groups", 10), jobs=os.cpu_count() or 1)
    out = d.root or os.path.join(workdir, "corpus")
    try:
        return build_corpus_cached(os.path.expanduser(d.src), out, cfg)
    except BadInputError as e:
        raise BadInputError(
            f"config.data.src={d.src!r} ({cfg.lang}): {e} For a small tree try --config.data.min_groups=3 or "
            "--config.data.split_depth=1 (group files by top-level directory)."
        ) from None


def _build_tree_corpora(d: ml_collections.ConfigDict, workdir: str) -> tuple[str, list[str], dict[str, str]]:
    """The corpora of a source tree in several languages: (root, the languages built, {language: why it was
    left out}). A named list builds every language or fails naming it; ``"all"`` builds each language the
    tree has source files of, and leaves out (reported, not silently) those whose functions are too few to
    split. Each language is split by its own directory groups (`cocohanere_data.source_tree.build`)."""
    from cocohanere_data.records import BadInputError
    from cocohanere_data.source_tree.build import has_source_files

    names = multilingual.languages(d.language)
    if d.language.strip() != "all":
        roots = [str(_build_tree_corpus(d, workdir, lang)) for lang in names]
        return roots[0], names, {}
    built, skipped, root = [], {}, None
    for lang in names:
        if not has_source_files(os.path.expanduser(d.src), lang):
            skipped[lang] = "no source files"
            continue
        try:
            root = str(_build_tree_corpus(d, workdir, lang))
            built.append(lang)
        except BadInputError as e:
            skipped[lang] = str(e)
    if not built:
        raise BadInputError(f"config.data.src={d.src!r}: config.data.language='all' found no language to train on: "
                            + "; ".join(f"{lang}: {why}" for lang, why in skipped.items()))
    return root, built, skipped


def load(config: ml_collections.ConfigDict, workdir: str) -> Datasets:
    """Reads the data named by `config.data` (bad rows are skipped and counted; see data/README.md)."""
    from cocohanere_data import codesearchnet, cosqa, records

    d = config.data
    if d.source in ("poj104", "bigclonebench"):
        return _load_clone_task(config)
    strict = bool(d.strict)
    if d.source == "cosqa":
        train = cosqa.load_cosqa_pairs(d.root, "train", strict=strict)
        valid = cosqa.load_cosqa_eval(d.root, "valid", strict=strict)
        test = cosqa.load_cosqa_eval(d.root, "test", strict=strict)
        where = f"CoSQA at {d.root}"
    elif d.source == "xlcost":
        from cocohanere_data import xlcost

        level = d.get("level", "program")
        train = xlcost.load_xlcost_pairs(d.root, d.language, "train", level, strict=strict)
        valid = xlcost.load_xlcost_eval(d.root, d.language, "valid", level, strict=strict)
        test = xlcost.load_xlcost_eval(d.root, d.language, "test", level, strict=strict)
        where = f"XLCoST {level}-level {xlcost.language_folder(d.language)} at {d.root}"
    elif d.source == "codesearchnet" and len(multilingual.languages(d.language)) > 1:
        return _load_languages(d, strict, d.root, multilingual.languages(d.language))
    else:
        root, lang, skipped = d.root, d.language, {}
        if d.source == "stdlib":
            from cocohanere_data import stdlib_corpus

            root, lang = str(stdlib_corpus.build_stdlib_corpus(d.root or None)), "python"
        elif d.source == "source_tree" and (d.language.strip() == "all" or "," in d.language):
            root, names, skipped = _build_tree_corpora(d, workdir)
            if len(names) > 1:
                return _load_languages(d, strict, root, names, skipped)
            lang = names[0]
        elif d.source == "source_tree":
            root = str(_build_tree_corpus(d, workdir))
        train = codesearchnet.load_pairs(root, lang, "train", strict=strict)
        valid = codesearchnet.load_eval_split(root, lang, "valid", strict=strict)
        test = codesearchnet.load_eval_split(root, lang, "test", strict=strict)
        where = f"{d.source} {lang} at {root}{_left_out(skipped)}"
    if d.max_train_pairs and len(train) > d.max_train_pairs:
        train = records.Pairs(list(train)[: d.max_train_pairs], train.report)
    candidates = d.get("eval_candidates", "codebase")
    also = d.get("also_test_candidates", "")
    return Datasets(
        train=train,
        valid=_task(valid, d.max_eval_queries, candidates),
        test=_task(test, d.max_eval_queries, candidates),
        description=where,
        also_test=_task(test, d.max_eval_queries, also) if also else None,
    )


def _left_out(skipped: dict[str, str]) -> str:
    """The languages a source tree's ``language='all'`` left out, and why, for the data description."""
    return "".join(f"; {lang} left out: {why}" for lang, why in skipped.items())


def _load_languages(d: ml_collections.ConfigDict, strict: bool, root: str, names: list[str],
                    skipped: dict[str, str] | None = None) -> Datasets:
    """Several languages of one corpus root: concatenated training pairs, per-language evaluation
    (`cocohanere_jax.multilingual`). ``max_train_pairs`` and ``max_eval_queries`` apply per language."""
    from cocohanere_data import codesearchnet, records

    parts, valid, test, also_test = [], {}, {}, {}
    also = d.get("also_test_candidates", "")
    for lang in names:
        pairs = codesearchnet.load_pairs(root, lang, "train", strict=strict)
        if d.max_train_pairs and len(pairs) > d.max_train_pairs:
            pairs = records.Pairs(list(pairs)[: d.max_train_pairs], pairs.report)
        parts.append(pairs)
        for split, tasks in (("valid", valid), ("test", test)):
            split_data = codesearchnet.load_eval_split(root, lang, split, strict=strict)
            tasks[lang] = _task(split_data, d.max_eval_queries, d.get("eval_candidates", "codebase"))
            if split == "test" and also:
                also_test[lang] = _task(split_data, d.max_eval_queries, also)
    sizes = ", ".join(f"{lang} {len(p)}" for lang, p in zip(names, parts))
    groups = np.concatenate([np.full(len(p), i, np.int32) for i, p in enumerate(parts)])
    return Datasets(
        train_groups=groups,
        train=multilingual.concat_pairs(parts),
        valid=multilingual.LanguageTasks(valid),
        test=multilingual.LanguageTasks(test),
        also_test=multilingual.LanguageTasks(also_test) if also else None,
        description=f"{d.source} {','.join(names)} at {root} (train pairs: {sizes}){_left_out(skipped or {})}",
    )


def _load_clone_task(config: ml_collections.ConfigDict) -> Datasets:
    """POJ-104 / BigCloneBench: (anchor, positive) training pairs with their labels, and the eval tasks."""
    from cocohanere_data import records

    from cocohanere_jax import clone_tasks

    d = config.data
    strict = bool(d.strict)
    if d.source == "poj104":
        from cocohanere_data import poj104

        train, labels = poj104.load_poj104(d.root, "train", strict=strict).positive_pairs(seed=config.train.seed)
        valid, test = (clone_tasks.GroupTask.from_codes(poj104.load_poj104(d.root, s, strict=strict))
                       for s in ("valid", "test"))
        where = f"POJ-104 at {d.root}"
    else:
        from cocohanere_data import bigclonebench

        load = lambda split, n=0: bigclonebench.load_bigclonebench(d.root, split, strict=strict, max_pairs=n)  # noqa: E731
        train, labels = load("train").positive_pairs()
        n_eval = d.get("max_eval_pairs", 0)
        valid, test = (clone_tasks.PairTask.from_pairs(load(s, n_eval)) for s in ("valid", "test"))
        where = f"BigCloneBench at {d.root}"
    if d.max_train_pairs and len(train) > d.max_train_pairs:
        train, labels = records.Pairs(list(train)[: d.max_train_pairs], train.report), labels[: d.max_train_pairs]
    return Datasets(train=train, valid=valid, test=test, description=where, train_labels=labels)
