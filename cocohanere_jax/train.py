"""`train_and_evaluate(config, workdir)`: the way of a batch, top to bottom.

config checks -> encoder -> data -> token table -> train state (resumed if the workdir has a checkpoint)
-> compiled step -> loop { batch -> step -> metrics -> valid eval + best -> checkpoint } -> test eval of the
best-on-valid parameters -> summary -> export.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from cocohanere_jax import checkpoints, datasets, evaluate, input_pipeline, metrics, model_card, optim, sharding
from cocohanere_jax import step as step_lib
from cocohanere_jax import token_table as token_table_lib
from cocohanere_jax.models import encoder as encoder_lib
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
    datasets.check(config)
    return step_config


def _local(tree: Any) -> Any:
    """This process's copy of a replicated pytree, on one device (for evaluation and export)."""
    return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


def _evaluate(enc, params, task: evaluate.TokenizedTask, config, code_embeddings=None) -> dict[str, float]:
    return evaluate.evaluate(enc, task, params=params, batch_size=config.train.eval_batch_size,
                             code_embeddings=code_embeddings)


def _zero_shot(enc, tasks: dict[str, evaluate.TokenizedTask], shared_codebase: bool, config,
               summary: dict[str, Any], writer: metrics.MetricWriter) -> None:
    """The loaded encoder on valid and test (the reference the trained model is compared with)."""
    codes = (evaluate.embed_codebase(enc, tasks["valid"], batch_size=config.train.eval_batch_size)
             if shared_codebase else None)
    for split, task in tasks.items():
        result = _evaluate(enc, enc.params, task, config, codes)
        summary[f"zero_shot_{split}"] = result
        writer.write(0, result, kind=f"zero_shot_{split}")
        log.info("zero-shot %s: %s", split, evaluate.format_metrics(result))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains with CoCoHaNeRe, evaluating on valid, and reports test MRR of the best-on-valid params.

    Resumes from the latest checkpoint in `workdir`. With `train.num_steps == 0` and `train.num_epochs == 0`
    it only evaluates the encoder as loaded (zero-shot). Returns the summary (also `workdir/summary.json`).
    """
    t_start = time.time()
    mesh = sharding.make_mesh()
    step_config = check_config(config, mesh.size)
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    writer = metrics.MetricWriter(workdir, enabled=is_main)
    if is_main:  # the run's config, for export from any saved step and for the record
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
            f.write(config.to_json(indent=2))

    enc = encoder_lib.load_encoder(
        config.model.path, pooling=config.model.pooling, dtype=DTYPES[config.model.dtype], remat=config.model.remat
    )
    data = datasets.load(config, workdir)
    valid_task, test_task = (
        evaluate.tokenize_task(enc, t, config.data.query_length, config.data.code_length) for t in (data.valid, data.test)
    )
    tasks = {"valid": valid_task, "test": test_task}
    log.info("data: %s; %d train pairs, valid %d queries / %d codes, test %d queries / %d codes",
             data.description, len(data.train), len(data.valid.queries), len(data.valid.codebase),
             len(data.test.queries), len(data.test.codebase))
    tokens = token_table_lib.token_table_from_pairs(
        data.train, enc.tokenize, enc.fingerprint, config.data.query_length, config.data.code_length,
        cache_dir=config.data.cache_dir or os.path.join(workdir, "cache"), pad_id=enc.pad_id,
    )
    iterator = input_pipeline.BatchIterator(
        len(tokens), config.train.global_batch_size, config.train.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    total_steps = config.train.num_steps or math.ceil(config.train.num_epochs * iterator.steps_per_epoch)
    summary: dict[str, Any] = {"data": data.description, "train_pairs": len(tokens), "total_steps": total_steps,
                               "devices": mesh.size, "processes": jax.process_count()}
    # GraphCodeBERT layout: valid and test rank against one codebase; embed it once per set of parameters.
    shared_codebase = evaluate.same_codebase(valid_task, test_task)
    if total_steps == 0:
        _zero_shot(enc, tasks, shared_codebase, config, summary, writer)
        return _finish(summary, workdir, t_start, is_main)

    # The train state: shapes first (nothing allocated), then restored into them or born on the devices.
    optimizer = optim.make_optimizer(step_config, total_steps)
    state_spec = sharding.replicated_abstract(
        step_lib.abstract_train_state(enc.params, optimizer, step_config, enc.dim, config.train.seed), mesh)
    table = sharding.replicate(tokens.device_view(step_config.token_table), mesh)
    train_step = step_lib.make_train_step(
        enc.module, optimizer, step_config, mesh, pad_id=enc.pad_id,
        host_table=tokens if step_config.token_table == "host" else None,
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
            _zero_shot(enc, tasks, shared_codebase, config, summary, writer)
    best = ckpt.best_meta() or {}
    best_mrr = best.get("valid", {}).get("mrr", -math.inf)

    # Compile before the first batch: errors and memory show up now (maxtext).
    batch_spec = tokens.batch_spec(config.train.global_batch_size, sharding.batch_sharding(mesh))
    t_compile = time.time()
    compiled = train_step.lower(state_spec, batch_spec, table).compile()
    memory = compiled.memory_analysis()
    log.info("step compiled in %.1f s%s", time.time() - t_compile,
             f"; memory: {_memory_line(memory)}" if memory is not None else "")

    try:
        progress = metrics.Progress(total_steps, start, config.train.global_batch_size)
        sums, count = None, 0
        last_codes = None  # (step, codebase embeddings) of the last validation, for the test of that step
        nonfinite = jnp.zeros((), bool)  # device-side: any non-finite loss since the start (no host sync)
        for done in range(start + 1, total_steps + 1):
            batch = sharding.shard_batch(tokens.batch(next(iterator)), mesh)
            state, step_metrics = compiled(state, batch, table)
            nonfinite = nonfinite | ~jnp.isfinite(step_metrics["loss"])
            sums = step_metrics if sums is None else jax.tree.map(jnp.add, sums, step_metrics)
            count += 1

            last = done == total_steps
            if done % config.train.log_every == 0 or last:
                values = {k: float(v) / count for k, v in jax.device_get(sums).items()}
                sums, count = None, 0
                _stop_if_nonfinite(nonfinite, done, workdir)
                values.update(progress.measure(done))
                writer.write(done, values)
                log.info(metrics.Progress.line(done, total_steps, values))
            if done % config.train.eval_every == 0 or last:
                _stop_if_nonfinite(nonfinite, done, workdir)
                params = _local(state.params)
                codes = None
                if shared_codebase:
                    codes = evaluate.embed_codebase(enc, valid_task, params, config.train.eval_batch_size)
                    last_codes = (done, codes)
                result = _evaluate(enc, params, valid_task, config, codes)
                writer.write(done, result, kind="valid")
                log.info("valid at %d: %s%s", done, evaluate.format_metrics(result),
                         " (best so far)" if result["mrr"] > best_mrr else "")
                if result["mrr"] > best_mrr:
                    best_mrr = result["mrr"]
                    ckpt.save_best(done, state.params, {"step": done, "valid": result})
            if done % config.train.checkpoint_every == 0 or last:
                _stop_if_nonfinite(nonfinite, done, workdir)
                ckpt.save(done, state, {"iterator": iterator.state(), "step": done})
    finally:
        ckpt.wait()  # an exception (or a kill signal turned into one) still completes the in-flight save

    best_params, best_meta = ckpt.restore_best_params(_local(state.params))
    summary["best_valid"] = best_meta["valid"]
    summary["best_step"] = best_meta["step"]
    # When the best step is this process's last validation, its codebase embeddings serve the test.
    reuse = last_codes[1] if last_codes is not None and last_codes[0] == best_meta["step"] else None
    summary["test"] = _evaluate(enc, best_params, test_task, config, reuse)
    writer.write(best_meta["step"], summary["test"], kind="test")
    log.info("test (best-on-valid step %d): %s", best_meta["step"], evaluate.format_metrics(summary["test"]))
    if config.train.export_best and is_main:
        summary["export"] = enc.with_params(best_params).export(os.path.join(workdir, "export"))
        model_card.write_model_card(summary["export"], config.to_dict(), summary)
    ckpt.close()
    return _finish(summary, workdir, t_start, is_main)


def _stop_if_nonfinite(flag: jax.Array, step: int, workdir: str) -> None:
    if bool(flag):
        raise NonFiniteLossError(
            f"the training loss became NaN or inf at or before step {step}; stopped without saving. The last "
            f"good checkpoint is in {workdir}/checkpoints (restarting resumes from it). Lower "
            "config.step.learning_rate, raise config.step.temperature, or check the data."
        )


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
