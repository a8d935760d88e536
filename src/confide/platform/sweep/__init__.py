"""Privacy-utility sweeps: a grid of simulated federations (real DP, real CKKS) plus baselines.

`run_sweep` is the function; `sweep_command` wraps it with a progress bar for `confide sweep`.
"""

from confide.platform.sweep.command import sweep_command
from confide.platform.sweep.executors import SweepError
from confide.platform.sweep.runner import SweepReport, run_sweep
from confide.platform.sweep.spec import SweepSpec, load_sweep

__all__ = ["SweepError", "SweepReport", "SweepSpec", "load_sweep", "run_sweep", "sweep_command"]
