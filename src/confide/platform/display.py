"""What a person watches while a federation runs: rich progress bars and the final tables."""

from __future__ import annotations

import math
import os

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from confide.platform.events import MemberNote, Phase, ProgressEvent, RoundOpened, RoundSettled, TrainingStep


class FederationDisplay:
    """Consumes simulation events: one bar for the rounds, one per institution for its local steps."""

    def __init__(self, console: Console, total_rounds: int, institutions: list[str], title: str = "federation") -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(bar_width=16),
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

    def __call__(self, event: ProgressEvent) -> None:
        if isinstance(event, Phase):
            self.progress.update(self.rounds_task, status=event.text)
        elif isinstance(event, RoundOpened):
            self.progress.update(self.rounds_task, status=f"round {event.round}: training")
        elif isinstance(event, TrainingStep) and event.institution in self.tasks:
            status = f"round {event.round} step {event.step}/{event.steps}"
            if math.isfinite(event.epsilon):
                status += f" eps {event.epsilon:.2f}"
            self.progress.update(self.tasks[event.institution], completed=event.step, total=event.steps,
                                 status=status)
        elif isinstance(event, MemberNote) and event.institution in self.tasks:
            self.progress.update(self.tasks[event.institution], status=event.text)
        elif isinstance(event, RoundSettled):
            acc = event.accuracy
            text = f"round {event.round} {event.status}" + (f", accuracy {acc:.3f}" if acc is not None else "")
            self.progress.update(self.rounds_task, advance=1, status=text)
            for institution, reason in event.declined.items():
                if institution in self.tasks:
                    self.progress.update(self.tasks[institution], status=f"declined: {reason[:30]}")


def _compact(title: str) -> Table:
    """A table that fits an 80-column terminal: light rules, one space of padding, wrapping cells."""
    return Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True,
                 show_edge=False, title_justify="left")


def rounds_table(summary: dict) -> Table:
    """One row per round; who took part is a count, and only who declined is named."""
    table = _compact(f"federation {summary['federation']}: rounds")
    table.add_column("round", justify="right")
    table.add_column("status")
    table.add_column("took part", justify="right")
    table.add_column("declined", overflow="fold", min_width=10)
    for column in ("accuracy", "F1", "loss", "MB up", "seconds"):
        table.add_column(column, justify="right")
    members = len(summary.get("institutions") or {}) or None
    for r in summary["rounds"]:
        took_part = str(len(r["participants"])) + (f"/{members}" if members else "")
        table.add_row(
            str(r["round"]), r["status"], took_part, ", ".join(r["declined"]) or "-",
            "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}", _score(r.get("macro_f1")),
            "-" if r["loss"] is None else f"{r['loss']:.3f}",
            f"{r['upload_bytes'] / 1e6:.2f}", f"{r['seconds']:.1f}",
        )
    return table


def budgets_table(summary: dict) -> Table:
    """Epsilon spent against each budget, and for one record swapped (replace-one: what holds against the
    coordinator, which knows record counts); the ledgers' common folder goes below the table."""
    table = _compact("privacy spent vs budget")
    table.add_column("institution", no_wrap=True)
    for column in ("epsilon spent", "replace-one", "budget", "delta", "rounds trained"):
        table.add_column(column, justify="right")
    ledgers = []
    for institution, s in summary["institutions"].items():
        table.add_row(institution, _score(s["epsilon"]), _score(s.get("replace_one_epsilon")),
                      f"{s['budget_epsilon']:g}", f"{s['delta']:g}", str(s.get("rounds_trained", "-")))
        ledgers.append(str(s["ledger"]))
    if ledgers:
        table.caption = _ledgers_caption(ledgers)
        table.caption_justify = "left"
    return table


def _ledgers_caption(paths: list[str]) -> str:
    if len(paths) == 1:
        return f"ledger: {paths[0]}"
    try:
        return f"ledgers under {os.path.commonpath(paths)}{os.sep}"
    except ValueError:  # mixed absolute and relative paths
        return "ledgers: " + ", ".join(paths)


def demo_table(result) -> Table:
    """Federated vs alone, per institution, on the common test set."""
    from confide.platform.demo import final_accuracy, final_macro_f1

    federated, federated_f1 = final_accuracy(result.federated), final_macro_f1(result.federated)
    table = _compact("federated vs alone (same test set, same privacy settings; F1: macro-F1)")
    table.add_column("institution", no_wrap=True)
    for column in ("alone acc", "alone F1", "alone eps", "fed. acc", "fed. F1", "fed. eps", "budget", "gain pts"):
        table.add_column(column, justify="right")
    for name, summary in result.local.items():
        alone, alone_f1 = final_accuracy(summary), final_macro_f1(summary)
        fed_status = result.federated["institutions"][name]
        gain = "-" if alone is None or federated is None else f"{(federated - alone) * 100:+.1f}"
        table.add_row(name, _score(alone), _score(alone_f1), f"{summary['institutions'][name]['epsilon']:.2f}",
                      _score(federated), _score(federated_f1), f"{fed_status['epsilon']:.2f}",
                      f"{fed_status['budget_epsilon']:g}", gain)
    return table


def causal_demo_table(result) -> Table:
    """Causal LM: the zero-shot base, each institution alone and the federation, on the same held-out records."""
    from confide.platform.demo import final_accuracy, final_perplexity

    table = _compact("zero-shot vs alone vs federated (same held-out records; lower perplexity is better)")
    table.add_column("model", no_wrap=True)
    for column in ("perplexity", "next-token acc", "epsilon", "budget", "vs base"):
        table.add_column(column, justify="right")
    base = result.zero_shot["perplexity"]

    def row(name: str, perplexity: float | None, accuracy: float | None, epsilon: str, budget: str) -> None:
        change = "-" if perplexity is None else f"{100 * (perplexity / base - 1):+.1f}%"
        table.add_row(name, "-" if perplexity is None else f"{perplexity:.2f}", _score(accuracy), epsilon, budget,
                      change)

    table.add_row("zero-shot base", f"{base:.2f}", _score(result.zero_shot["accuracy"]), "0", "-", "-")
    for name, summary in result.local.items():
        status = summary["institutions"][name]
        row(f"{name} alone", final_perplexity(summary), final_accuracy(summary), f"{status['epsilon']:.2f}",
            f"{status['budget_epsilon']:g}")
    statuses = result.federated["institutions"]
    row("federated", final_perplexity(result.federated), final_accuracy(result.federated),
        " / ".join(f"{s['epsilon']:.2f}" for s in statuses.values()),
        " / ".join(f"{s['budget_epsilon']:g}" for s in statuses.values()))
    return table


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
