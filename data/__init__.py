"""Code-search data: CodeSearchNet / CoSQA readers, corpora built from source trees, tfds builder.

The tfds builder lives in `cocohanere_data.tfds_builder` (imported on demand: it pulls in tensorflow-datasets).
"""

from cocohanere_data.codesearchnet import detect_layout, load_eval_split, load_pairs
from cocohanere_data.cosqa import load_cosqa_eval, load_cosqa_pairs
from cocohanere_data.records import BadInputError, EvalSplit, LoadReport, Pair, Pairs

__all__ = [
    "BadInputError", "EvalSplit", "LoadReport", "Pair", "Pairs", "build_stdlib_corpus", "detect_layout",
    "load_cosqa_eval", "load_cosqa_pairs", "load_eval_split", "load_pairs",
]


def __getattr__(name):
    # Lazy, so that `python -m cocohanere_data.source_tree.build` does not import its own module twice.
    if name == "build_stdlib_corpus":
        from cocohanere_data.stdlib_corpus import build_stdlib_corpus

        return build_stdlib_corpus
    raise AttributeError(name)
