"""Errors a user can act on.

Every failure caused by the user's input (a file, a folder, a JSON) is raised as
`KvcapError`; the CLI prints it as one line naming the file and exits with code 2.
Anything else is a bug and keeps its traceback. `kind` names the problem for programs
(the web app words it in Korean); the message is for people reading a terminal.
"""
from __future__ import annotations


class KvcapError(Exception):
    """A problem with the user's input, worded for the user."""

    def __init__(self, message: str, path: object | None = None, kind: str = "invalid"):
        self.path = None if path is None else str(path)
        self.message = message
        self.kind = kind
        super().__init__(f"{self.path}: {message}" if self.path else message)
