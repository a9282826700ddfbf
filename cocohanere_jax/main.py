"""Entry point: `python -m cocohanere_jax.main --config=configs/csn_java.py --workdir=DIR`.

Config files take an argument after a colon (`configs/csn_java.py:smoke`) and any field can be
overridden with `--config.train.global_batch_size=64`.
"""

import os
import signal

from absl import app, flags, logging
from ml_collections import config_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, exports.", required=True)
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.mark_flag_as_required("config")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
_AUTO_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() with cluster auto-detection (SLURM, TPU pods).")


def _raise_system_exit(signum, frame):
    raise SystemExit(f"stopped by signal {signum}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _COORDINATOR.value or _AUTO_DISTRIBUTED.value:
        import jax

        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value
        )
    import jax

    # A restarted run (preemption, crash) loads its compiled step instead of compiling it again.
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.join(_WORKDIR.value, "compile_cache"))
    from cocohanere_jax import train

    # A scheduler's SIGTERM becomes an exception, so the in-flight asynchronous checkpoint completes.
    signal.signal(signal.SIGTERM, _raise_system_exit)

    logging.info("config:\n%s", _CONFIG.value)
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def run():
    """Console-script entry point (pyproject.toml)."""
    app.run(main)


if __name__ == "__main__":
    run()
