"""What a person watches while a federation runs: rich progress bars and the final tables."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class FederationDisplay:
    """Consumes simulation events: one bar for the rounds, one per institution for its local steps."""

    def __init__(self, console: Console, total_rounds: int, institutions: list[str], title: str = "federation") -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(bar_width=28),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.rounds_task = self.progress.add_task(f"{title} rounds", total=total_rounds, status="")
        self.tasks = {i: self.progress.add_task(f"  {i}", total=1, status="waiting") for i in institutions}

    def __enter__(self) -> "FederationDisplay":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def __call__(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "phase":
            self.progress.update(self.rounds_task, status=event["text"])
        elif kind == "round":
            self.progress.update(self.rounds_task, status=f"round {event['round']}: training")
        elif kind == "step" and event.get("institution") in self.tasks:
            eps = event.get("epsilon")
            status = f"round {event['round']} step {event['step']}/{event['steps']}"
            if eps is not None:
                status += f"  eps {eps:.2f}"
            self.progress.update(self.tasks[event["institution"]], completed=event["step"], total=event["steps"],
                                 status=status)
        elif kind == "member" and event.get("institution") in self.tasks:
            self.progress.update(self.tasks[event["institution"]], status=event["text"])
        elif kind == "round_done":
            acc = event.get("accuracy")
            text = f"round {event['round']} {event['status']}" + (f", accuracy {acc:.3f}" if acc is not None else "")
            self.progress.update(self.rounds_task, advance=1, status=text)
            for institution, reason in event.get("declined", {}).items():
                if institution in self.tasks:
                    self.progress.update(self.tasks[institution], status=f"declined: {reason[:60]}")


def rounds_table(summary: dict) -> Table:
    table = Table(title=f"federation {summary['federation']}: rounds")
    for column in ("round", "status", "participants", "declined", "accuracy", "loss", "upload", "seconds"):
        table.add_column(column, justify="right" if column in ("accuracy", "loss", "upload", "seconds") else "left")
    for r in summary["rounds"]:
        table.add_row(
            str(r["round"]), r["status"], ", ".join(r["participants"]) or "-",
            ", ".join(r["declined"]) or "-",
            "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}",
            "-" if r["loss"] is None else f"{r['loss']:.3f}",
            f"{r['upload_bytes'] / 1e6:.2f} MB", f"{r['seconds']:.1f}",
        )
    return table


def budgets_table(summary: dict) -> Table:
    table = Table(title="privacy spent vs budget")
    for column in ("institution", "epsilon spent", "budget", "delta", "rounds trained", "ledger"):
        table.add_column(column)
    for institution, s in summary["institutions"].items():
        table.add_row(institution, f"{s['epsilon']:.3f}", f"{s['budget_epsilon']:g}", f"{s['delta']:g}",
                      str(s.get("rounds_trained", "-")), s["ledger"])
    return table


def demo_table(result) -> Table:
    """Federated vs alone, per institution, on the common test set."""
    from confide.platform.demo import final_accuracy

    federated = final_accuracy(result.federated)
    table = Table(title="what federating bought each institution (same test set, same privacy settings)")
    for column in ("institution", "alone: accuracy", "alone: epsilon", "federated: accuracy",
                   "federated: epsilon", "budget", "gain"):
        table.add_column(column)
    for name, summary in result.local.items():
        alone = final_accuracy(summary)
        fed_status = result.federated["institutions"][name]
        gain = "-" if alone is None or federated is None else f"{(federated - alone) * 100:+.1f} pts"
        table.add_row(name, "-" if alone is None else f"{alone:.3f}", f"{summary['institutions'][name]['epsilon']:.2f}",
                      "-" if federated is None else f"{federated:.3f}", f"{fed_status['epsilon']:.2f}",
                      f"{fed_status['budget_epsilon']:g}", gain)
    return table
