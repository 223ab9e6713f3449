"""Progress of long work: on a terminal, :class:`Progress` draws a :mod:`tqdm` bar; elsewhere (a
log, CI) it prints a line each time another 5 % of the work is done, at most one every 10 s::

    log p(x), K=5000: 2560/10000 datapoints (25%), 3 min 2 s elapsed, about 9 min 6 s left

Short work prints nothing. Updates may come from several threads.
"""

from __future__ import annotations

import sys
import threading
import time

from tqdm.auto import tqdm

from pyro_vae.errors import ConfigError

__all__ = ["PROGRESS_MODES", "Progress", "format_seconds"]

PROGRESS_MODES = ("auto", "bar", "lines", "off")


def format_seconds(seconds: float) -> str:
    """``"42 s"``, ``"3 min 2 s"`` or ``"2 h 5 min"``.

    >>> format_seconds(42.4), format_seconds(182), format_seconds(7500)
    ('42 s', '3 min 2 s', '2 h 5 min')
    """
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


class Progress:
    """Progress over ``total`` units of work, written to ``stream`` (default: standard error).

    :param mode: ``"auto"`` (a bar on a terminal, lines elsewhere), ``"bar"``, ``"lines"`` or
        ``"off"``.
    :param every: the fraction of the work between two lines (``min_interval``: seconds).
    """

    def __init__(self, total: int, desc: str, unit: str, *, mode: str = "auto", stream=None,
                 every: float = 0.05, min_interval: float = 10.0, leave: bool = False):
        if mode not in PROGRESS_MODES:
            raise ConfigError(f"unknown progress mode {mode!r}; known: "
                              f"{', '.join(PROGRESS_MODES)}")
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.total, self.desc, self.unit, self.mode = max(int(total), 1), desc, unit, mode
        self.every, self.min_interval = every, min_interval
        self.done, self._next_mark = 0, every
        self._start = self._last_line = time.perf_counter()
        self._lock = threading.Lock()
        self._bar = (tqdm(total=total, desc=desc, unit=unit, file=self.stream, leave=leave)
                     if mode == "bar" else None)

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        with self._lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(n)
                if postfix:
                    self._bar.set_postfix_str(postfix, refresh=False)
            elif self.mode == "lines":
                self._maybe_line(postfix)

    def _maybe_line(self, postfix: str | None) -> None:
        fraction = self.done / self.total
        now = time.perf_counter()
        if fraction < self._next_mark or now - self._last_line < self.min_interval:
            return
        self._next_mark = (int(fraction / self.every) + 1) * self.every
        self._last_line = now
        elapsed = now - self._start
        left = elapsed * (1 - fraction) / fraction if fraction > 0 else float("nan")
        extra = f", {postfix}" if postfix else ""
        print(f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * fraction:.0f}%), "
              f"{format_seconds(elapsed)} elapsed, about {format_seconds(left)} left{extra}",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
