"""Shared defaults: the paper's hyper-parameters (docs/METHOD.md section 5) on a CodeT5+ 110M embedding model.

Every config file builds on `base()` and changes a few fields, then passes its argument to `finish`. The
argument (big_vision style) is a comma-separated list of presets and `key=value` settings, applied in order:

    --config=configs/csn_java.py:smoke                  # a seconds-long run for tests and wiring checks
    --config=configs/default.py:in_batch,k=5,train.seed=1

A key is `section.field` or, where only one section has it, the bare field (`k` = `step.k`); values are
Python literals (`0.1`, `True`, `None`, `"bi"` or bare `bi`; no commas inside values). Presets: `smoke` (alias
`runlocal`), `zero_shot` (evaluate only), the paper's ablation variants `full`, `in_batch` (alias `wo_hncl`),
`wo_bcl`, `uni_knn`, and the cost-aware variants `forward_only`, `bank_negatives`, `top1` (docs/METHOD.md
section 9). An unknown key or
preset is an error naming it and listing what is known. `--config.section.field=value` flags apply after.
"""

import ast

import ml_collections

from cocohanere_jax import step_config


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    c.model.path = ""  # local Hugging Face folder; "pkg:<module>/<subdir>" resolves inside an installed package
    c.model.pooling = ml_collections.config_dict.placeholder(str)  # None: from the folder (CodeT5+ head / sentence-transformers pooling / CLS)
    c.model.dtype = "float32"  # compute dtype: "float32" or "bfloat16" (parameters stay float32)
    c.model.remat = False  # rematerialise encoder blocks in the backward pass
    c.model.scan_layers = False  # True: one nn.scan over the layers (stacked params): compiles 2.5x faster, steps ~10% slower on CPU
    c.model.attention_probs = "autodiff"  # "float32"/"compute": keep only attention's probabilities (in float32/model.dtype) and mask for the backward pass (layers.ATTENTION_PROBS); level on CPU, not yet measured on a GPU

    c.data = ml_collections.ConfigDict()
    c.data.source = "codesearchnet"  # "codesearchnet" (GraphCodeBERT-filtered or raw CSN v2), "cosqa", "stdlib"
    c.data.root = ""  # dataset directory (CodeSearchNet: holds <language>/...)
    c.data.language = "java"
    c.data.query_length = 128  # tokens
    c.data.code_length = 256  # tokens
    c.data.cache_dir = ""  # tokenised-array cache; "" = <workdir>/cache
    c.data.strict = False  # True: the first bad input row raises (file:line) instead of being skipped+counted
    c.data.max_train_pairs = 0  # 0 = all; else the first N (smoke tests, quick experiments)
    c.data.max_eval_queries = 0  # 0 = all queries (of each language)
    # Candidates of each query: "codebase" (the whole codebase: GraphCodeBERT's protocol) or "targets" (the
    # evaluated queries' own codes only: N queries against their N codes, CodeSearchNet-challenge style).
    c.data.eval_candidates = "codebase"
    # The test queries ranked a second time against the other pool ("codebase" or "targets"; "" = no), reported
    # beside the test as `test_<pool>` (and the zero-shot test as `zero_shot_test_<pool>`; summary.json,
    # metrics.jsonl, model card): one run gives both protocols' numbers.
    c.data.also_test_candidates = ""

    # The CoCoHaNeRe step: every field of cocohanere_jax.step_config.StepConfig with its default, the one
    # source of the step's defaults (each field is documented there). The paper's settings are those
    # defaults: temperature 0.05, k 10, bank 8,096, bi-knn, AdamW lr 3e-5 eps 1e-8 wd 0.01, linear decay
    # without warmup, clip 1.0, duplicate masking on.
    c.step = step_config.config_dict()

    c.train = ml_collections.ConfigDict()
    c.train.global_batch_size = 32  # over all devices and processes
    c.train.num_epochs = 10.0  # the usual CodeSearchNet fine-tuning budget (GraphCodeBERT, UniXcoder)
    c.train.num_steps = 0  # > 0 overrides num_epochs; 0 with num_epochs = 0: evaluate only (zero-shot)
    c.train.seed = 0
    c.train.log_every = 50
    c.train.eval_every = 1000  # validation MRR every N steps (and at the end); the best is kept
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    c.train.eval_batch_size = 128
    c.train.zero_shot_eval = True  # evaluate the loaded encoder on valid and test before training (reference)
    c.train.export_best = True  # write the best-on-valid model as a Hugging Face folder in <workdir>/export
    # A NaN/inf loss (checked at each log / eval / checkpoint step): "stop" raises NonFiniteLossError;
    # "rollback" restores the newest checkpoint, skips the batch of the first non-finite step (counted in
    # summary.json "skipped_batches" and metrics.jsonl) and goes on, at most max_rollbacks times, then stops.
    c.train.on_nonfinite = "stop"
    c.train.max_rollbacks = 3
    # Look-ahead neighbour batches (docs/METHOD.md section 9): every lookahead_batches batches, the coming
    # window's queries are embedded by the model being trained and the window regrouped so that each batch is
    # groups of lookahead_group pairs, an anchor and its nearest neighbours (in its language with
    # step.negatives_in_group). 0: batches in the iterator's order. language_batches (several languages):
    # each window's batches are of one language each (groups kept whole; lookahead_group=1: no grouping,
    # nothing embedded), the negatives a per-language metric sees.
    c.train.update(ITERATOR_ORDER)
    return c


ITERATOR_ORDER = dict(lookahead_batches=0, lookahead_group=2, language_batches=False)  # the iterator's batches


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks any config to a seconds-long run that exercises every part of the job."""
    c.data.query_length = 16
    c.data.code_length = 32
    c.data.max_train_pairs = 64
    c.data.max_eval_queries = 16
    c.step.k = 2
    c.step.bank_size = 32
    c.step.length_buckets = 1  # one length per cap (still length-aware: queries 16, codes 32): compiles fast
    c.step.length_plan = "never"  # plans compile a program per group; tests/test_train.py:test_smoke_run keeps one
    c.train.global_batch_size = 8
    c.train.num_steps = 6
    c.train.log_every = 2
    c.train.eval_every = 3
    c.train.checkpoint_every = 3
    c.train.eval_batch_size = 16
    c.train.export_best = False
    return c


def codet5p(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The CodeT5+ 110M embedding model at the paper's 128/256 tokens. Its length-aware step (CPU) packs rows
    and runs chunks of 2 packed rows: on CPU, batch 2, k 10, 1.08-1.33x faster per round than the bucketed
    chunks of 4 rows, paired (benchmarks/RESULTS.md, "Packed rows"), which ran 1.24-1.37x faster than chunks
    of 8 ("The CodeT5+ step against a real bank on a Xeon")."""
    c.model.path = "models/codet5p-110m-embedding"
    c.step.length_pack = True
    c.step.length_chunk = 2
    return c


def codesearchnet(language: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """CodeSearchNet `language` (GraphCodeBERT-filtered) with the CodeT5+ 110M embedding model."""
    c = codet5p(base())
    c.data.source = "codesearchnet"
    c.data.root = "datasets/codesearchnet"
    c.data.language = language
    return finish(c, arg)


def _variant(**step):
    """A loss preset: the given step fields, batches in the iterator's order (no look-ahead regrouping, so
    that `configs/default.py:full` is the paper's step whatever order the config file chose)."""
    def apply(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        for key, value in step.items():
            c.step[key] = value
        c.train.update(ITERATOR_ORDER)
        return c

    return apply


def _lookahead_batch(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """In-batch training whose batches are groups of 4 nearest pairs from the coming 32 batches."""
    _variant(bimodal_weight=1.0, hard_negative_weight=0.0)(c)
    c.train.lookahead_batches = 32
    c.train.lookahead_group = 4
    return c


def _zero_shot(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    c.train.num_steps = 0
    c.train.num_epochs = 0
    c.train.zero_shot_eval = True
    return c


# Presets of the config argument: the paper's ablation (docs/METHOD.md section 3), zero-shot evaluation
# of the loaded encoder, and the smoke size. Every loss preset also sets the batch order (look-ahead batches
# for lookahead_batch, the iterator's order for the others); key=value settings after it change either.
PRESETS = {
    "smoke": smoke,
    "runlocal": smoke,
    "zero_shot": _zero_shot,
    "full": _variant(bimodal_weight=1.0, hard_negative_weight=1.0, knn="bi"),
    "in_batch": _variant(bimodal_weight=1.0, hard_negative_weight=0.0),
    "wo_hncl": _variant(bimodal_weight=1.0, hard_negative_weight=0.0),
    "wo_bcl": _variant(bimodal_weight=0.0, hard_negative_weight=1.0, knn="bi"),
    "uni_knn": _variant(bimodal_weight=1.0, hard_negative_weight=1.0, knn="uni"),
    # Cost-aware hard negatives (docs/METHOD.md section 9); schedules are key=value settings on top, e.g.
    # full,hard_negative_start=150 (in-batch steps first) or full,hard_negative_every=2.
    "forward_only": _variant(bimodal_weight=1.0, hard_negative_weight=1.0, knn="bi", negative_gradient=False),
    "bank_negatives": _variant(bimodal_weight=1.0, hard_negative_weight=1.0, knn="bi", reencode_top=0,
                               other_negatives="bank"),
    "top1": _variant(bimodal_weight=1.0, hard_negative_weight=1.0, knn="bi", reencode_top=1, other_negatives="bank"),
    # Neighbour batches: half of every batch is the anchors' nearest bank neighbours, as whole pairs inside
    # L^B (the encoder work of an in-batch step); neighbour_pairs=N for N per anchor.
    "neighbour_batch": _variant(bimodal_weight=1.0, hard_negative_weight=0.0, knn="bi", neighbour_pairs=1),
    # Look-ahead neighbour batches: the coming 32 batches regrouped into groups of 4 nearest pairs (by the
    # trained model's query embeddings), every pair fresh; train.lookahead_batches / lookahead_group.
    "lookahead_batch": _lookahead_batch,
}


def parse_value(text: str):
    """A Python literal (`0.1`, `True`, `None`, `'bi'`), or the text itself (`bi`); `true`/`false`/`none` too."""
    lowered = text.strip().lower()
    if lowered in ("true", "false", "none", "null"):
        return {"true": True, "false": False}.get(lowered)
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def resolve_key(c: ml_collections.ConfigDict, key: str) -> tuple[str, str]:
    """`section.field` or a bare field name -> (section, field); unknown or ambiguous keys are an error."""
    sections = [name for name, value in c.items() if isinstance(value, ml_collections.ConfigDict)]
    if "." in key:
        section, _, field = key.partition(".")
        if section not in sections:
            raise ValueError(f"config key {key!r}: no section {section!r}; the sections are {sorted(sections)}")
        if field not in c[section]:
            raise ValueError(f"config key {key!r}: config.{section} has no field {field!r}; its fields are "
                             f"{sorted(c[section].keys())}")
        return section, field
    owners = [name for name in sections if key in c[name]]
    if len(owners) == 1:
        return owners[0], key
    if owners:
        raise ValueError(f"config key {key!r} is in several sections ({', '.join(owners)}); write "
                         f"{owners[0]}.{key}=...")
    raise ValueError(f"config key {key!r} is not a field of any section; known: "
                     + "; ".join(f"{name}: {sorted(c[name].keys())}" for name in sections))


def set_value(c: ml_collections.ConfigDict, key: str, value) -> None:
    """``c.<section>.<field> = value`` for a `resolve_key` key, with the config's type check named."""
    section, field = resolve_key(c, key)
    try:
        c[section][field] = value
    except TypeError as e:
        raise ValueError(f"config.{section}.{field}={value!r}: {e}") from None


def finish(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the config-file argument (presets and `key=value` settings, in order; see the module doc)."""
    for part in filter(None, (p.strip() for p in (arg or "").split(","))):
        if "=" in part:
            key, _, text = part.partition("=")
            set_value(c, key.strip(), parse_value(text))
        elif part in PRESETS:
            PRESETS[part](c)
        else:
            raise ValueError(f"unknown config argument {part!r}; presets: {sorted(PRESETS)}, or key=value with a "
                             "field of the config (e.g. k=5, train.seed=1)")
    return c
