"""What a person watches during a sweep: one rich bar of points done, with the time left."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


class SweepDisplay:
    """Consumes `run_sweep` events: a bar of finished points, ETA, and the last point's result."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            # Sized for an 80-column terminal: the status keeps its accuracy first and is cut to fit.
            TextColumn("points"), BarColumn(bar_width=16), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"), console=console, transient=False,
        )
        self.task = None

    def __enter__(self) -> "SweepDisplay":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def __call__(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "start":
            done = event["done"]
            status = f"{done} done before, resuming" if done else ""
            self.task = self.progress.add_task("sweep", total=event["total"], completed=done, status=status)
        elif kind == "point" and self.task is not None:
            row = event.get("row")
            if row is None:
                status = f"failed: {event['label'][:18]}"
            else:
                acc = row["accuracy"]
                status = f"acc {'-' if acc is None else f'{acc:.3f}'} {event['label'][:16]}"
            self.progress.update(self.task, advance=1, status=status)
        elif kind == "tick" and self.task is not None:
            self.progress.refresh()


def best_table(best: list[dict[str, str]]) -> Table:
    """The best setting for each epsilon beside both baselines (rows from `report.best_rows`)."""
    table = Table(title="best setting for each epsilon (final test accuracy)", box=box.SIMPLE_HEAD,
                  padding=(0, 1), pad_edge=False, collapse_padding=True, show_edge=False, title_justify="left")
    # Short headers so that the table reads at 80 columns; the setting wraps within its cell.
    columns = {"epsilon": "target eps", "setting": "best federated setting", "accuracy": "acc", "f1": "F1",
               "spent": "eps spent", "alone": "alone: mean (min-max)", "central": "central"}
    for key, title in columns.items():
        table.add_column(title, overflow="fold" if key == "setting" else "ellipsis",
                         no_wrap=key not in ("setting", "alone"))
    for row in best:
        table.add_row(*(row[key] for key in columns))
    return table
