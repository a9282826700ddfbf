"""POJ-104 clone retrieval (CodeXGLUE Clone-detection-POJ-104): code -> code, MAP@R (paper: 91.74).

    python -m cocohanere_jax.main --config=configs/poj104.py --workdir=runs/poj104 \
        --config.model.path=/models/unixcoder-base --config.data.root=/data/POJ-104/dataset

Training pairs are (program, another program solving the same problem), drawn once with train.seed; the
problem label masks same-problem candidates out of the negatives (banks and batch). Valid/test: every
program queries all the others of its split (MAP@R; R = the others with its label). Lengths: CodeXGLUE's
block size 400 on both sides; the CoCoHaNeRe hyper-parameters otherwise (k 10, bank 8,096, batch 32).
"""

from configs import common


def get_config(arg=None):
    c = common.base()
    c.model.path = "models/unixcoder-base"
    c.model.pooling = "mean"
    c.data.source = "poj104"
    c.data.root = "datasets/POJ-104/dataset"  # {train,valid,test}.jsonl (or the extracted ProgramData/)
    c.data.language = "c++"
    c.data.query_length = 400  # the anchor program
    c.data.code_length = 400  # its positive
    c.train.num_epochs = 2.0  # CodeXGLUE's POJ-104 budget
    return common.finish(c, arg)
