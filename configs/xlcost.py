"""XLCoST NL code search (Zhu et al. 2022), the paper's portability check: UniXcoder, the paper's settings.

    python -m cocohanere_jax.main --config=configs/xlcost_python.py --workdir=runs/xlcost_python \
        --config.model.path=/models/unixcoder-base --config.data.root=/data/XLCoST_data

`configs/xlcost_<lang>.py` fix the language (cpp, java, python, csharp, javascript, php, c); this file
takes it as an argument (`configs/xlcost.py:language=java`). `data.level`: "program" (a problem
description -> the whole program) or "snippet" (a comment -> its snippet). Each query is ranked against
every code of its split (XLCoST's protocol); MRR. Get the data: `cocohanere_data.xlcost.DOWNLOAD_INSTRUCTIONS`.
"""

from configs import common


def config(language: str, arg=None):
    c = common.base()
    c.model.path = "models/unixcoder-base"  # RoBERTa family; the paper's backbone for XLCoST
    c.model.pooling = "mean"  # UniXcoder's sentence embedding: mean over the last hidden states
    c.data.source = "xlcost"
    c.data.root = "datasets/XLCoST_data"
    c.data.language = language
    c.data.level = "program"
    return common.finish(c, arg)


def get_config(arg=None):
    return config("python", arg)
