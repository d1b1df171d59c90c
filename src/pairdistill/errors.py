"""Errors that carry where bad input was found, so a run stops with one readable line."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input: names the file, the line (1-based, when there is one) and the problem."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class SettingError(Exception):
    """A setting this job cannot honour (say fp16 without a GPU): the message names the config key."""
