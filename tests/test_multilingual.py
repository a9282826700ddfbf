"""Several languages in one job (cocohanere_jax/multilingual.py): mixed training table, per-language
evaluation, and the "targets" candidate setting; one end-to-end run with a cost-aware variant."""

import json
import os

import numpy as np
import pytest

import cocohanere_jax
from cocohanere_jax import datasets, evaluate, model_card, multilingual, train
from cocohanere_jax.step_config import StepConfig
from configs import registry

import tiny_setup

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "csn_gcb")


def _config(language, arg="smoke", max_eval_queries=0):
    c = registry.get_config(arg)
    c.data.root, c.data.language, c.data.max_eval_queries = FIXTURE, language, max_eval_queries
    return c


def test_languages_are_parsed_with_clear_errors():
    assert multilingual.languages("all") == list(multilingual.ALL_LANGUAGES)
    assert multilingual.languages(" python, go ") == ["python", "go"]
    for bad, match in ((",", "names no language"), ("python,python", "repeats")):
        with pytest.raises(ValueError, match=match):
            multilingual.languages(bad)


def test_several_languages_one_table_and_per_language_tasks(tmp_path):
    """Train pairs of every language, renumbered DataIDs; each language's valid/test ranks against its own
    codebase, exactly the single-language tasks."""
    c = _config("python,java,go")
    data = datasets.load(c, str(tmp_path))
    singles = {lang: datasets.load(_config(lang), str(tmp_path)) for lang in ("python", "java", "go")}
    assert len(data.train) == sum(len(d.train) for d in singles.values())
    assert [p.data_id for p in data.train] == list(range(len(data.train)))
    offset = 0
    for lang, single in singles.items():
        block = list(data.train)[offset: offset + len(single.train)]
        assert [p.query for p in block] == single.train.queries and {p.language for p in block} == {lang}
        offset += len(single.train)
        for split in ("valid", "test"):
            mine, theirs = getattr(data, split).tasks[lang], getattr(single, split)
            assert list(mine.queries) == list(theirs.queries) and list(mine.codebase) == list(theirs.codebase)
            np.testing.assert_array_equal(mine.targets, theirs.targets)
    assert "train pairs: " + ", ".join(f"{lang} {len(d.train)}" for lang, d in singles.items()) in data.description


def test_targets_only_ranks_each_query_against_the_queries_own_codes(tmp_path):
    c = _config("python")
    c.data.eval_candidates = "targets"
    task = datasets.load(c, str(tmp_path)).test
    whole = datasets.load(_config("python"), str(tmp_path)).test
    assert len(task.codebase) == len(set(whole.targets.tolist())) < len(whole.codebase)
    for i, query in enumerate(task.queries):
        assert task.codebase[task.targets[i]] == whole.codebase[whole.targets[i]], query
    c.data.eval_candidates = "some"
    with pytest.raises(ValueError, match="eval_candidates"):
        datasets.check(c)


def test_also_test_candidates_gives_the_other_protocols_numbers(tmp_path):
    """data.also_test_candidates ranks the test queries a second time against the other pool: the same
    numbers as a run whose eval_candidates is that pool (zero-shot, so both runs hold the same params)."""
    model = tiny_setup.tiny_bert_folder(str(tmp_path / "model"))
    summaries = {}
    for candidates, also in (("targets", "codebase"), ("codebase", "")):
        c = _config("python,ruby", max_eval_queries=16)
        c.model.path, c.train.num_steps, c.train.num_epochs = model, 0, 0
        c.data.eval_candidates, c.data.also_test_candidates = candidates, also
        summaries[candidates] = train.train_and_evaluate(c, str(tmp_path / candidates))
    both, whole = summaries["targets"], summaries["codebase"]
    assert "zero_shot_test_codebase" not in whole
    assert "| test, before training, whole codebase |" in model_card.results_table(both)
    for key in ("mrr", "python/mrr", "ruby/mrr", "r@1", "num_queries", "codebase_size"):
        assert both["zero_shot_test_codebase"][key] == pytest.approx(whole["zero_shot_test"][key]), key
    assert both["zero_shot_test"]["codebase_size"] < both["zero_shot_test_codebase"]["codebase_size"]
    records = [json.loads(line) for line in open(tmp_path / "targets" / "metrics.jsonl")]
    assert [r["mrr"] for r in records if r["kind"] == "zero_shot_test_codebase"] == [
        pytest.approx(whole["zero_shot_test"]["mrr"])]
    c = _config("python")  # one language: the same second task
    c.data.eval_candidates, c.data.also_test_candidates = "targets", "codebase"
    one = datasets.load(c, str(tmp_path))
    assert list(one.also_test.codebase) == list(datasets.load(_config("python"), str(tmp_path)).test.codebase)
    assert len(one.test.codebase) < len(one.also_test.codebase) and one.test.queries == one.also_test.queries
    for candidates, also, match in (("codebase", "codebase", "is not"), ("targets", "all", "is not"),
                                    ("targets", "codebase", None)):
        c.data.eval_candidates, c.data.also_test_candidates = candidates, also
        if match is None:
            datasets.check(c)
        else:
            with pytest.raises(ValueError, match=f"also_test_candidates={also!r}.*{match}"):
                datasets.check(c)
    c.data.source = "poj104"
    with pytest.raises(ValueError, match="code-to-code task"):
        datasets.check(c)


def test_language_tasks_metrics_are_per_language_and_their_mean(tmp_path):
    c = _config("python,ruby", max_eval_queries=16)
    data = datasets.load(c, str(tmp_path))
    enc = cocohanere_jax.load_encoder(tiny_setup.tiny_bert_folder(str(tmp_path / "model")))
    tasks = data.test.tokenize(enc, 16, 32)
    result = tasks.evaluate(enc, batch_size=8)
    singles = {lang: evaluate.evaluate(enc, t, batch_size=8) for lang, t in tasks.tasks.items()}
    for lang, single in singles.items():
        assert result[f"{lang}/mrr"] == pytest.approx(single["mrr"])
    assert result["mrr"] == pytest.approx(np.mean([s["mrr"] for s in singles.values()]))
    assert result["num_queries"] == sum(s["num_queries"] for s in singles.values())


def test_all_languages_train_end_to_end_with_bank_negatives_on_a_schedule(tmp_path):
    """configs/registry.py:bank_negatives,language=all with an in-batch first step, same-language
    negatives and batches of one language: trains, validates and tests per language; the switches reach the step from the config
    argument (negatives_in_group would fail to compile without the languages in the token table)."""
    c = _config("all", "smoke,bank_negatives,hard_negative_start=1,negatives_in_group=True,"
                "train.lookahead_batches=2,train.lookahead_group=1,train.language_batches=True,"
                "data.also_test_candidates=targets", max_eval_queries=16)
    step = StepConfig.from_config(c.step)
    assert (step.reencode_top, step.other_negatives, step.hard_negative_start) == (0, "bank", 1)
    assert step.negatives_in_group  # the languages reach the step as the token table's groups
    c.model.path = tiny_setup.tiny_bert_folder(str(tmp_path / "model"))
    c.train.zero_shot_eval = False
    c.train.num_steps, c.train.eval_every, c.train.checkpoint_every = 3, 3, 3
    summary = train.train_and_evaluate(c, str(tmp_path / "run"))
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    train_steps = [r for r in records if r["kind"] == "train"]
    # Logged values are means over the log interval: steps 0-1 (in-batch, then hard negatives), then step 2.
    assert [(r["step"], r["hard_negative_step"]) for r in train_steps] == [(2, 0.5), (3, 1.0)]
    # Batches of one language (train.language_batches): the window's share of mixed batches is logged.
    assert all(0 <= r["language_batches_mixed"] <= 1 for r in train_steps)
    for lang in multilingual.ALL_LANGUAGES:
        assert 0 < summary["test"][f"{lang}/mrr"] <= 1
    assert summary["test"]["mrr"] == pytest.approx(
        np.mean([summary["test"][f"{lang}/mrr"] for lang in multilingual.ALL_LANGUAGES]))
    # The second protocol (data.also_test_candidates): the best-on-valid params, each query against its own
    # targets only, so never ranked lower than against the whole codebase.
    assert [r["step"] for r in records if r["kind"] == "test_targets"] == [summary["best_step"]]
    for lang in multilingual.ALL_LANGUAGES:
        assert summary["test_targets"][f"{lang}/codebase_size"] < summary["test"][f"{lang}/codebase_size"]
        assert summary["test"][f"{lang}/mrr"] <= summary["test_targets"][f"{lang}/mrr"] + 1e-6
