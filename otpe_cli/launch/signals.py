"""Stop signals: a run stops at the end of its iteration with a checkpoint on SIGTERM, SIGINT,
SIGUSR1 or SIGHUP (exit 128 + signal); a signal it was started ignoring stays ignored (under
``nohup`` a hangup does not stop it)."""
from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

#: the signals that stop a run with a checkpoint, those this platform has (SIGHUP: the
#: terminal or ssh session went away)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1", "SIGHUP")
                     if hasattr(signal, name))

#: stop signals that reached this process outside a training loop (a parallel sweep's worker
#: between jobs, or while a job builds its data): the next loop stops at once, checkpointed
PENDING_STOP: list[int] = []


def stop_signals() -> list[int]:
    """The stop signals this process answers: those it does not ignore."""
    return [s for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]


class Interrupted(Exception):
    """A stop signal arrived; the run was checkpointed and can be resumed."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class StopSignal(KeyboardInterrupt):
    """A stop signal while a job starts up, before its training loop: stop as Ctrl-C does
    there, in words, instead of dying without a word."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def raise_stop(signum, frame):
    raise StopSignal(signum)


class StopRequest:
    """The first stop signal received while it is installed (``signum``, None before)."""

    def __init__(self):
        self.signum = None

    def __call__(self, signum, frame) -> None:
        if self.signum is None:  # the first stop signal is the one reported
            self.signum = signum


@contextmanager
def recording(request: StopRequest):
    """Stop signals recorded in ``request`` instead of acted on (a loop checks ``signum``); in
    a thread other than the main one (no signals there) only a pending stop is seen."""
    previous = {}
    if PENDING_STOP and request.signum is None:
        request.signum = PENDING_STOP[0]
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, request) for s in stop_signals()}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def say(line: str) -> None:
    """One line to stderr from a signal handler (os.write: a print() here could re-enter one
    the signal interrupted)."""
    try:
        os.write(sys.__stderr__.fileno(), line.encode())
    except (OSError, AttributeError, ValueError):
        pass
