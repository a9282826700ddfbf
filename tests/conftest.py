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
