"""Test setup: four CPU devices so that every multi-device code path runs on every machine."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

# Must run before any backend is initialised.
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_platforms", "cpu")
