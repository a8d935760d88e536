"""The `confide` command. Thin: it parses arguments, calls the packages, and prints.

Three kinds of failure, told apart for the user:
- bad usage (an unknown command or option, a bad or missing value): one line and exit 2;
- bad input (anything raising `confide.errors.BadInput`, or an OSError on a path the user gave):
  one line per problem on stderr and exit 2, never a traceback;
- anything else is a bug: one line on stderr saying so, exit 1, and the traceback in a log file.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, List, Optional, TypeVar

import typer

try:  # recent Typer carries its own copy of click, whose exceptions are the ones its commands raise
    from typer._click import exceptions as click
except ImportError:  # pragma: no cover - older Typer runs on click itself
    from click import exceptions as click  # type: ignore[no-redef]
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from confide import __version__
from confide.errors import BadInput

# No emoji codes: confide prints fingerprints, hashes and ids, and rich would turn a fingerprint's
# ":AB:" into an emoji, so an operator would copy a pin that never matches.
out = Console(emoji=False)
err = Console(stderr=True, emoji=False)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _usage_line(exc: click.UsageError) -> str:
    """`confide calibrate: invalid value for '--epsilon': ... (see `confide calibrate --help`)`."""
    command = exc.ctx.command_path if exc.ctx is not None else "confide"
    message = _one_line(exc.format_message())
    message = message[:1].lower() + message[1:]
    return f"{command}: {message.rstrip('.')} (see `{command} --help`)"


def _log_internal_error(exc: BaseException) -> str:
    """Write the traceback of a bug to a fresh log file; returns its path."""
    fd, path = tempfile.mkstemp(prefix="confide-error-", suffix=".log")
    with os.fdopen(fd, "w") as handle:
        handle.write(f"confide {__version__}: {' '.join(sys.argv)}\n")
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=handle)
    return path


class _OneLineErrors(TyperGroup):
    """The top-level group: usage errors and bugs end here, each as one line on stderr."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra: Any) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.NoArgsIsHelpError as exc:
            out.print(exc.ctx.get_help(), markup=False, highlight=False)
            code = 2
        except click.UsageError as exc:
            err.print(_usage_line(exc), markup=False, highlight=False, soft_wrap=True)
            code = 2
        except click.ClickException as exc:
            err.print(_one_line(exc.format_message()), markup=False, highlight=False, soft_wrap=True)
            code = exc.exit_code
        except typer.Abort:
            err.print("aborted", highlight=False)
            code = 1
        except Exception as exc:  # a bug: say so in one line, keep the traceback for the report
            log = _log_internal_error(exc)
            err.print(f"confide: internal error ({type(exc).__name__}: {_one_line(str(exc))}); this is a bug, "
                      f"not bad input: the traceback is in {log}", markup=False, highlight=False, soft_wrap=True)
            code = 1
        code = code if isinstance(code, int) else 0
        if code != 0:
            _remove_empty_created_dirs()
        _created_dirs.clear()
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=_OneLineErrors,
    help="confide: institutions fine-tune a model together under differential privacy, "
    "with CKKS-encrypted aggregation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
policy_app = typer.Typer(help="Check and explain policy files.", no_args_is_help=True)
keys_app = typer.Typer(help="Institution identities.", no_args_is_help=True)
data_app = typer.Typer(help="Prepare the bundled data for experiments.", no_args_is_help=True)


class _LedgersByDefault(TyperGroup):
    """`confide audit LEDGER...` verifies ledgers; `confide audit canaries ...` runs the empirical audit."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["ledgers", *args]
        return super().parse_args(ctx, args)


audit_app = typer.Typer(
    cls=_LedgersByDefault, no_args_is_help=True,
    help="Verify privacy ledgers independently (`confide audit LEDGER...`), or audit empirically "
    "(`confide audit canaries FEDERATION INSTITUTION`).",
)
app.add_typer(audit_app, name="audit")
app.add_typer(policy_app, name="policy")
app.add_typer(keys_app, name="keys")
app.add_typer(data_app, name="data")

F = TypeVar("F", bound=Callable)


def fail(lines: list[str], code: int = 2) -> None:
    for line in lines:
        err.print(line, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _user_paths(values: Any) -> list[str]:
    """Every path among a command's arguments (lists included), made absolute."""
    found: list[str] = []
    for value in values:
        items = value if isinstance(value, (list, tuple)) else [value]
        found.extend(os.path.abspath(v) for v in items if isinstance(v, Path))
    return found


def _on_user_path(exc: OSError, paths: list[str]) -> bool:
    """Whether the OSError concerns a path the user gave, or something inside one of them."""
    for name in (exc.filename, exc.filename2):
        if name is None:
            continue
        target = os.path.abspath(os.fsdecode(name))
        if any(target == p or target.startswith(p.rstrip(os.sep) + os.sep) for p in paths):
            return True
    return False


def path_problem(exc: OSError, fix: str = "check the path and its permissions") -> str:
    """`PATH: Not a directory (fix)`: one line for an OSError on a path the user gave."""
    name = os.fsdecode(exc.filename) if exc.filename is not None else "path"
    return f"{name}: {exc.strerror or type(exc).__name__} ({fix})"


# What only the institutions' side needs (the `training` extra): the coordinator and the auditor
# run without it.
TRAINING_PACKAGES = ("torch", "transformers", "peft", "opacus")


def _missing_training(name: str) -> str:
    return (f"this command trains or evaluates a model and needs {name}, which is not installed "
            "(install the training extra: pip install 'confide[training]')")


def need_training() -> None:
    """Refuse, before any work, a command that trains where the training extra is not installed."""
    import importlib.util

    missing = [name for name in TRAINING_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        fail([_missing_training(missing[0])])


def handles_bad_input(command: F) -> F:
    """Turn BadInput, OSErrors on paths the user gave, and a missing training extra into one line, exit 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except BadInput as exc:
            fail(exc.lines())
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in TRAINING_PACKAGES:
                raise
            fail([_missing_training(exc.name)])
        except OSError as exc:
            if not _on_user_path(exc, _user_paths([*args, *kwargs.values()])):
                raise
            fail([path_problem(exc)])

    return wrapper  # type: ignore[return-value]


def need_files(*paths: Optional[Path]) -> None:
    """Refuse, before any work, input files that do not exist (one line each, exit 2)."""
    missing = [f"{p}: file not found (check the path)" for p in paths if p is not None and not p.exists()]
    if missing:
        fail(missing)


_created_dirs: list[Path] = []
"""Directories this command created, parents first: a command that fails removes those left empty."""


def _remove_empty_created_dirs() -> None:
    """A failed command leaves no empty output directory behind it (what holds files stays)."""
    while _created_dirs:
        path = _created_dirs.pop()
        try:
            path.rmdir()  # only an empty directory is removed
        except OSError:
            pass


def make_out_dir(path: Path, option: str = "--out") -> None:
    """Create an output directory before any work, so that a bad one fails at once, in one line.

    The directories made here are removed again, if still empty, when the command fails.
    """
    fix = f"give {option} a new or existing directory that this user can write"
    if path.exists() and not path.is_dir():
        fail([f"{path}: is a file, not a directory ({fix})"])
    missing = [p for p in (path, *path.parents) if not p.exists()][::-1]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail([path_problem(exc, fix)])
    _created_dirs.extend(missing)
    if not os.access(path, os.W_OK | os.X_OK):
        fail([f"{path}: not writable ({fix})"])


def make_out_file_parent(path: Path, option: str = "--out") -> None:
    """An output file's folder must exist or be creatable, and the file must not be a directory."""
    if path.is_dir():
        fail([f"{path}: is a directory (give {option} a file name, e.g. {path / 'report.html'})"])
    make_out_dir(path.parent, option)


def _version(value: bool) -> None:
    if value:
        out.print(f"confide {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """confide: privacy-preserving collaborative fine-tuning."""
    # Set before transformers is first imported (commands import it lazily); worker processes
    # inherit them. Nothing may be fetched from a hub at run time, and the library's own load
    # reports and progress bars would tear through confide's progress display.
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TRANSFORMERS_VERBOSITY", "error"),
                        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(name, value)


# ----------------------------------------------------------------------------- policy


def _server_step(update) -> str:
    rate = "" if update.learning_rate == 1 else f" lr {update.learning_rate:g}"
    return f"FedAvgM {update.momentum:g}{rate}" if update.momentum else f"FedAvg{rate}"


def _policy_summary(policy) -> str:
    from confide.policies import FederationPolicy

    if isinstance(policy, FederationPolicy):
        return (
            f"federation {policy.federation_id}: {len(policy.roster)} members, {policy.rounds} rounds, "
            f"model {policy.model.source} ({policy.model.task}), LoRA r={policy.adapter.rank} "
            f"{'frozen A' if policy.adapter.freeze_a else 'A and B trained'}, {_server_step(policy.server_update)}, "
            f"min_institutions "
            f"{policy.min_institutions}, delta {policy.privacy.delta:g} ({policy.privacy.accountant}), "
            f"{policy.ckks.describe(len(policy.roster))}"
        )
    cap = "none" if policy.round_epsilon_cap is None else f"{policy.round_epsilon_cap:g}"
    return (
        f"institution {policy.institution_id}: budget epsilon {policy.budget.epsilon:g} delta "
        f"{policy.budget.delta:g}, round cap {cap}, clipping {policy.clipping_norm:g}, min_cohort "
        f"{policy.min_cohort}, data {policy.data.path} ({policy.data.format})"
    )


@policy_app.command("check")
def policy_check(
    files: List[Path] = typer.Argument(..., help="Policy files (federation, institution or sweep)."),
) -> None:
    """Validate policy files: a summary of each valid file, every problem of each invalid one (exit 2)."""
    from confide.platform.setup import load_checked
    from confide.platform.sweep.spec import LoadedSweep
    from confide.policies import PolicyError

    problems: list[str] = []
    for path in files:
        try:
            checked = load_checked(path)
        except PolicyError as exc:
            problems.extend(str(p) for p in exc.problems)
            continue
        except BadInput as exc:
            problems.extend(exc.lines())
            continue
        except OSError as exc:
            problems.append(path_problem(exc))
            continue
        summary = checked.describe() if isinstance(checked, LoadedSweep) else _policy_summary(checked)
        out.print(f"[green]ok[/green] {path}: {summary}", highlight=False, soft_wrap=True)
    if problems:
        fail(problems)


@policy_app.command("explain")
@handles_bad_input
def policy_explain(
    federation: Path = typer.Argument(..., help="The federation policy file."),
    institution: Path = typer.Argument(..., help="The institution policy file."),
    as_json: bool = typer.Option(False, "--json", help="Print the decision and the privacy plan as JSON."),
) -> None:
    """May this institution join this federation, and what will it cost? Exit 0 if it may, 1 if not.

    Each rule, pass or fail; with the institution's data at hand (data.path) also the privacy plan
    its agent would make: records after the eval split, sample rate, rounds and steps, the
    calibrated noise, epsilon per round and after the last against the budget and what the ledger
    (under state_dir, read only) already holds, and the rule that would first refuse a round.
    """
    from confide.platform.plan_preview import plan_rows, preview_plan
    from confide.policies import decide_participation, load_federation, load_institution

    need_files(federation, institution)
    fed, inst = load_federation(federation), load_institution(institution)
    preview, missing = None, None
    if Path(inst.data.path).exists():
        preview = preview_plan(fed, inst)
        decision = preview.decision
    else:
        missing = f"not evaluated: {inst.data.path} not found (the plan needs the institution's data)"
        decision = decide_participation(fed, inst)
    allowed = decision.allowed and (preview is None or preview.plan is not None)
    if as_json:
        plan = preview.to_dict() if preview is not None else None
        if plan is not None:
            plan.pop("decision")
        out.print_json(json.dumps({"allowed": allowed, "rules": [r.__dict__ for r in decision.results],
                                   "plan": plan, "plan_missing": missing}))
    else:
        table = Table(title=f"{institution.name} joining {federation.name}")
        table.add_column("rule")
        table.add_column("result")
        table.add_column("detail")
        marks = {True: "[green]pass[/green]", False: "[red]FAIL[/red]", None: "[yellow]n/a[/yellow]"}
        for r in decision.results:
            table.add_row(r.rule, marks[r.passed], r.detail)
        out.print(table)
        if preview is not None:
            plan_table = Table(title=f"privacy plan of {preview.institution} (dataset {preview.dataset})")
            plan_table.add_column("quantity")
            plan_table.add_column("value")
            for name, value in plan_rows(preview):
                plan_table.add_row(name, value)
            out.print(plan_table)
        else:
            out.print(f"privacy plan: {missing}", highlight=False, soft_wrap=True)
        verdict = "[green]may join[/green]" if allowed else "[red]may not join[/red]"
        out.print(f"verdict: {verdict}")
    raise typer.Exit(0 if allowed else 1)


# ----------------------------------------------------------------------------- keys


@keys_app.command("init")
@handles_bad_input
def keys_init(
    out_dir: Path = typer.Option(..., "--out", help="Directory for the new identity (private files mode 0600)."),
    institution_id: Optional[str] = typer.Option(None, "--id", help="Institution id (default: the directory name)."),
) -> None:
    """Create an institution identity: Ed25519 (signing) and X25519 (receiving sealed keys)."""
    from confide.identity import Identity
    from confide.policies.common import ID_RULE, is_identifier

    name = out_dir.resolve().name if institution_id is None else institution_id
    if not is_identifier(name):
        where = "--id" if institution_id is not None else f"--out {out_dir} (its folder name is the id)"
        fail([f"{where}: {name!r} is not an institution id: it must be {ID_RULE}"])
    make_out_dir(out_dir)
    ident = Identity.generate(name)
    ident.save(out_dir)
    entry = ident.public.to_roster_entry(ident.institution_id)
    out.print(f"identity written to {out_dir}")
    out.print(f"fingerprint: {ident.public.fingerprint}")
    out.print("roster entry for the federation file:")
    out.print(f"  - id: {entry['id']}\n    signing_key: {entry['signing_key']}\n"
              f"    sealing_key: {entry['sealing_key']}",
              markup=False, highlight=False)


# ----------------------------------------------------------------------------- privacy


@app.command("calibrate")
@handles_bad_input
def calibrate(
    epsilon: float = typer.Option(..., "--epsilon", help="Target epsilon to spend."),
    delta: float = typer.Option(..., "--delta", help="Target delta."),
    sample_rate: float = typer.Option(..., "--sample-rate", help="Poisson sampling rate q (expected batch / records)."),
    steps: int = typer.Option(..., "--steps", help="Number of DP-SGD steps."),
    accountant: str = typer.Option("pld", "--accountant", help="pld (default) or rdp."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print the noise multiplier that spends exactly the given budget."""
    from confide.privacy.calibration import calibrate as run

    result = run(epsilon, delta, sample_rate, steps, accountant)
    if as_json:
        out.print_json(json.dumps(result.as_dict()))
    else:
        out.print(result.describe(), highlight=False)


# ----------------------------------------------------------------------------- federation


_TENSORBOARD_HELP = ("Also write per-round metrics as TensorBoard event files under DIR (and to MLflow when "
                     "it is installed and MLFLOW_TRACKING_URI is set).")


@app.command("simulate")
@handles_bad_input
def simulate(
    federation: Path = typer.Argument(..., help="The federation policy file."),
    institutions: List[Path] = typer.Argument(None, help="Institution policy files (or use --split)."),
    out_dir: Path = typer.Option(..., "--out", help="Empty or new directory for results, ledgers and adapters."),
    workers: int = typer.Option(2, "--workers", help="Worker processes hosting institutions (0: in this process)."),
    executor: str = typer.Option("local", "--executor", help="local (processes), or ray (--workers Ray actors)."),
    split: Optional[str] = typer.Option(None, "--split",
                                        help="dirichlet:ALPHA: split one dataset across generated institutions."),
    n_institutions: int = typer.Option(3, "--institutions", help="With --split: how many institutions."),
    template: Optional[Path] = typer.Option(None, "--template",
                                            help="With --split: the institution policy to copy (its data is split)."),
    test: Optional[Path] = typer.Option(None, "--test",
                                        help="Common test set (same format and fields as the institutions' data)."),
    test_fraction: float = typer.Option(0.2, "--test-fraction",
                                        help="With --split: fraction held out as the test set."),
    seed: int = typer.Option(0, "--seed", help="With --split: seed of the split."),
    tensorboard: Optional[Path] = typer.Option(None, "--tensorboard", metavar="DIR", help=_TENSORBOARD_HELP),
) -> None:
    """Run a whole federation on this machine: real DP training, real CKKS, real ledgers."""
    need_training()
    from confide.platform.display import FederationDisplay, budgets_table, rounds_table
    from confide.platform.setup import simulation_from_files

    need_files(federation, *(institutions or []), template, test)
    make_out_dir(out_dir)
    if tensorboard is not None:
        make_out_dir(tensorboard, "--tensorboard")
    sim = simulation_from_files(federation, institutions or [], out_dir, workers, split, n_institutions, template,
                                test, test_fraction, seed)
    sim.executor = executor
    from confide.platform.simulation import run_simulation

    ids = [p.institution_id for p in sim.institutions]
    with FederationDisplay(out, sim.federation.rounds, ids, sim.federation.federation_id) as display:
        sim.on_event = display
        summary = run_simulation(sim)
    out.print(rounds_table(summary), "", budgets_table(summary), "")
    out.print(f"summary: {out_dir / 'summary.json'}; adapters: {out_dir / 'adapters'}")
    from confide.platform.tracking import perplexities

    if perplexities(summary):
        out.print("perplexity by round: " + ", ".join(f"{r}: {p:.1f}" for r, p in perplexities(summary)),
                  highlight=False, soft_wrap=True)
    if tensorboard is not None:
        from confide.platform.tracking import log_federation

        out.print(f"tensorboard: {log_federation(summary, tensorboard)}", highlight=False, soft_wrap=True)


@app.command("demo")
@handles_bad_input
def demo(
    fast: bool = typer.Option(False, "--fast", help="A 1-2 minute version for a first look."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Where results, ledgers, adapters and the plot go "
                                           "(default: demo-out, or demo-out/EXAMPLE for another example)."),
    workers: Optional[int] = typer.Option(None, "--workers",
                                          help="Worker processes for the federated run (default: one per member)."),
    examples: Optional[Path] = typer.Option(None, "--examples", help="Directory of the example policies."),
    example: str = typer.Option("bbc", "--example", help="bbc: classification on MiniLM-L6 (about 6 minutes); "
                                "smollm2: a causal LM, SmolLM2-135M, scored by perplexity (about 15)."),
    tensorboard: Optional[Path] = typer.Option(None, "--tensorboard", metavar="DIR", help=_TENSORBOARD_HELP),
) -> None:
    """A real federation on a bundled model and BBC News, against each institution alone."""
    need_training()
    from confide.platform.demo import DEMO_INSTITUTIONS, default_examples_dir, demo_example, demo_policies, run_demo
    from confide.platform.display import (
        FederationDisplay,
        budgets_table,
        causal_demo_table,
        demo_table,
        rounds_table,
    )

    demo_example(example)
    out_dir = out_dir or (Path("demo-out") if example == "bbc" else Path("demo-out") / example)
    if examples is not None and not examples.is_dir():
        fail([f"{examples}: no such directory (give the folder holding the example policies)"])
    make_out_dir(out_dir)
    if tensorboard is not None:
        make_out_dir(tensorboard, "--tensorboard")
    federation, _ = demo_policies(examples or default_examples_dir(), fast, example)
    displays: dict[str, FederationDisplay] = {}

    def on_event(stage: str, event) -> None:
        if stage not in displays:
            for d in displays.values():
                d.__exit__(None)
            ids = {"federated": DEMO_INSTITUTIONS, "zero-shot": []}.get(stage, [stage])
            title = stage if stage in ("federated", "zero-shot") else f"{stage} alone"
            displays[stage] = FederationDisplay(out, 1 if stage == "zero-shot" else federation.rounds, ids,
                                                title).__enter__()
        displays[stage](event)

    try:
        result = run_demo(out_dir, examples, fast, workers, on_event, example)
    finally:
        for d in displays.values():
            d.__exit__(None)
    table = demo_table(result) if result.zero_shot is None else causal_demo_table(result)
    out.print(rounds_table(result.federated), "", budgets_table(result.federated), "", table, "")
    plot = out_dir / ("accuracy.png" if result.zero_shot is None else "perplexity.png")
    out.print(f"finished in {result.seconds:.0f} s; plot: {plot}; details: {out_dir / 'demo.json'}", soft_wrap=True)
    if tensorboard is not None:
        from confide.platform.tracking import log_runs

        runs = [("federated", result.federated), *[(f"{name}-alone", s) for name, s in result.local.items()]]
        log_runs(runs, tensorboard)
        out.print(f"tensorboard: {tensorboard} (runs {', '.join(name for name, _ in runs)})", highlight=False,
                  soft_wrap=True)


@app.command("sweep")
@handles_bad_input
def sweep(
    sweep_file: Path = typer.Argument(..., help="SWEEP.yaml: base policies, data split, grid and baselines."),
    out_dir: Path = typer.Option(..., "--out", help="Results directory; re-running into it skips finished points."),
    executor: str = typer.Option("local", "--executor", help="local (worker processes) or ray."),
    workers: Optional[int] = typer.Option(None, "--workers",
                                          help="Points at a time (local default: cores / 2; 0: in this process)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address",
                                              help="With --executor ray: an existing cluster (e.g. auto)."),
    tensorboard: Optional[Path] = typer.Option(None, "--tensorboard", metavar="DIR", help=_TENSORBOARD_HELP),
) -> None:
    """Privacy-utility sweep: a simulated federation per grid point, plus each-alone and central baselines."""
    need_training()
    from confide.platform.sweep import sweep_command

    need_files(sweep_file)
    make_out_dir(out_dir)
    if tensorboard is not None:
        make_out_dir(tensorboard, "--tensorboard")
    report = sweep_command(sweep_file, out_dir, executor, workers, ray_address, console=out)
    if tensorboard is not None:
        from confide.platform.tracking import log_runs, sweep_runs

        logged = log_runs(sweep_runs(out_dir), tensorboard)
        out.print(f"tensorboard: {tensorboard} ({len(logged)} point(s), one run each)", highlight=False, soft_wrap=True)
    raise typer.Exit(1 if report.failed else 0)


# ----------------------------------------------------------------------------- audit

_POLICY_HELP = "Institution policy (budget, cap, clipping); repeatable, matched to ledgers by id."
_FEDERATION_HELP = ("Federation file (roster keys and privacy requirements); repeatable, one per federation the "
                    "ledgers took part in (a file of a federation no ledger names fails).")
_RECEIPTS_HELP = ("One federation's receipts export (JSON or JSONL, from its coordinator); repeatable: one per "
                  "federation the ledgers took part in. Without a federation's receipts and key its completeness "
                  "is not verified (verdict incomplete).")
_COORDINATOR_KEY_HELP = ("The public key (base64 or identity.json) of the coordinator that signed the --receipts "
                         "given in the same position; repeatable, one per --receipts.")


@audit_app.command("ledgers")
@handles_bad_input
def audit_ledgers_command(
    ledgers: List[Path] = typer.Argument(..., help="Ledger files (JSON Lines)."),
    policy: List[Path] = typer.Option([], "--policy", help=_POLICY_HELP),
    federation: List[Path] = typer.Option([], "--federation", help=_FEDERATION_HELP),
    key: Optional[str] = typer.Option(None, "--key", help="Institution public key (base64 or identity.json)."),
    receipts: List[Path] = typer.Option([], "--receipts", help=_RECEIPTS_HELP),
    coordinator_key: List[str] = typer.Option([], "--coordinator-key", help=_COORDINATOR_KEY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Verify hashes, chain, signatures, receipts; recompute epsilon with an independent accountant.

    It can show the record's integrity, its consistency with the coordinator's receipts (each
    signs the upload's ledger head and declared DP-SGD spend) and the federation file, and
    correct accounting; no ledger can show which noise was actually drawn
    (see `confide audit canaries`).

    A ledger spanning several federations is checked against each one's receipts: pass
    `--receipts F1.jsonl --coordinator-key K1 --receipts F2.jsonl --coordinator-key K2`
    (the N-th key verifies the N-th export; an export holds one federation's receipts),
    and a --federation file per federation. Ledgers of several members of a federation
    are also compared: members that applied different sums for one round fail.

    Exit 0 when everything verifies; 1 when a check fails; 3 (incomplete) when nothing
    failed but something could not be checked: a budget (no --policy), a federation's
    completeness (no receipts or no coordinator key for it; the verdict names it) or its
    requirements (no --federation); 2 for unreadable input.
    """
    from confide.privacy.audit import audit_ledgers, audit_renderables

    need_files(*ledgers, *policy, *federation, *receipts)
    result = audit_ledgers(ledgers, policies=policy, federations=federation, key=key, receipts=receipts,
                           coordinator_keys=coordinator_key)
    if as_json:
        out.print_json(json.dumps(result.to_dict()))
    else:
        for item in audit_renderables(result):
            out.print(item)
    raise typer.Exit(result.exit_code)


@audit_app.command("adapter")
@handles_bad_input
def audit_adapter_command(
    adapter: Path = typer.Argument(..., help="A saved adapter directory (holds privacy.json)."),
    ledgers: List[Path] = typer.Argument(..., help="The ledgers of the institutions on its card (JSON Lines)."),
    policy: List[Path] = typer.Option([], "--policy", help=_POLICY_HELP),
    federation: List[Path] = typer.Option([], "--federation", help=_FEDERATION_HELP),
    receipts: List[Path] = typer.Option([], "--receipts", help=_RECEIPTS_HELP),
    coordinator_key: List[str] = typer.Option([], "--coordinator-key", help=_COORDINATOR_KEY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Check an adapter's card (privacy.json and its README.md) field by field against the ledgers,
    receipts, federation file and policies, and verify the ledgers.

    Exit 0 when the card and every ledger verify (it needs the ledgers of the card's institutions,
    --federation, --policy, and per federation --receipts with --coordinator-key), 1 when a check
    fails, 3 when nothing failed but something could not be checked, 2 for unreadable input.
    """
    from confide.privacy.audit.adapter_card import adapter_audit_renderables, audit_adapter

    if not adapter.is_dir():
        fail([f"{adapter}: no such directory (give the saved adapter's directory)"])
    need_files(*ledgers, *policy, *federation, *receipts)
    result = audit_adapter(adapter, ledgers, policies=policy, federations=federation, receipts=receipts,
                           coordinator_keys=coordinator_key)
    if as_json:
        out.print_json(json.dumps(result.to_dict()))
    else:
        for item in adapter_audit_renderables(result):
            out.print(item)
    raise typer.Exit(result.exit_code)


@audit_app.command("canaries")
@handles_bad_input
def audit_canaries(
    federation: Path = typer.Argument(..., help="The federation policy file."),
    institution: Path = typer.Argument(..., help="The institution whose training is audited."),
    canaries: int = typer.Option(10000, "--canaries", min=1,
                                 help="Dirac canaries, each included with p=1/2; a run holds one per "
                                 "trainable parameter at most, more take several runs."),
    rounds: Optional[int] = typer.Option(None, "--rounds", min=1,
                                         help="Rounds to train (default: the planned rounds)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the canaries and their inclusion (the training "
                             "draws from the OS, as real rounds do)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """One-run empirical audit of the institution's DP-SGD against its own curve.

    Trains the planned round(s) again through the agent's own round function,
    adding white-box canaries: per-sample gradients at the clipping norm that
    are sampled, clipped and noised like records. Nothing is uploaded; the
    adapter is left as it was. Tests the membership guesses against the
    trade-off curve of the mechanism the ledger records (Poisson-subsampled
    Gaussian over the steps, dp_accounting PLD) at 95% confidence. Exit 1 if
    more guesses are right than that curve allows (the training is less
    private than recorded), 0 if not, 2 for bad input.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    need_training()
    from confide.platform.data import load_institution_data
    from confide.platform.models import build_adapter_model
    from confide.policies import load_federation, load_institution
    from confide.privacy.audit.canary_console import canary_audit_renderables
    from confide.privacy.audit.canary_run import canary_settings, run_canary_audit

    need_files(federation, institution)
    fed, inst = load_federation(federation), load_institution(institution)
    built = build_adapter_model(fed)
    data = load_institution_data(inst.data, fed.model, built.tokenizer)
    spend, planned = canary_settings(fed, inst, len(data.train), rounds=rounds)
    with Progress(TextColumn("audit training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        task = progress.add_task("steps", total=None)
        audit = run_canary_audit(built.model, data.train, fed, inst, spend, rounds=planned, canaries=canaries,
                                 seed=seed, on_step=lambda done, total: progress.update(task, completed=done,
                                                                                        total=total))
    if as_json:
        out.print_json(json.dumps(audit.to_dict()))
    else:
        for item in canary_audit_renderables(audit):
            out.print(item)
    raise typer.Exit(audit.exit_code)


@app.command("report")
@handles_bad_input
def report(
    ledgers: List[Path] = typer.Argument(..., help="Ledger files (JSON Lines)."),
    out_file: Path = typer.Option(..., "--out", help="FILE.html (self-contained) or FILE.md (charts beside it)."),
    policy: List[Path] = typer.Option([], "--policy", help=_POLICY_HELP),
    federation: List[Path] = typer.Option([], "--federation", help=_FEDERATION_HELP),
    key: Optional[str] = typer.Option(None, "--key", help="Institution public key (base64 or identity.json)."),
    receipts: List[Path] = typer.Option([], "--receipts", help=_RECEIPTS_HELP),
    coordinator_key: List[str] = typer.Option([], "--coordinator-key", help=_COORDINATOR_KEY_HELP),
) -> None:
    """A budget report an auditor can hand on: budget, spent, remaining, verification, charts, per-round table.

    The report is written whatever the verdict; the exit code is the verdict's, as for `confide audit`:
    0 verified, 1 a check failed, 3 incomplete (a budget, a federation's receipts or its file missing), 2 bad
    input. --receipts and --coordinator-key pair up as for `confide audit`, one pair per federation.
    """
    from confide.privacy.audit import audit_ledgers, write_report

    need_files(*ledgers, *policy, *federation, *receipts)
    make_out_file_parent(out_file)
    result = audit_ledgers(ledgers, policies=policy, federations=federation, key=key, receipts=receipts,
                           coordinator_keys=coordinator_key)
    for path in write_report(result, out_file):
        out.print(f"wrote {path}", highlight=False)
    out.print(f"verdict: {result.verdict_text}", highlight=False)
    raise typer.Exit(result.exit_code)


# ----------------------------------------------------------------------------- network


@app.command("coordinator")
@handles_bad_input
def coordinator(
    federation: Path = typer.Argument(..., help="The federation policy file."),
    state: Path = typer.Option(..., "--state", help="State directory (SQLite, blobs, TLS); restart with it to resume."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8443, "--port", help="Port to listen on."),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert",
                                            help="Certificate (PEM); default: self-signed in --state."),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="Private key of --tls-cert (PEM)."),
    insecure: bool = typer.Option(False, "--insecure", help="Plain HTTP; accepted on a loopback address only."),
    tick_s: float = typer.Option(1.0, "--tick-s", min=0.05, help="How often round deadlines are checked (seconds)."),
) -> None:
    """Serve a federation over HTTPS: admit members, open rounds, add ciphertexts, survive restarts."""
    from confide.platform.service import CoordinatorSettings, run_coordinator

    need_files(federation, tls_cert, tls_key)
    _check_listen_address(host, port)
    if tls_cert is not None and tls_key is not None:
        _check_tls_pair(tls_cert, tls_key)
    make_out_dir(state, "--state")
    settings = CoordinatorSettings(host=host, port=port, tls_cert=tls_cert, tls_key=tls_key, insecure=insecure,
                                   tick_s=tick_s)
    run_coordinator(federation, state, settings, say=lambda text: out.print(text, highlight=False, soft_wrap=True))


@app.command("export-receipts")
@handles_bad_input
def export_receipts_command(
    state: Path = typer.Option(..., "--state", help="The coordinator's state directory."),
    out_file: Path = typer.Option(..., "--out", help="The receipts export to write (JSON Lines)."),
) -> None:
    """Export every receipt the coordinator signed, for `confide audit --receipts` (its public key:
    STATE/identity/identity.json, for --coordinator-key). Safe while the coordinator runs."""
    from confide.platform.coordinator import export_receipts

    make_out_file_parent(out_file)
    count = export_receipts(state, out_file)
    out.print(f"{count} receipts written to {out_file}; verify them with --coordinator-key "
              f"{state / 'identity' / 'identity.json'}", soft_wrap=True)


def _check_listen_address(host: str, port: int) -> None:
    """Refuse a port outside 1-65535 or a host that does not resolve, in one line, before any state is made."""
    import socket

    if not 1 <= port <= 65535:
        fail([f"--port {port}: must be from 1 to 65535"])
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        fail([f"--host {host}: does not resolve ({exc}); give an address of this machine, such as 127.0.0.1"])


def _check_tls_pair(cert: Path, key: Path) -> None:
    """Refuse a --tls-cert / --tls-key pair that is not a PEM certificate with its private key."""
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        fail([f"{cert}, {key}: not a PEM certificate and its private key ({getattr(exc, 'reason', None) or exc}); "
              "give the certificate's PEM file to --tls-cert and its key's to --tls-key"])


@app.command("join")
@handles_bad_input
def join(
    institution: Path = typer.Argument(..., help="This institution's policy file."),
    federation: Path = typer.Option(..., "--federation", help="The federation file (must equal the coordinator's)."),
    coordinator_url: str = typer.Option(..., "--coordinator", help="https://HOST:PORT of the coordinator."),
    pin: Optional[str] = typer.Option(None, "--pin", help="SHA-256 fingerprint of the coordinator's certificate."),
    ca: Optional[Path] = typer.Option(None, "--ca", help="CA bundle to verify the coordinator with instead of a pin."),
    once: bool = typer.Option(False, "--once", help="Take part in the next round, then exit."),
) -> None:
    """Join a federation as this institution: outbound HTTPS only, following this institution's policy."""
    need_training()
    from confide.platform.service import run_agent

    need_files(institution, federation, ca)
    report = run_agent(institution, federation, coordinator_url, pin=pin, ca_file=ca, once=once,
                       say=lambda text: out.print(text, highlight=False, soft_wrap=True))
    out.print(f"uploaded rounds {report.uploaded or '-'}, declined {report.declined or '-'}, applied "
              f"{report.applied or '-'}, aborted {report.aborted or '-'}, failed {report.failed or '-'}"
              + (f"; final adapter: {report.adapter_dir}" if report.adapter_dir else ""),
              highlight=False, soft_wrap=True)


# ----------------------------------------------------------------------------- data


@data_app.command("bbc")
@handles_bad_input
def data_bbc(
    out_dir: Path = typer.Option(..., "--out", help="Directory for the JSONL files."),
    names: str = typer.Option("hospital-a,hospital-b,hospital-c", help="Comma-separated institution ids."),
    alpha: float = typer.Option(0.5, help="Dirichlet concentration: smaller is more non-IID."),
    test_fraction: float = typer.Option(0.2, help="Fraction of each class held out as the common test set."),
    seed: int = typer.Option(4, help="Seed of the split (4: the demo's split)."),
) -> None:
    """Split the bundled BBC News corpus non-IID into one JSONL file per institution plus test.jsonl,
    and the same training articles by topic for the SmolLM2 example (smollm2-hospital-*.jsonl)."""
    from confide.platform.corpus import bbc_records
    from confide.platform.split import split_to_files, write_specialties

    make_out_dir(out_dir)
    ids = [n.strip() for n in names.split(",") if n.strip()]
    parts = split_to_files(bbc_records(), out_dir, ids, alpha, test_fraction, seed)
    out.print(_split_table(parts, out_dir, f"BBC News split (Dirichlet alpha={alpha:g})"))
    out.print(_split_table(write_specialties(parts, out_dir), out_dir, "the same articles by topic (SmolLM2)"))


def _split_table(parts: dict[str, list[dict]], out_dir: Path, title: str) -> Table:
    table = Table(title=title)
    table.add_column("file")
    table.add_column("records", justify="right")
    table.add_column("labels")
    for name, records in parts.items():
        counts: dict[str, int] = {}
        for r in records:
            counts[r["label"]] = counts.get(r["label"], 0) + 1
        table.add_row(str(out_dir / f"{name}.jsonl"), str(len(records)),
                      ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return table


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
