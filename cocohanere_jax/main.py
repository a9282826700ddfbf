"""Entry point: `python -m cocohanere_jax.main --config=configs/csn_java.py --workdir=DIR` (or `cocohanere-train`).

Config files take an argument after a colon, big_vision style (`configs/default.py:smoke,k=5`; see
`configs/common.py`), and any field can be overridden with `--config.train.global_batch_size=64`; an
unknown key is an error that lists the known keys of its section. The console shows this project's
progress and evaluations; the full log, third-party INFO records included, goes to `<workdir>/log.txt`
(`--verbose` shows it on the console too).
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from cocohanere_jax import config_check

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, exports.", required=True)
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:argument]).", lock_config=True)
flags.mark_flag_as_required("config")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show third-party INFO logs (orbax, jax) on the console too.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
_AUTO_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() with cluster auto-detection (SLURM, TPU pods).")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout", 60, "Multi-process runs: seconds without a heartbeat after which the coordination "
    "service declares a process dead and the others stop (abort, non-zero status).")


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError):  # ml_collections' answer to an unknown override: "'kk'"
        message = config_check.unknown_override(argv)
        if message is None:
            raise
        print(f"FATAL config error: {message}", file=sys.stderr)
        sys.exit(2)
    except (ValueError, flags.Error) as e:  # a bad config-file argument (configs/common.finish), a bad value
        outer = str(e).splitlines()[0] if str(e) else type(e).__name__
        while e.__context__ is not None:  # absl wraps the config file's own error in its traceback text
            e = e.__context__
        print(f"FATAL config error: {outer if str(e) in outer else f'{outer} {e}'}", file=sys.stderr)
        sys.exit(2)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from cocohanere_jax import metrics

    # Before anything starts a backend, so that its INFO records go to the file too. With --distributed the
    # process index is known only after initialize (its own start-up records reach the console).
    log_path = None if _AUTO_DISTRIBUTED.value else metrics.setup_logging(
        _WORKDIR.value, _VERBOSE.value, _PROCESS_ID.value or 0)
    import jax

    if _COORDINATOR.value or _AUTO_DISTRIBUTED.value:
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
            heartbeat_timeout_seconds=_HEARTBEAT.value,
        )
    if log_path is None:
        log_path = metrics.setup_logging(_WORKDIR.value, _VERBOSE.value, jax.process_index())
    # A restarted run (preemption, crash) loads its compiled step instead of compiling it again.
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.join(_WORKDIR.value, "compile_cache"))
    from cocohanere_jax import preemption, train

    # A scheduler's SIGTERM only sets a flag: the loop checkpoints the current step and exits with status 75
    # (preemption.EXIT_PREEMPTED); a second SIGTERM exits at once with 75.
    preemption.install()

    import logging

    logging.getLogger("cocohanere_jax").info("workdir %s (full log: %s)", _WORKDIR.value, log_path)
    logging.getLogger("config").info("config:\n%s", _CONFIG.value)  # the log file only (not this project's logger)
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def run():
    """Console-script entry point (pyproject.toml)."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
