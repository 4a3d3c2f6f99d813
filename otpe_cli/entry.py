"""The console scripts' first code: a stop signal while the program starts (imports Hydra,
composes the config) ends it in one sentence and exit 128 + n, not in a traceback or without a
word. The handlers installed here raise `StopSignal` until a job installs its own."""
from __future__ import annotations

import signal
import sys

from .launch.signals import STOP_SIGNALS, StopSignal, raise_stop


def _guarded(load):
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:  # (nohup's SIGHUP stays ignored)
            signal.signal(sig, raise_stop)
    try:
        return load()()
    except (StopSignal, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, StopSignal) else signal.SIGINT
        print(f"{sys.argv[0].rsplit('/', 1)[-1]}: stopped by {signal.Signals(signum).name} while "
              "starting; nothing was run.", file=sys.stderr)
        raise SystemExit(128 + signum) from None


def train():
    """``otpe-train``."""
    def load():
        from .cli import main
        return main
    return _guarded(load)


def report():
    """``otpe-report``."""
    def load():
        from .report.cli import main
        return main
    return _guarded(load)
