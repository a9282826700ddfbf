"""CoSQA (web queries -> Python code): label-1 pairs train, retrieval over the CoSQA code index.

    python -m cocohanere_jax.main --config=configs/cosqa.py --workdir=runs/cosqa \
        --config.model.path=/models/codet5p-110m-embedding --config.data.root=/data/cosqa
"""

from configs import common


def get_config(arg=None):
    c = common.codet5p(common.base())
    c.data.source = "cosqa"
    c.data.root = "datasets/cosqa"
    c.data.language = "python"
    return common.finish(c, arg)
