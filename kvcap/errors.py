"""Errors a user can act on.

Every failure caused by the user's input (a file, a folder, a JSON) is raised as
`KvcapError`; the CLI prints it as one line naming the file and exits with code 2.
Anything else is a bug and keeps its traceback. `kind` names the problem for programs
(the web app words it in Korean); the message is for people reading a terminal.
"""
from __future__ import annotations

from pathlib import Path


class KvcapError(Exception):
    """A problem with the user's input, worded for the user."""

    def __init__(self, message: str, path: object | None = None, kind: str = "invalid"):
        self.path = None if path is None else str(path)
        self.message = message
        self.kind = kind
        super().__init__(f"{self.path}: {message}" if self.path else message)


def describe_os_error(exc: OSError) -> str:
    """An OSError from the disk (a folder where a file should go, a full disk, no permission) in one line."""
    name = getattr(exc, "filename2", None) or exc.filename  # a rename names its target second
    return f"{name}: {exc.strerror or exc}" if name else str(exc.strerror or exc)


def crash_report(exc: BaseException, context: str) -> Path:
    """Write a bug's full traceback to a log file and return its path: the user sees one line."""
    import datetime
    import os
    import traceback

    from .features import cache_home

    folder = cache_home() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = folder / f"kvcap-{stamp}-{os.getpid()}.log"
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{context}\n{''.join(traceback.format_exception(exc))}\n")
    return path


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM. Not a KeyboardInterrupt, which click turns into an exit before main()
    sees it; raised from the signal handler, it unwinds through every `finally` that removes
    a temporary output."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_signalled: list[int] = []


def interrupt(signum: int, frame) -> None:
    """The CLI's SIGINT/SIGTERM handler."""
    _signalled.append(signum)
    raise Interrupted(signum)


def check_interrupted() -> None:
    """Raise again a signal whose Interrupted was lost: PyAV runs Python signal handlers inside
    its timeout callback and drops what they raise (seen on a listening RTMP source)."""
    if _signalled:
        raise Interrupted(_signalled[0])
