"""Shared defaults: the paper's hyper-parameters (METHOD.md section 5) on a CodeT5+ 110M embedding model.

Every config file builds on `base()` and changes a few fields. Any config accepts the argument `smoke`
(`--config=configs/csn_java.py:smoke`) which shrinks it to a seconds-long run for tests and wiring checks.
"""

import ml_collections


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    c.model.path = ""  # local Hugging Face folder; "pkg:<module>/<subdir>" resolves inside an installed package
    c.model.pooling = None  # None: from the folder (CodeT5+ head / sentence-transformers pooling / CLS)
    c.model.dtype = "float32"  # compute dtype: "float32" or "bfloat16" (parameters stay float32)
    c.model.remat = False  # rematerialise encoder blocks in the backward pass

    c.data = ml_collections.ConfigDict()
    c.data.source = "codesearchnet"  # "codesearchnet" (GraphCodeBERT-filtered or raw CSN v2), "cosqa", "stdlib"
    c.data.root = ""  # dataset directory (CodeSearchNet: holds <language>/...)
    c.data.language = "java"
    c.data.query_length = 128  # tokens
    c.data.code_length = 256  # tokens
    c.data.cache_dir = ""  # tokenised-array cache; "" = <workdir>/cache
    c.data.strict = False  # True: the first bad input row raises (file:line) instead of being skipped+counted
    c.data.max_train_pairs = 0  # 0 = all; else the first N (smoke tests, quick experiments)
    c.data.max_eval_queries = 0  # 0 = all queries; the codebase is always ranked whole

    # The CoCoHaNeRe step (cocohanere_jax.step.StepConfig; unknown keys are an error).
    c.step = ml_collections.ConfigDict()
    c.step.temperature = 0.05  # the paper gives none; unit-norm embeddings need one (UniXcoder 0.05, CoCoSoDa 0.07)
    c.step.k = 10  # hard negatives per anchor and direction
    c.step.bank_size = 8096  # slots per memory bank (paper: 8,096)
    c.step.knn = "bi"  # "bi" (paper) or "uni" (ablation)
    c.step.bimodal_weight = 1.0  # L^B; 0 = "w/o BCL"
    c.step.hard_negative_weight = 1.0  # L^HN; 0 = "w/o HNCL", the in-batch baseline
    c.step.mask_in_batch = True  # never retrieve a DataID of the current global batch
    c.step.mask_duplicates = True  # mask bank entries whose text equals the positive's (CSN has many)
    c.step.false_negative_margin = None  # e.g. 0.1 drops candidates scoring > positive + 0.1*|positive|
    c.step.token_table = "device"  # "device" or "host" (pure_callback, for tables that do not fit)
    c.step.remat = False  # jax.checkpoint the re-encoding chunks
    c.step.reencode_chunk = 0  # rows per re-encoding chunk; 0 = one call
    c.step.dedup_negatives = False  # re-encode each distinct retrieved DataID once (shared by its anchors)
    c.step.reencode_fraction = 1.0  # with dedup: re-encode <= this fraction of B*k rows (see distinct_negatives)
    c.step.learning_rate = 3e-5
    c.step.adam_eps = 1e-8
    c.step.weight_decay = 0.01
    c.step.warmup_steps = 0  # linear decay without warmup, as the replication package
    c.step.grad_clip = 1.0

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
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks any config to a seconds-long run that exercises every part of the job."""
    c.data.query_length = 16
    c.data.code_length = 32
    c.data.max_train_pairs = 64
    c.data.max_eval_queries = 16
    c.step.k = 2
    c.step.bank_size = 32
    c.train.global_batch_size = 8
    c.train.num_steps = 6
    c.train.log_every = 2
    c.train.eval_every = 3
    c.train.checkpoint_every = 3
    c.train.eval_batch_size = 16
    c.train.export_best = False
    return c


def codesearchnet(language: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """CodeSearchNet `language` (GraphCodeBERT-filtered) with the CodeT5+ 110M embedding model."""
    c = base()
    c.model.path = "models/codet5p-110m-embedding"
    c.data.source = "codesearchnet"
    c.data.root = "datasets/codesearchnet"
    c.data.language = language
    return finish(c, arg)


def finish(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the config-file argument (`file.py:smoke`)."""
    for part in filter(None, (arg or "").split(",")):
        if part in ("smoke", "runlocal"):
            smoke(c)
        else:
            raise ValueError(f"unknown config argument {part!r}; known: smoke (alias runlocal)")
    return c
