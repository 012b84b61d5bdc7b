"""What a run shows while it runs: progress, and the errors it captures.

On a terminal, progress is a tqdm bar and log lines are printed above it
without breaking it; elsewhere (a log file, CI) it is a plain line every
``LINE_INTERVAL_SECONDS``, with no carriage returns. Captured errors are
logged as replicates finish, at most ``MAX_REPORTED_ERRORS`` of them,
then a count of the rest.
"""

from __future__ import annotations

import sys
import time
from _thread import allocate_lock
from collections.abc import Iterable
from typing import IO, Any

from crystallize_core.errors import logger

#: Captured errors logged in full per run; the rest are counted.
MAX_REPORTED_ERRORS = 10
#: Seconds between plain progress lines when standard error is not a terminal.
LINE_INTERVAL_SECONDS = 10.0


class Progress:
    """Progress of one run over ``total`` replicates, thread-safe.

    ``enabled=None`` shows a bar only when ``stream`` is a terminal;
    ``True`` shows a bar on a terminal and plain lines elsewhere; ``False``
    shows nothing. Nothing is shown for a single replicate. Errors passed to
    ``errors`` are logged to the ``crystallize`` logger whatever
    ``enabled`` says, bounded. With ``settled=False`` nothing is shown until
    ``settle`` says how.
    """

    def __init__(self, total: int, enabled: bool | None = None, stream: IO[str] | None = None, *, settled: bool = True):
        self.total = total
        self.done = 0
        self.reported_errors = 0
        self.unreported_errors = 0
        self._stream = stream if stream is not None else sys.stderr
        self._lock = allocate_lock()
        self._bar: Any = None
        self._lines = False
        self._last_line = time.monotonic()
        self._started = self._last_line
        self._terminal: bool | None = None
        if settled:
            self.settle(enabled)

    def settle(self, enabled: bool | None) -> None:
        """Show progress as ``enabled`` says from now on, in place of what was
        shown: a bar opened for a strategy that then declined is taken off
        the screen if the next one shows none, or shows lines instead."""
        if self._terminal is None:
            self._terminal = _is_terminal(self._stream)
        wanted = enabled is not False and self.total > 1
        bar, lines = wanted and self._terminal, wanted and not self._terminal and enabled is True
        with self._lock:
            if self._bar is not None and not bar:
                self._bar.leave = False  # nothing ran under it: leave no line behind
                self._bar.close()
                self._bar = None
                _restore_logging()
            self._lines = lines
        if bar and self._bar is None:
            self._open_bar()

    def _open_bar(self) -> None:
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._bar = tqdm(total=self.total, desc="replicates", unit="rep", file=self._stream)
        _redirect_logging(tqdm, logging_redirect_tqdm)

    @property
    def shown(self) -> bool:
        """Whether progress is being shown (a bar or plain lines)."""
        return self._bar is not None or self._lines

    def advance(self, count: int = 1) -> None:
        """``count`` more replicates finished."""
        if self._bar is None and not self._lines:
            return
        with self._lock:
            self.done += count
            if self._bar is not None:
                self._bar.update(count)
            elif self._lines:
                now = time.monotonic()
                if now - self._last_line >= LINE_INTERVAL_SECONDS:
                    self._last_line = now
                    self._write_line(now)

    def errors(self, errors: Iterable[object]) -> None:
        """Log captured errors, each as one line ending with the user's
        ``(file:line)`` where it was raised, until the limit; then count them."""
        for error in errors:
            with self._lock:
                if self.reported_errors >= MAX_REPORTED_ERRORS:
                    self.unreported_errors += 1
                    continue
                self.reported_errors += 1
            from crystallize_core._usercode import located, user_location_in_text  # sysconfig: on errors only

            traceback = getattr(error, "traceback", None)
            logger().warning("%s%s", error, located(user_location_in_text(traceback)) if traceback else "")

    def close(self) -> None:
        """Close the bar, write the last plain line, and count the errors not shown."""
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
                _restore_logging()
            elif self._lines:
                self._lines = False
                self._write_line(time.monotonic())
            unreported, self.unreported_errors = self.unreported_errors, 0
        if unreported:
            logger().warning("%d more captured error(s) not shown; every error is in the result's errors", unreported)

    def _write_line(self, now: float) -> None:
        rate = self.done / max(now - self._started, 1e-9)
        percent = 100 * self.done // max(self.total, 1)
        print(f"replicates: {self.done}/{self.total} ({percent}%), {rate:.1f}/s", file=self._stream, flush=True)


# One redirection of log lines for every bar shown at once (runs in several
# threads): installed by the first, removed by the last, so that handlers are
# restored in order whatever order the runs end in.
_redirect_lock = allocate_lock()
_redirect_users = 0
_redirect_context: Any = None


def _redirect_logging(tqdm: Any, logging_redirect_tqdm: Any) -> None:
    """Send log lines above the bars instead of through them: through the
    user's console handlers on the root logger if there are any (ours
    propagate to them), else a handler of our own for Crystallize's lines."""
    global _redirect_users, _redirect_context
    with _redirect_lock:
        _redirect_users += 1
        if _redirect_users == 1:
            import logging

            target = logging.root if logging.root.handlers else logger()
            _redirect_context = logging_redirect_tqdm(loggers=[target], tqdm_class=tqdm)
            _redirect_context.__enter__()


def _restore_logging() -> None:
    global _redirect_users, _redirect_context
    with _redirect_lock:
        _redirect_users -= 1
        if _redirect_users == 0 and _redirect_context is not None:
            _redirect_context.__exit__(None, None, None)
            _redirect_context = None


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
