"""`train_and_evaluate(config, workdir)`: the way of a batch, top to bottom.

config checks -> encoder -> data -> token table -> train state (resumed if the workdir has a checkpoint)
-> compiled step -> loop { batch -> step -> metrics -> valid eval + best -> checkpoint } -> test eval of the
best-on-valid parameters -> summary -> export.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from cocohanere_jax import checkpoints, clone_tasks, datasets, evaluate, input_pipeline, metrics, model_card, optim
from cocohanere_jax import multilingual
from cocohanere_jax import preemption, reencode
from cocohanere_jax import sharding
from cocohanere_jax import step as step_lib
from cocohanere_jax import token_table as token_table_lib
from cocohanere_jax.models import encoder as encoder_lib
from cocohanere_jax.models import layers
from cocohanere_jax.step_config import StepConfig

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; the checkpoints on disk are from before it."""


def check_config(config: ml_collections.ConfigDict, num_devices: int) -> StepConfig:
    """Every config error that needs no data, raised before anything is loaded or compiled."""
    try:
        step_config = StepConfig.from_config(config.step)
    except ValueError as e:
        raise ValueError(f"config.step: {e}") from None
    batch = config.train.global_batch_size
    if batch < 1 or batch % num_devices:
        raise ValueError(
            f"config.train.global_batch_size={batch} must be a positive multiple of the {num_devices} devices "
            f"(jax.device_count()); use e.g. {max(1, batch // num_devices) * num_devices or num_devices}."
        )
    if batch % jax.process_count():
        raise ValueError(f"config.train.global_batch_size={batch} must divide by the {jax.process_count()} processes.")
    if config.model.dtype not in DTYPES:
        raise ValueError(f"config.model.dtype={config.model.dtype!r} is not one of {sorted(DTYPES)}.")
    if config.model.attention_probs not in layers.ATTENTION_PROBS:
        raise ValueError(f"config.model.attention_probs={config.model.attention_probs!r} is not one of "
                         f"{layers.ATTENTION_PROBS} (cocohanere_jax/models/layers.py).")
    path = encoder_lib.resolve_model_path(config.model.path)
    if not path or not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"config.model.path={config.model.path!r}: no Hugging Face model folder there (config.json missing). "
            "Set --config.model.path to a local folder, e.g. one where you saved "
            "Salesforce/codet5p-110m-embedding with save_pretrained; nothing is downloaded."
        )
    for key in ("log_every", "eval_every", "checkpoint_every"):
        if config.train[key] < 1:
            raise ValueError(f"config.train.{key}={config.train[key]} must be >= 1.")
    if config.train.get("on_nonfinite", "stop") not in ("stop", "rollback"):
        raise ValueError(f"config.train.on_nonfinite={config.train.on_nonfinite!r} must be 'stop' or 'rollback'.")
    if config.train.get("max_rollbacks", 0) < 0:
        raise ValueError(f"config.train.max_rollbacks={config.train.max_rollbacks} must be >= 0.")
    lookahead = config.train.get("lookahead_batches", 0)
    if lookahead < 0:
        raise ValueError(f"config.train.lookahead_batches={lookahead} must be >= 0 (0: batches in the iterator's order).")
    group = config.train.get("lookahead_group", 2)
    if lookahead and (group < 1 or batch % group):
        raise ValueError(f"config.train.lookahead_group={group} must divide config.train.global_batch_size={batch} "
                         "(each batch is whole groups of an anchor and its nearest neighbours).")
    if config.train.get("language_batches", False) and not lookahead:
        raise ValueError("config.train.language_batches=True draws each window's batches per language: set "
                         "config.train.lookahead_batches (the window, e.g. 32) too, with lookahead_group=1 to "
                         "keep the iterator's pairs ungrouped (nothing is embedded then).")
    datasets.check(config)
    return step_config


def _languages(config, tokens: token_table_lib.TokenTable):
    """The language of each DataID when config.train.language_batches asks for batches of one language."""
    if not config.train.get("language_batches", False):
        return None
    if tokens.groups is None:  # configs/repo.py sets it for whatever language(s) the tree turns out to have
        logging.info("config.train.language_batches=True: this job has one language, so its batches are of one "
                     "language already; the iterator's order is kept.")
        return None
    return tokens.groups


def _local(tree: Any) -> Any:
    """This process's copy of a replicated pytree, on one device (for evaluation and export)."""
    return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


def _tokenize(enc, task, config):
    """A valid/test task with its token ids: retrieval (queries vs codebase) or a code-to-code task."""
    if isinstance(task, multilingual.LanguageTasks):  # one retrieval task per language
        return task.tokenize(enc, config.data.query_length, config.data.code_length)
    if hasattr(task, "tokenize"):  # clone_tasks.GroupTask / PairTask: code on both sides
        return task.tokenize(enc, config.data.code_length)
    return evaluate.tokenize_task(enc, task, config.data.query_length, config.data.code_length)


def _metric(task) -> str:
    """The result key that selects the best step: MRR for retrieval, the task's own metric otherwise."""
    return getattr(task, "metric", "mrr")


def _evaluate(enc, params, task, config, code_embeddings=None, mesh=None, **options) -> dict[str, float]:
    """One evaluation, embedded over ``mesh`` (each device its share; eval_batch_size rows per device)."""
    if hasattr(task, "evaluate"):  # clone_tasks: MAP@R, or F1 at a threshold (options: threshold)
        return task.evaluate(enc, params, batch_size=config.train.eval_batch_size, mesh=mesh, **options)
    return evaluate.evaluate(enc, task, params=params, batch_size=config.train.eval_batch_size,
                             code_embeddings=code_embeddings, mesh=mesh)


def _zero_shot(enc, tasks: dict[str, evaluate.TokenizedTask], shared_codebase: bool, config,
               summary: dict[str, Any], writer: metrics.MetricWriter, mesh, also_test=None) -> None:
    """The loaded encoder on valid and test (the reference the trained model is compared with), and on the
    test's second pool where one is asked for (``zero_shot_test_<pool>``)."""
    codes = (evaluate.embed_codebase(enc, tasks["valid"], batch_size=config.train.eval_batch_size, mesh=mesh)
             if shared_codebase else None)
    threshold = None  # BigCloneBench: test at the threshold chosen on valid
    for split, task in tasks.items():
        result = _evaluate(enc, enc.params, task, config, codes, mesh,
                           **({"threshold": threshold} if threshold is not None else {}))
        threshold = result.get("threshold")
        summary[f"zero_shot_{split}"] = result
        writer.write(0, result, kind=f"zero_shot_{split}")
        log.info("zero-shot %s: %s", split, clone_tasks.format_result(result))
    _also_test(enc, enc.params, also_test, config, summary, writer, mesh, 0, prefix="zero_shot_")


def _also_test(enc, params, task, config, summary: dict[str, Any], writer: metrics.MetricWriter, mesh, step: int,
               prefix: str = "") -> None:
    """The test queries ranked a second time, against the pool ``config.data.also_test_candidates`` names
    (the whole codebase, or the queries' own targets; ``task``, tokenised): ``summary[f"{prefix}test_{pool}"]``."""
    if task is None:
        return
    pool = config.data.also_test_candidates
    key = f"{prefix}test_{pool}"
    summary[key] = _evaluate(enc, params, task, config, None, mesh)
    writer.write(step, summary[key], kind=key)
    when = "zero-shot" if prefix else f"best-on-valid step {step}"
    log.info("test against %s (%s): %s", "the whole codebase" if pool == "codebase" else "the queries' own codes",
             when, clone_tasks.format_result(summary[key]))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains with CoCoHaNeRe, evaluating on valid, and reports test MRR of the best-on-valid params.

    Resumes from the latest checkpoint in `workdir`. With `train.num_steps == 0` and `train.num_epochs == 0`
    it only evaluates the encoder as loaded (zero-shot). Returns the summary (also `workdir/summary.json`).
    """
    t_start = time.time()
    mesh = sharding.make_mesh()
    # Evaluation embeds over the whole mesh (every process's devices, each its share of the rows).
    eval_mesh = mesh
    step_config = check_config(config, mesh.size)
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    writer = metrics.MetricWriter(workdir, enabled=is_main)
    if is_main:  # the run's config, for export from any saved step and for the record
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
            f.write(config.to_json(indent=2))

    enc = encoder_lib.load_encoder(
        config.model.path, pooling=config.model.pooling, dtype=DTYPES[config.model.dtype], remat=config.model.remat,
        scan_layers=config.model.scan_layers, attention_probs=config.model.attention_probs,
    )
    data = datasets.load(config, workdir)
    valid_task, test_task = (_tokenize(enc, t, config) for t in (data.valid, data.test))
    metric = _metric(valid_task)
    tasks = {"valid": valid_task, "test": test_task}
    # config.data.also_test_candidates: the test queries against the other pool, after the test
    also_test = _tokenize(enc, data.also_test, config) if data.also_test is not None else None
    log.info("data: %s; %d train pairs, valid %d queries / %d codes, test %d queries / %d codes%s",
             data.description, len(data.train), len(data.valid.queries), len(data.valid.codebase),
             len(data.test.queries), len(data.test.codebase),
             f"; the test queries again against {len(data.also_test.codebase)} codes (data.also_test_candidates)"
             if data.also_test is not None else "")
    tokens = token_table_lib.token_table_from_pairs(
        data.train, enc.tokenize, enc.fingerprint, config.data.query_length, config.data.code_length,
        cache_dir=config.data.cache_dir or os.path.join(workdir, "cache"), pad_id=enc.pad_id,
    )
    if data.train_labels is not None:  # code-to-code: the label table is what the duplicate mask compares
        tokens = dataclasses.replace(tokens, query_hash=data.train_labels, code_hash=None)
    if data.train_groups is not None:  # several languages: the language of each DataID (step.negatives_in_group)
        tokens = dataclasses.replace(tokens, groups=data.train_groups)
    evaluate_only = not config.train.num_steps and not config.train.num_epochs
    iterator = None if evaluate_only else input_pipeline.BatchIterator(
        len(tokens), config.train.global_batch_size, config.train.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    if iterator is not None and config.train.get("lookahead_batches", 0):
        def embed_window(ids):  # the parameters being trained (`state` below), no dropout
            return evaluate.embed_ids_sharded(enc, tokens.query_ids[ids], eval_mesh, params=_local(state.params))

        iterator = input_pipeline.LookaheadBatches(
            iterator, config.train.lookahead_batches, config.train.lookahead_group, embed_window,
            # Neighbour groups within a language: asked for (negatives_in_group), or implied by batches of one
            # language (a group across languages would make its batch a mixed one).
            groups=tokens.groups if step_config.negatives_in_group or config.train.get("language_batches") else None,
            keys=[h for h in (tokens.query_hash, tokens.code_hash) if h is not None],
            languages=_languages(config, tokens))
    total_steps = 0 if evaluate_only else (
        config.train.num_steps or math.ceil(config.train.num_epochs * iterator.steps_per_epoch))
    summary: dict[str, Any] = {"data": data.description, "train_pairs": len(tokens), "total_steps": total_steps,
                               "devices": mesh.size, "processes": jax.process_count()}
    # GraphCodeBERT layout: valid and test rank against one codebase; embed it once per set of parameters.
    shared_codebase = isinstance(valid_task, evaluate.TokenizedTask) and evaluate.same_codebase(valid_task, test_task)
    if total_steps == 0:
        _zero_shot(enc, tasks, shared_codebase, config, summary, writer, eval_mesh, also_test)
        return _finish(summary, workdir, t_start, is_main)

    # The train state: shapes first (nothing allocated), then restored into them or born on the devices.
    optimizer = optim.make_optimizer(step_config, total_steps)
    state_spec = sharding.replicated_abstract(
        step_lib.abstract_train_state(enc.params, optimizer, step_config, enc.dim, config.train.seed), mesh)
    table = sharding.replicate(tokens.device_view(step_config.token_table), mesh)
    platform = mesh.devices.flat[0].platform
    if step_config.for_platform(platform).length_buckets != step_config.length_buckets:
        log.info("step: every row padded to its cap on %s (config.step.length_aware_on=%r; \"all\" keeps the "
                 "length-aware path, measured slower on a GPU: benchmarks/RESULTS.md)", platform,
                 step_config.length_aware_on)
    train_step = step_lib.make_train_step(
        enc.module, optimizer, step_config, mesh, pad_id=enc.pad_id,
        host_table=tokens if step_config.token_table == "host" else None,
        length_stats=reencode.LengthStats.from_table(tokens),
    )

    ckpt = checkpoints.Checkpointer(workdir, keep=config.train.keep_checkpoints)
    # The newest checkpoint that passes its integrity check and restores; damaged ones are set aside.
    restored = ckpt.restore_latest(state_spec)
    start = restored[0] if restored else 0
    if restored:
        _, state, meta = restored
        iterator.restore(meta["iterator"])
        log.info("resumed from %s/checkpoints/%d", workdir, start)
    else:
        state = sharding.init_replicated(
            lambda params: step_lib.init_train_state(params, optimizer, step_config, enc.dim, config.train.seed),
            enc.params, mesh=mesh)
        if config.train.zero_shot_eval:
            _zero_shot(enc, tasks, shared_codebase, config, summary, writer, eval_mesh, also_test)
    best = ckpt.best_meta() or {}
    best_score = best.get("valid", {}).get(metric, -math.inf)

    # Compile before the first batch: errors and memory show up now (maxtext).
    # With the device table the host sends DataIDs only; the step gathers the rows where they live.
    send_rows = step_config.token_table == "host"
    batch_spec = tokens.batch_spec(config.train.global_batch_size, sharding.batch_sharding(mesh), token_rows=send_rows)
    t_compile = time.time()
    compiled = train_step.lower(state_spec, batch_spec, table).compile()
    memory = compiled.memory_analysis()
    log.info("step compiled in %.1f s%s", time.time() - t_compile,
             f"; memory: {_memory_line(memory)}" if memory is not None else "")

    # Non-finite losses: one device boolean per step since the last check, fetched together at the next
    # log / eval / checkpoint boundary (no host sync per step). on_nonfinite="rollback" restores the newest
    # checkpoint, discards the batch whose step went non-finite and goes on, at most train.max_rollbacks times.
    guard = _NonFiniteGuard(config, workdir, writer, restored[2] if restored else {},
                            None if restored else iterator.state())

    def roll_back(done: int):
        """(step, state) after a rollback from `done`: the newest good checkpoint, or the initial state."""
        back, state = guard.rollback(ckpt, state_spec, iterator, done)
        if state is None:
            state = sharding.init_replicated(
                lambda params: step_lib.init_train_state(params, optimizer, step_config, enc.dim, config.train.seed),
                enc.params, mesh=mesh)
        return back, state

    # Preemption: SIGTERM (preemption.install, in main.py) only sets a flag; the loop stops at a step boundary
    # with a checkpoint. With several processes they agree by an allgather every `sync_every` steps.
    sync_every = max(1, min(config.train.log_every, 10))
    try:
        progress = metrics.Progress(total_steps, start, config.train.global_batch_size)
        sums, count = None, 0
        last_codes = None  # (step, codebase embeddings) of the last validation, for the test of that step
        done = start
        while done < total_steps:
            done += 1
            guard.discard_planned(done, iterator)
            batch = sharding.shard_batch(tokens.batch(next(iterator), token_rows=send_rows), mesh)
            state, step_metrics = compiled(state, batch, table)
            guard.record(done, step_metrics["loss"])
            sums = step_metrics if sums is None else jax.tree.map(jnp.add, sums, step_metrics)
            count += 1

            last = done == total_steps
            boundary = any(done % config.train[k] == 0 for k in ("log_every", "eval_every", "checkpoint_every"))
            if (boundary or last) and guard.nonfinite(done):  # raises in mode "stop"; else roll back
                done, state = roll_back(done)
                sums, count = None, 0
                progress = metrics.Progress(total_steps, done, config.train.global_batch_size)
                if last_codes is not None and last_codes[0] > done:
                    last_codes = None
                continue
            if done % config.train.log_every == 0 or last:
                values = {k: float(v) / count for k, v in jax.device_get(sums).items()}
                sums, count = None, 0
                values.update(progress.measure(done))
                values.update(getattr(iterator, "stats", {}))  # look-ahead: the last window's grouping
                writer.write(done, values)
                log.info(metrics.Progress.line(done, total_steps, values))
            if done % config.train.eval_every == 0 or last:
                params = _local(state.params)
                codes = None
                if shared_codebase:
                    codes = evaluate.embed_codebase(enc, valid_task, params, config.train.eval_batch_size, mesh=eval_mesh)
                    last_codes = (done, codes)
                result = _evaluate(enc, params, valid_task, config, codes, eval_mesh)
                writer.write(done, result, kind="valid")
                log.info("valid at %d: %s%s", done, clone_tasks.format_result(result),
                         " (best so far)" if result[metric] > best_score else "")
                if result[metric] > best_score:
                    best_score = result[metric]
                    ckpt.save_best(done, state.params, {"step": done, "valid": result})
            if done % config.train.checkpoint_every == 0 or last:
                ckpt.save(done, state, guard.meta(done, iterator))
            if not last and preemption.should_stop(done, sync_every=sync_every):
                if guard.nonfinite(done):  # never checkpoint a non-finite state: go back first
                    done, state = roll_back(done)
                if ckpt.latest_step() != done:
                    ckpt.save(done, state, guard.meta(done, iterator))
                ckpt.wait()
                stop = preemption.Preempted(done, workdir)
                log.warning("%s", stop)
                raise stop
    finally:
        ckpt.wait()  # an exception (or a second SIGTERM) still completes the in-flight save

    summary["rollbacks"] = guard.rollbacks
    summary["skipped_batches"] = guard.skipped
    best_params, best_meta = ckpt.restore_best_params(_local(state.params))
    summary["best_valid"] = best_meta["valid"]
    summary["best_step"] = best_meta["step"]
    # When the best step is this process's last validation, its codebase embeddings serve the test.
    reuse = last_codes[1] if last_codes is not None and last_codes[0] == best_meta["step"] else None
    threshold = best_meta["valid"].get("threshold")  # BigCloneBench: the valid threshold, applied to test
    summary["test"] = _evaluate(enc, best_params, test_task, config, reuse, eval_mesh,
                                **({"threshold": threshold} if threshold is not None else {}))
    writer.write(best_meta["step"], summary["test"], kind="test")
    log.info("test (best-on-valid step %d): %s", best_meta["step"], clone_tasks.format_result(summary["test"]))
    _also_test(enc, best_params, also_test, config, summary, writer, eval_mesh, best_meta["step"])
    if config.train.export_best and is_main:
        summary["export"] = enc.with_params(best_params).export(os.path.join(workdir, "export"))
        model_card.write_model_card(summary["export"], config.to_dict(), summary)
    ckpt.close()
    return _finish(summary, workdir, t_start, is_main)


class _NonFiniteGuard:
    """Watches the loss for NaN/inf without a host sync per step; stops or rolls back (config.train.on_nonfinite).

    A rollback restores the newest good checkpoint and discards the batch of the first non-finite step (the
    steps after it ran on a state that was already non-finite); the optimizer step count does not advance for
    a discarded batch. The discarded batches and the rollback count go into every checkpoint's meta, so a
    restart replays the same run: from a checkpoint older than a rollback it meets the same non-finite step
    and makes the same decision.
    """

    def __init__(self, config, workdir: str, writer: metrics.MetricWriter, meta: dict, initial_iterator):
        self.mode = config.train.get("on_nonfinite", "stop")  # configs saved before these keys: stop
        self.max_rollbacks = int(config.train.get("max_rollbacks", 0))
        self.workdir, self.writer = workdir, writer
        self.initial_iterator = initial_iterator  # for a rollback before the first checkpoint
        self.skipped: list[dict] = list(meta.get("skipped_batches", []))  # batches discarded so far
        self.rollbacks = int(meta.get("rollbacks", 0))
        self.plan: dict[int, int] = {}  # step -> batches to discard before drawing that step's batch
        self.flags: list[tuple[int, jax.Array]] = []  # (step, device bool "loss finite") since the last check
        self.first_bad = 0

    def record(self, step: int, loss: jax.Array) -> None:
        self.flags.append((step, jnp.isfinite(loss)))

    def nonfinite(self, step: int) -> bool:
        """At a boundary: False when every loss since the last check was finite; True when the caller is to
        roll back; raises NonFiniteLossError in mode "stop" or when no rollback is left."""
        if not self.flags:
            return False
        finite = jax.device_get([f for _, f in self.flags])
        bad = [s for (s, _), ok in zip(self.flags, finite) if not bool(ok)]
        self.flags = []
        if not bad:
            return False
        self.first_bad = bad[0]
        if self.mode == "stop" or self.rollbacks >= self.max_rollbacks:
            extra = (f" after {self.rollbacks} rollback(s) (config.train.max_rollbacks={self.max_rollbacks}; "
                     f"batches skipped at steps {[b['step'] for b in self.skipped]})" if self.mode == "rollback"
                     else "; config.train.on_nonfinite=rollback skips the offending batch instead")
            raise NonFiniteLossError(
                f"the training loss became NaN or inf at step {bad[0]} (seen at step {step}){extra}. Stopped "
                f"without saving: the last good checkpoint is in {self.workdir}/checkpoints (restarting resumes "
                "from it). Lower config.step.learning_rate, raise config.step.temperature, or check the data."
            )
        return True

    def rollback(self, ckpt: checkpoints.Checkpointer, state_spec, iterator, step: int) -> tuple[int, Any]:
        """Restores the newest good checkpoint (state None: none yet, start over) and plans to discard the
        first non-finite step's batch; batches discarded after that checkpoint are discarded again."""
        bad, before = self.first_bad, self.skipped
        restored = ckpt.restore_latest(state_spec)
        if restored is not None:
            back, state, meta = restored
            iterator.restore(meta["iterator"])
            self.skipped = list(meta.get("skipped_batches", []))
        else:
            back, state = 0, None
            iterator.restore(self.initial_iterator)
            self.skipped = []
        self.plan = {}
        for s in [r["step"] for r in before if r["step"] > back] + [bad]:
            self.plan[s] = self.plan.get(s, 0) + 1
        self.rollbacks += 1
        self.flags = []
        where = f"checkpoint {back}" if restored is not None else "the initial state (no checkpoint yet)"
        log.warning("non-finite loss at step %d (seen at step %d): rollback %d of %d to %s; the batch of step %d "
                    "will be skipped", bad, step, self.rollbacks, self.max_rollbacks, where, bad)
        self.writer.write(step, {"nonfinite_step": bad, "rolled_back_to": back, "rollbacks": self.rollbacks},
                          kind="rollback")
        return back, state

    def discard_planned(self, step: int, iterator) -> None:
        """Before drawing the batch of `step`: draws and discards the batches planned for it."""
        for _ in range(self.plan.pop(step, 0)):
            position = iterator.state()
            ids = next(iterator)
            record = {"step": step, "epoch": position["epoch"], "position": position["position"],
                      "data_ids": [int(i) for i in ids]}
            self.skipped.append(record)
            self.writer.write(step, {k: v for k, v in record.items() if k != "step"}, kind="skipped")
            log.warning("skipped the batch of step %d (epoch %d, position %d; this process's DataIDs %s)", step,
                        record["epoch"], record["position"], record["data_ids"])

    def meta(self, step: int, iterator) -> dict:
        return {"iterator": iterator.state(), "step": step, "skipped_batches": self.skipped,
                "rollbacks": self.rollbacks}


def _memory_line(memory) -> str:
    """XLA's compiled memory analysis in GiB (arguments, outputs, temporaries)."""
    gib = lambda n: f"{n / 2**30:.2f} GiB"  # noqa: E731
    fields = (("arguments", "argument_size_in_bytes"), ("outputs", "output_size_in_bytes"),
              ("temporaries", "temp_size_in_bytes"))
    return ", ".join(f"{name} {gib(getattr(memory, attr))}" for name, attr in fields if hasattr(memory, attr))


def _finish(summary: dict[str, Any], workdir: str, t_start: float, is_main: bool) -> dict[str, Any]:
    summary["seconds"] = time.time() - t_start
    if is_main:
        with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o))
        print(f"\n{model_card.results_table(summary)}\n\n{summary['seconds'] / 60:.1f} min; "
              f"{workdir}/summary.json, metrics.jsonl" + (f", {summary['export']}" if "export" in summary else ""))
    return summary
