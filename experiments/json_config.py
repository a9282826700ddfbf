"""A config file for `cocohanere_jax.main` that loads a config saved as JSON by `experiments/ablation.py`:

    python -m cocohanere_jax.main --config=experiments/json_config.py:RUN/config.json --workdir=RUN
"""

import json

import ml_collections


def get_config(arg=None):
    if not arg:
        raise ValueError("experiments/json_config.py needs the JSON file: --config=experiments/json_config.py:FILE")
    with open(arg, encoding="utf-8") as f:
        return ml_collections.ConfigDict(json.load(f))
