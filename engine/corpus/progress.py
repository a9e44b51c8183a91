"""Progress bars for long work (rich, on stderr, hidden when stderr is not a terminal): the one helper the
`engine` commands and the `engine index` commands share. Library code reports progress through plain
callbacks (`progress(stage, done, total)`); only command-line code draws them."""

from __future__ import annotations

import sys


def progress_display():
    """A rich Progress on stderr with a description, a bar, done/total and the elapsed time."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=Console(stderr=True), transient=False,
                    disable=not sys.stderr.isatty())


class StageBars:
    """One bar per stage, fed by `progress(stage, done, total)` callbacks: `with StageBars() as bars: f(progress=bars)`.
    Given an existing display (`prog`), it adds its bars there."""

    def __init__(self, prog=None) -> None:
        self.prog = prog if prog is not None else progress_display()
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> StageBars:
        self.prog.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.prog.__exit__(*exc)

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.prog.add_task(stage, total=total)
        self.prog.update(self.tasks[stage], completed=done, total=total)
