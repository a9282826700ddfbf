"""The embedded default corpus: the running interpreter's own standard library, split by module.

Always available (no download): `build_stdlib_corpus(out_dir)` runs the source-tree builder on the
interpreter's ``Lib`` directory (``sysconfig.get_paths()["stdlib"]``) with one split group per
top-level module or package (``json``, ``email``, ``os``...), and writes
``out_dir/python/{train,valid,test,codebase}.jsonl`` plus ``report.json``. Test packages
(``test``, ``*/tests``, ``idle_test``...) and ``site-packages`` are pruned by the builder.

A stamp file records the interpreter version, the stdlib path and the build settings; a second call
with the same ones reuses the files. Read the result with `cocohanere_data.codesearchnet.load_pairs(root,
"python", split)` / `load_eval_split(root, "python", "test")`.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

from cocohanere_data.source_tree.build import BuildConfig, build_corpus_cached


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def default_cache_dir() -> Path:
    base = os.environ.get("COCOHANERE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cocohanere_jax")
    v = sys.version_info
    return Path(base) / f"stdlib-corpus-py{v.major}.{v.minor}.{v.micro}"


def build_stdlib_corpus(out_dir: str | os.PathLike | None = None, *, modules: tuple[str, ...] = (),
                        valid_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                        jobs: int = 1, force: bool = False) -> Path:
    """Builds (or reuses) the standard-library corpus; returns the root to pass to `load_pairs`.

    `modules` restricts the build to some top-level modules (tests use a handful); empty = all.
    """
    root = Path(out_dir) if out_dir is not None else default_cache_dir()
    cfg = BuildConfig(lang="python", valid_fraction=valid_fraction, test_fraction=test_fraction, seed=seed,
                      split_depth=1, origin="stdlib", include=tuple(sorted(modules)), jobs=jobs)
    return build_corpus_cached(stdlib_dir(), root, cfg, stamp_extra={"python": sys.version}, force=force)
