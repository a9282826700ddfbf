"""Entry point: `python -m cocohanere_jax.main --config=configs/csn_java.py --workdir=DIR`.

Config files take an argument after a colon (`configs/csn_java.py:smoke`) and any field can be
overridden with `--config.train.global_batch_size=64`.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, exports.", required=True)
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.mark_flag_as_required("config")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Multi-process runs (SLURM, TPU pods, or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID set).
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("SLURM_NTASKS", "1") != "1":
        import jax

        jax.distributed.initialize()
    from cocohanere_jax import train

    logging.info("config:\n%s", _CONFIG.value)
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
