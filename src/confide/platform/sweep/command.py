"""The `confide sweep` command's body: run the sweep under a progress bar, then print what it found."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from confide.platform.sweep.runner import SweepReport, run_sweep


def sweep_command(sweep_file: Path, out_dir: Path, executor: str = "local", workers: int | None = None,
                  ray_address: str | None = None, console: Console | None = None) -> SweepReport:
    """Run `sweep_file` into `out_dir` with a rich progress bar; print the best settings and the files written.

    Raises what `run_sweep` raises (BadInput subclasses for bad files and arguments).
    """
    from confide.platform.sweep.display import SweepDisplay, best_table
    from confide.platform.sweep.report import best_rows

    console = console or Console(emoji=False)  # paths and keys are printed as they are
    with SweepDisplay(console) as display:
        report = run_sweep(sweep_file, out_dir, executor, workers, ray_address, on_event=display)
    rows = [json.loads(line) for line in report.paths["jsonl"].read_text().splitlines() if line.strip()]
    keys = {p.key for p in report.points}
    console.print(best_table(best_rows([r for r in rows if r.get("key") in keys])))
    console.print(f"{len(report.ran)} point(s) run, {len(report.skipped)} already finished, "
                  f"{len(report.failed)} failed, in {report.seconds:.0f} s")
    for key, error in report.failed.items():
        console.print(f"failed {key}: {error}", markup=False, highlight=False)
    console.print(f"results: {report.paths['results']}; plot: {report.paths['plot']}; "
                  f"summary: {report.paths['summary']}", markup=False, highlight=False)
    return report
