"""Preemption: SIGTERM asks the run to stop at the next step boundary, checkpointed, with a distinct status.

A scheduler (SLURM, Kubernetes, a spot-instance reclaim) sends SIGTERM and, after a grace period, SIGKILL.
Raising an exception from the signal handler would stop the program at a random point (inside orbax, inside
a metrics write); instead the handler only sets a flag. The train loop asks `should_stop(step)` after each
step; when it is True it saves a checkpoint at that step, waits for the write, and raises `Preempted`, a
`SystemExit` with status `EXIT_PREEMPTED` (75), so a wrapper can tell "requeue me" from success (0), an
error (1) and death by a signal that was not handled (137 for SIGKILL, 143 for SIGTERM as a shell reports it):

    python -m cocohanere_jax.main ... ; [ $? -eq 75 ] && requeue

75 is EX_TEMPFAIL of sysexits.h ("temporary failure; the user is invited to retry"). A second SIGTERM while
the checkpoint is being written exits at once with the same status (`os._exit`: the checkpoint on disk is
then the previous one; a half-written save is never restored). Python runs handlers between bytecodes of the
main thread: signals that arrive during one long C call (an XLA compilation, a step) are handled once, as one.

With several processes every process gets its own signal, not necessarily at the same step; `should_stop`
then takes the OR over processes (one tiny allgather every `sync_every` steps), so all of them save the same
step and stop together.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Iterable

import numpy as np

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM,)

_flag = threading.Event()
_received: list[int] = []
_previous: dict[int, object] = {}


class Preempted(SystemExit):
    """Raised by the train loop after the preemption checkpoint is on disk; exits with EXIT_PREEMPTED."""

    def __init__(self, step: int, workdir: str | None = None):
        super().__init__(EXIT_PREEMPTED)
        self.step = step
        self.workdir = workdir

    def __str__(self) -> str:
        where = f" in {self.workdir}/checkpoints/{self.step}" if self.workdir else ""
        return (f"preempted (signal {signal_name()}): checkpoint of step {self.step} saved{where}; exit status "
                f"{EXIT_PREEMPTED}. Run the same command again to resume.")


def signal_name() -> str:
    return ",".join(signal.Signals(s).name for s in _received) or "none"


def _exit_now(code: int) -> None:
    """Ends the process at once (no finally blocks, no atexit): what a second SIGTERM asks for.

    Not `raise SystemExit`: Python runs a signal handler between two bytecodes of the main thread, which may
    be inside a garbage-collector callback or a `__del__` (jax's `_xla_gc_callback` was seen), where the
    exception is printed as "Exception ignored in ..." and swallowed, and the run goes on.
    """
    for handler in logging.getLogger().handlers + logging.getLogger("cocohanere_jax").handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
    os._exit(code)


def _handler(signum, frame) -> None:
    if _flag.is_set():  # the second signal: the scheduler will not wait; stop now
        log.warning("second %s: exiting now with status %d (the checkpoint on disk is the previous one)",
                    signal.Signals(signum).name, EXIT_PREEMPTED)
        _exit_now(EXIT_PREEMPTED)
        return
    _received.append(signum)
    _flag.set()
    log.warning("%s received: the run stops after the current step with a checkpoint (exit status %d)",
                signal.Signals(signum).name, EXIT_PREEMPTED)


def install(signals: Iterable[int] = SIGNALS) -> None:
    """Installs the flag-setting handler (main thread only, as Python requires for signal handlers)."""
    for s in signals:
        _previous.setdefault(s, signal.getsignal(s))
        signal.signal(s, _handler)


def uninstall() -> None:
    """Puts back the handlers that were there before `install` (tests)."""
    for s, h in _previous.items():
        signal.signal(s, h)
    _previous.clear()


def request() -> None:
    """Asks for a stop as SIGTERM would (e.g. from a time limit inside the program)."""
    _flag.set()


def requested() -> bool:
    """True once SIGTERM (or `request()`) arrived on this process."""
    return _flag.is_set()


def reset() -> None:
    _flag.clear()
    _received.clear()


def should_stop(step: int, sync_every: int = 1) -> bool:
    """Whether the train loop should checkpoint `step` and exit with EXIT_PREEMPTED.

    One process: the local flag, free to ask every step. Several processes: True on every process when any
    of them was signalled, checked every `sync_every` steps (an allgather of one int per process: all
    processes must call this at the same steps).
    """
    import jax

    if jax.process_count() == 1:
        return _flag.is_set()
    if step % max(1, sync_every):
        return False
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.array([int(_flag.is_set())], np.int32))
    return bool(np.any(flags))
