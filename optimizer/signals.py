"""SIGTERM and SIGINT stop a command cleanly: every temporary file and directory is removed and the
process exits with the conventional code 128 + signal number (143 / 130).

The first signal raises ``Stopped`` (a ``BaseException``, like ``KeyboardInterrupt``, so no
``except Exception`` in the product swallows it) in the main thread: every ``atomic_path`` /
``atomic_dir`` / ``temp_dir`` block unwinds and removes what it made. A second signal, for a user
who does not want to wait for that, removes the registered temporaries and exits at once.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator, Optional

HANDLED = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """The process got SIGTERM or SIGINT; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


_received: list = []     # the signal numbers seen while ``stop_on_signals`` was active


def received() -> Optional[int]:
    """The signal that stopped this command, if one did (an error raised while stopping, e.g. by a
    DataLoader whose worker got the same signal, is still reported as the stop it is)."""
    return _received[0] if _received else None


def raise_if_stopped() -> None:
    """Raise ``Stopped`` when a signal arrived while ``stop_on_signals`` was active. The handler
    raises at once, but library code that catches ``BaseException`` (the ONNX exporters do, on
    some paths) can swallow that; the writers call this before an output lands."""
    if _received:
        raise Stopped(_received[0])


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM / SIGINT raise ``Stopped``; a second one exits at once (after
    removing the temporaries). Outside the main thread (signals cannot be caught there) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from .fileio import remove_temporaries
    owner = os.getpid()
    _received.clear()

    def handler(signum, frame):
        if os.getpid() != owner:
            # a forked child (a DataLoader worker) inherited this handler: die as the signal says,
            # quietly; the parent cleans up
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if _received:
            remove_temporaries()
            os._exit(128 + signum)
        _received.append(signum)
        # data-loader workers killed by the same signal make their iterators fail when the unwinding
        # collects them ("Exception ignored in ... __del__" with a traceback): expected, so not shown
        sys.unraisablehook = lambda unraisable: None
        raise Stopped(signum)

    previous = {s: signal.signal(s, handler) for s in HANDLED}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
