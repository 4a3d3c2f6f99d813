"""The console of a run: a stream that outlives its reader, and how loud it is."""
from __future__ import annotations

import logging
import os
import sys


class PipeSafe:
    """A console stream that outlives its reader (``otpe-train | head``): on the first broken
    pipe its descriptor is pointed at /dev/null, so the run goes on and writes its files as if
    nothing had happened (the console output is what is lost, not the run)."""

    def __init__(self, stream):
        self._stream = stream

    def _silence(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._silence()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._silence()
            self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def guard_console_streams() -> None:
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        try:
            stream.fileno()
        except (AttributeError, OSError, ValueError):  # captured (pytest): not a pipe
            continue
        setattr(sys, name, PipeSafe(stream))


def to_log_file(line: str) -> None:
    """Write ``line`` to the run's log file (Hydra's file handler) only: for what is said on
    the console in a sentence of its own, so that the run's log has it too."""
    record = logging.LogRecord("otpe-train", logging.WARNING, __file__, 0, line, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def console_log_level(level: int) -> None:
    """Set the level of the console handlers of Hydra's job logging (not of its log file)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and \
                not isinstance(handler, logging.FileHandler):
            handler.setLevel(level)
