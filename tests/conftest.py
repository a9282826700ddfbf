"""Test setup: four CPU devices so that every multi-device code path runs on every machine."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

# Must run before any backend is initialised.
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_platforms", "cpu")

# Persistent compilation cache shared by every test (and the subprocesses they start): runs of the same
# program (a job and its resumption, 1 vs 2 processes) compile once per test session.
import tempfile  # noqa: E402

_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="cocohanere_jax_cache_"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


# The README's test command runs the files on 2 workers (pytest-xdist, `-n 2 --dist loadfile`), which take
# files in collection order: the two longest files (about half of the suite's time between them) go first,
# one to each worker, so that neither is left to run alone at the end.
_LONGEST_FIRST = ("test_train.py", "test_length_buckets.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
