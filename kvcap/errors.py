"""Errors a user can act on.

Every failure caused by the user's input (a file, a folder, a JSON) is raised as
`KvcapError`; the CLI prints it as one line naming the file and exits with code 2.
Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class KvcapError(Exception):
    """A problem with the user's input, worded for the user."""

    def __init__(self, message: str, path: object | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)
