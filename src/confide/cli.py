"""The `confide` command. Thin: it parses arguments, calls the packages, and prints.

Bad input (anything raising `confide.errors.BadInput`) becomes one line per problem on stderr and
exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Callable, List, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from confide import __version__
from confide.errors import BadInput

app = typer.Typer(
    help="confide: institutions fine-tune a model together under differential privacy, "
    "with CKKS-encrypted aggregation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
policy_app = typer.Typer(help="Check and explain policy files.", no_args_is_help=True)
keys_app = typer.Typer(help="Institution identities.", no_args_is_help=True)
data_app = typer.Typer(help="Prepare the bundled data for experiments.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(keys_app, name="keys")
app.add_typer(data_app, name="data")

out = Console()
err = Console(stderr=True)

F = TypeVar("F", bound=Callable)


def fail(lines: list[str], code: int = 2) -> None:
    for line in lines:
        err.print(line, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handles_bad_input(command: F) -> F:
    """Turn BadInput into one line per problem and exit 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except BadInput as exc:
            fail(exc.lines())

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        out.print(f"confide {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """confide: privacy-preserving collaborative fine-tuning."""


# ----------------------------------------------------------------------------- policy


def _policy_summary(policy) -> str:
    from confide.policies import FederationPolicy

    if isinstance(policy, FederationPolicy):
        return (
            f"federation {policy.federation_id}: {len(policy.roster)} members, {policy.rounds} rounds, "
            f"model {policy.model.source} ({policy.model.task}), LoRA r={policy.adapter.rank} "
            f"{'frozen A' if policy.adapter.freeze_a else 'A and B trained'}, min_institutions "
            f"{policy.min_institutions}, delta {policy.privacy.delta:g} ({policy.privacy.accountant}), "
            f"CKKS N={policy.ckks.poly_modulus_degree}"
        )
    cap = "none" if policy.round_epsilon_cap is None else f"{policy.round_epsilon_cap:g}"
    return (
        f"institution {policy.institution_id}: budget epsilon {policy.budget.epsilon:g} delta "
        f"{policy.budget.delta:g}, round cap {cap}, clipping {policy.clipping_norm:g}, min_cohort "
        f"{policy.min_cohort}, data {policy.data.path} ({policy.data.format})"
    )


@policy_app.command("check")
def policy_check(files: List[Path] = typer.Argument(..., help="Policy files (federation or institution).")) -> None:
    """Validate policy files: a summary of each valid file, every problem of each invalid one (exit 2)."""
    from confide.policies import PolicyError, load_policy

    problems: list[str] = []
    for path in files:
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            problems.extend(str(p) for p in exc.problems)
            continue
        out.print(f"[green]ok[/green] {path}: {_policy_summary(policy)}", highlight=False, soft_wrap=True)
    if problems:
        fail(problems)


@policy_app.command("explain")
@handles_bad_input
def policy_explain(
    federation: Path = typer.Argument(..., help="The federation policy file."),
    institution: Path = typer.Argument(..., help="The institution policy file."),
    as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON."),
) -> None:
    """May this institution join this federation? Each rule, pass or fail. Exit 0 if it may, 1 if not."""
    from confide.platform.admission import explain_admission

    decision = explain_admission(federation, institution)
    if as_json:
        out.print_json(json.dumps({"allowed": decision.allowed, "rules": [r.__dict__ for r in decision.results]}))
    else:
        table = Table(title=f"{institution.name} joining {federation.name}")
        table.add_column("rule")
        table.add_column("result")
        table.add_column("detail")
        marks = {True: "[green]pass[/green]", False: "[red]FAIL[/red]", None: "[yellow]n/a[/yellow]"}
        for r in decision.results:
            table.add_row(r.rule, marks[r.passed], r.detail)
        out.print(table)
        verdict = "[green]may join[/green]" if decision.allowed else "[red]may not join[/red]"
        out.print(f"verdict: {verdict}")
    raise typer.Exit(0 if decision.allowed else 1)


# ----------------------------------------------------------------------------- keys


@keys_app.command("init")
@handles_bad_input
def keys_init(
    out_dir: Path = typer.Option(..., "--out", help="Directory for the new identity (private files mode 0600)."),
    institution_id: Optional[str] = typer.Option(None, "--id", help="Institution id (default: the directory name)."),
) -> None:
    """Create an institution identity: Ed25519 (signing) and X25519 (receiving sealed keys)."""
    from confide.identity import Identity

    ident = Identity.generate(institution_id or out_dir.resolve().name)
    ident.save(out_dir)
    entry = ident.public.to_roster_entry(ident.institution_id)
    out.print(f"identity written to {out_dir}")
    out.print(f"fingerprint: {ident.public.fingerprint}")
    out.print("roster entry for the federation file:")
    out.print(f"  - id: {entry['id']}\n    signing_key: {entry['signing_key']}\n    sealing_key: {entry['sealing_key']}",
              markup=False, highlight=False)


# ----------------------------------------------------------------------------- data


@data_app.command("bbc")
@handles_bad_input
def data_bbc(
    out_dir: Path = typer.Option(..., "--out", help="Directory for the JSONL files."),
    names: str = typer.Option("hospital-a,hospital-b,hospital-c", help="Comma-separated institution ids."),
    alpha: float = typer.Option(0.5, help="Dirichlet concentration: smaller is more non-IID."),
    test_fraction: float = typer.Option(0.2, help="Fraction of each class held out as the common test set."),
    seed: int = typer.Option(0, help="Seed of the split."),
) -> None:
    """Split the bundled BBC News corpus non-IID into one JSONL file per institution plus test.jsonl."""
    from confide.platform.corpus import bbc_records
    from confide.platform.split import dirichlet_split, train_test_split, write_jsonl

    ids = [n.strip() for n in names.split(",") if n.strip()]
    train, test = train_test_split(bbc_records(), test_fraction, seed)
    shards = dirichlet_split(train, len(ids), alpha, seed)
    table = Table(title=f"BBC News split (Dirichlet alpha={alpha:g})")
    table.add_column("file")
    table.add_column("records", justify="right")
    table.add_column("labels")
    for name, records in [*zip(ids, shards), ("test", test)]:
        write_jsonl(out_dir / f"{name}.jsonl", records)
        counts = {label: sum(r["label"] == label for r in records) for label in sorted({r["label"] for r in records})}
        table.add_row(f"{out_dir / name}.jsonl", str(len(records)), ", ".join(f"{k} {v}" for k, v in counts.items()))
    out.print(table)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
