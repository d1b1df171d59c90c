"""Progress lines for long stages: items done, rate and time left, at most every few seconds."""

from __future__ import annotations

import sys
import time


def _fmt(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


class Progress:
    """``Progress(total, "pointwise", unit="pairs")``; call :meth:`update` after each batch."""

    def __init__(self, total: int, label: str, unit: str = "items", every_s: float = 10.0, stream=None):
        self.total, self.label, self.unit, self.every_s = int(total), label, unit, every_s
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = self._last = time.monotonic()

    def update(self, n: int = 1, force: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if force or self.done >= self.total or now - self._last >= self.every_s:
            self._last = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = _fmt(left) if rate > 0 else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (f"[{self.label}] {self.done}/{self.total} {self.unit} ({pct:.0f}%) "
                f"{rate:.1f} {self.unit}/s elapsed {_fmt(elapsed)} left {eta}")
