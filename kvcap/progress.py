"""Progress bars on stderr (rich), so stdout stays clean for captions and JSON."""
from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

_console = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(label: str, total: float | None, enabled: bool = True,
                 counts: bool = True) -> Iterator[Callable[[float], None]]:
    """Yields `advance(n)`; draws nothing when disabled. `counts=False` shows a percentage
    instead of done/total (for totals in bytes or seconds)."""
    if not enabled:
        yield lambda n=1: None
        return
    amount = MofNCompleteColumn() if counts else TaskProgressColumn()
    columns = [TextColumn("{task.description}"), BarColumn(), amount, TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=_console, transient=False, disable=not enabled) as prog:
        task = prog.add_task(label, total=total)
        yield lambda n=1: prog.advance(task, n)


def note(message: str, enabled: bool = True) -> None:
    if enabled:
        print(message, file=sys.stderr)
