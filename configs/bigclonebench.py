"""BigCloneBench clone detection (CodeXGLUE Clone-detection-BigCloneBench): F1 (paper: 95.4).

    python -m cocohanere_jax.main --config=configs/bigclonebench.py --workdir=runs/bcb \
        --config.model.path=/models/unixcoder-base --config.data.root=/data/BigCloneBench/dataset

Training pairs are the label-1 (clone) pairs of train.txt; clone groups (connected components of those
pairs) mask same-group candidates out of the negatives. Valid/test: the cosine of each candidate pair,
F1 of `score > threshold` with the threshold chosen on valid and applied to test. CodeXGLUE trains and
validates on 10% samples of its 901k / 416k pairs: `data.max_train_pairs` and `data.max_eval_pairs`
take the first N (0 = all).
"""

from configs import common


def get_config(arg=None):
    c = common.base()
    c.model.path = "models/unixcoder-base"
    c.model.pooling = "mean"
    c.data.source = "bigclonebench"
    c.data.root = "datasets/BigCloneBench/dataset"  # data.jsonl + {train,valid,test}.txt
    c.data.language = "java"
    c.data.query_length = 400
    c.data.code_length = 400
    c.data.max_eval_pairs = 0
    c.train.num_epochs = 2.0
    return common.finish(c, arg)
