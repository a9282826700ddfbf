"""CodeSearchNet javascript (GraphCodeBERT-filtered), CodeT5+ 110M embedding, the paper's hyper-parameters.

    python -m cocohanere_jax.main --config=configs/csn_javascript.py --workdir=runs/csn_javascript \
        --config.model.path=/models/codet5p-110m-embedding --config.data.root=/data/codesearchnet
"""

from configs import common


def get_config(arg=None):
    return common.codesearchnet("javascript", arg)
