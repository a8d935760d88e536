"""What a finished sweep says: the tradeoff plot, the Pareto front and DIR/summary.md.

Everything here is a function of the result rows (results.jsonl), so the report can be rebuilt at
any time from what is on disk. Utility is the final round's accuracy on the common test set;
settings that differ only in the seed are averaged, and macro-F1 is reported beside it.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from confide.platform.sweep.points import AXES, from_plain, plain

GROUPING_EXCLUDES = ("epsilon", "seed")


@dataclass(frozen=True)
class Setting:
    """A setting of one kind (every axis but the seed) and its mean scores over seeds (and institutions)."""

    epsilon: float
    others: tuple[tuple[str, object], ...]
    """The other axes that vary in the sweep, as (axis, value) pairs."""
    accuracy: float
    seeds: int
    epsilon_spent: float | None
    macro_f1: float | None = None
    low: float | None = None
    """Lowest accuracy among the runs averaged (e.g. the weakest institution alone)."""
    high: float | None = None

    def describe(self) -> str:
        return ", ".join(f"{axis}={value}" for axis, value in self.others) or "base settings"


def _epsilon(row: dict) -> float:
    return float(from_plain("epsilon", row["epsilon"]))


def _scored(rows: list[dict], kind: str) -> list[dict]:
    return [r for r in rows if r["kind"] == kind and r.get("accuracy") is not None]


def varying(rows: list[dict]) -> list[str]:
    """Axes other than epsilon and seed that take several values among federated rows."""
    federated = _scored(rows, "federated")
    return [a for a in AXES if a not in GROUPING_EXCLUDES and len({str(r[a]) for r in federated}) > 1]


def settings_of(rows: list[dict], kind: str) -> list[Setting]:
    """Results of one kind averaged over seeds (and, for `alone`, institutions), one per (epsilon, other axes)."""
    axes = varying(rows)
    groups: dict[tuple, list[dict]] = {}
    for row in _scored(rows, kind):
        groups.setdefault((_epsilon(row), tuple((a, row[a]) for a in axes)), []).append(row)
    settings = []
    for (epsilon, others), members in groups.items():
        spent = [r["epsilon_spent"] for r in members if r.get("epsilon_spent") is not None]
        f1 = [r["macro_f1"] for r in members if r.get("macro_f1") is not None]
        seeds = len({str(r["seed"]) for r in members})
        accuracies = [r["accuracy"] for r in members]
        settings.append(Setting(epsilon, others, mean(accuracies), seeds, max(spent) if spent else None,
                                mean(f1) if len(f1) == len(members) else None, min(accuracies), max(accuracies)))
    return sorted(settings, key=lambda s: (s.epsilon, -s.accuracy))


def federated_settings(rows: list[dict]) -> list[Setting]:
    """Federated results averaged over seeds, one per (epsilon, other varying axes)."""
    return settings_of(rows, "federated")


def baseline(rows: list[dict], kind: str) -> dict[float, Setting]:
    """Per epsilon: the best setting of a baseline kind (`alone` or `central`), by the rule the federation's uses.

    `alone` averages over institutions and seeds; its low/high are the weakest and strongest run.
    """
    return best_per_epsilon(settings_of(rows, kind))


def pareto_front(settings: list[Setting]) -> list[Setting]:
    """Settings no other setting beats: none with smaller-or-equal epsilon has higher accuracy."""
    front: list[Setting] = []
    for setting in sorted(settings, key=lambda s: (s.epsilon, -s.accuracy)):
        if not front or setting.accuracy > front[-1].accuracy:
            front.append(setting)
    return front


def best_per_epsilon(settings: list[Setting]) -> dict[float, Setting]:
    best: dict[float, Setting] = {}
    for setting in settings:
        if setting.epsilon not in best or setting.accuracy > best[setting.epsilon].accuracy:
            best[setting.epsilon] = setting
    return dict(sorted(best.items()))


def _fmt_eps(epsilon: float) -> str:
    return "inf (no DP)" if math.isinf(epsilon) else f"{epsilon:g}"


def _positions(epsilons: list[float]) -> dict[float, float]:
    """Where each epsilon goes on the log x axis; infinity sits one step right of the largest finite one."""
    finite = sorted(e for e in set(epsilons) if math.isfinite(e))
    spot = {e: e for e in finite}
    if any(math.isinf(e) for e in epsilons):
        spot[math.inf] = (finite[-1] * 3.0) if finite else 1.0
    return spot


def plot_tradeoff(rows: list[dict], path: Path, title: str, chance: float | None = None) -> None:
    """Accuracy against epsilon: one line per federated setting, the baselines dashed, the front marked.

    `chance` (e.g. 1 / number of classes) is drawn as a horizontal reference line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = federated_settings(rows)
    alone, central = baseline(rows, "alone"), baseline(rows, "central")
    spot = _positions([s.epsilon for s in settings] + list(alone) + list(central))
    fig, ax = plt.subplots(figsize=(9.5, 4.6))
    lines: dict[tuple, list[Setting]] = {}
    for setting in settings:
        lines.setdefault(setting.others, []).append(setting)
    for others, points in lines.items():
        points.sort(key=lambda s: s.epsilon)
        ax.plot([spot[s.epsilon] for s in points], [s.accuracy for s in points], "o-", lw=2,
                label=f"federated, {points[0].describe()}" if others else "federated (CKKS + DP)")
    if central:
        ax.plot([spot[e] for e in central], [v.accuracy for v in central.values()], "k--", marker="s", lw=1.5,
                label="central (union of the data, same budget)")
    if alone:
        xs = [spot[e] for e in alone]
        ax.plot(xs, [v.accuracy for v in alone.values()], ":", color="grey", marker="v", lw=1.5,
                label="each institution alone (mean)")
        ax.fill_between(xs, [v.low for v in alone.values()], [v.high for v in alone.values()], color="grey",
                        alpha=0.15, lw=0)
    front = pareto_front(settings)
    if front:
        ax.scatter([spot[s.epsilon] for s in front], [s.accuracy for s in front], s=160, facecolors="none",
                   edgecolors="crimson", linewidths=1.5, zorder=5, label="Pareto front")
    if chance is not None:
        ax.axhline(chance, color="grey", lw=0.8, ls="-.", label=f"chance ({chance:.2f})")
    if spot:
        ax.set_xscale("log")
        ax.set_xticks(list(spot.values()), [("inf\n(no DP)" if math.isinf(e) else f"{e:g}") for e in spot])
        ax.minorticks_off()
    ax.set_xlabel("epsilon per institution (delta fixed)")
    ax.set_ylabel("final test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)  # outside: never hides data
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_pareto_csv(settings: list[Setting], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epsilon", "setting", "accuracy", "seeds", "epsilon_spent"])
        for s in pareto_front(settings):
            writer.writerow([plain(s.epsilon), s.describe(), f"{s.accuracy:.4f}", s.seeds,
                             "" if s.epsilon_spent is None else f"{s.epsilon_spent:.3f}"])


def best_rows(rows: list[dict]) -> list[dict[str, str]]:
    """For each target epsilon: the best setting of each kind (same rule for all three), as display text."""
    settings = federated_settings(rows)
    alone, central = baseline(rows, "alone"), baseline(rows, "central")
    table = []
    for epsilon, best in best_per_epsilon(settings).items():
        a, c = alone.get(epsilon), central.get(epsilon)
        seeds = f" (mean of {best.seeds} seeds)" if best.seeds > 1 else ""
        table.append({
            "epsilon": _fmt_eps(epsilon),
            "setting": best.describe(),
            "accuracy": f"{best.accuracy:.3f}{seeds}",
            "f1": _f1(best),
            "spent": "-" if best.epsilon_spent is None else f"{best.epsilon_spent:.2f}",
            "alone": f"{a.accuracy:.3f} ({a.low:.3f}-{a.high:.3f})" if a else "-",
            "central": f"{c.accuracy:.3f}" if c else "-",
            "central_f1": _f1(c) if c else "-",
            "baseline_settings": "; ".join(f"{kind}: {x.describe()}" for kind, x in (("alone", a), ("central", c))
                                           if x is not None and x.others),
        })
    return table


def _f1(setting: Setting) -> str:
    return "-" if setting.macro_f1 is None else f"{setting.macro_f1:.3f}"


def summary_markdown(rows: list[dict], description: str, failures: list[str]) -> str:
    """DIR/summary.md: the best setting for each epsilon, the baselines beside it, and the Pareto front."""
    federated = _scored(rows, "federated")
    fixed = [f"{a}={federated[0][a]}" for a in AXES
             if a != "epsilon" and federated and len({str(r[a]) for r in federated}) == 1]
    common = f"Every federated point: {', '.join(fixed)}." if fixed else ""
    best = best_rows(rows)
    lines = ["# Privacy-utility sweep", "", description, common, "", "![accuracy against epsilon](tradeoff.png)", "",
             "## Best setting for each epsilon", "",
             "Each kind's setting is its best mean over seeds on the common test set, picked the same way for the "
             "federation and both baselines.", "",
             "| target epsilon | best federated setting | accuracy | macro-F1 | epsilon spent "
             "| each alone (mean, min-max) | central | central macro-F1 |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['epsilon']} | {r['setting']} | {r['accuracy']} | {r['f1']} | {r['spent']} | {r['alone']} "
              f"| {r['central']} | {r['central_f1']} |" for r in best]
    chosen = [f"- epsilon {r['epsilon']}: {r['baseline_settings']}" for r in best if r["baseline_settings"]]
    if chosen:
        lines += ["", "Baseline settings chosen:", "", *chosen]
    lines += ["", "## Pareto front", "", "Federated settings that no setting with a smaller or equal epsilon beats.",
              "", "| epsilon | setting | accuracy | macro-F1 |", "|---|---|---|---|"]
    lines += [f"| {_fmt_eps(s.epsilon)} | {s.describe()} | {s.accuracy:.3f} | {_f1(s)} |"
              for s in pareto_front(federated_settings(rows))]
    if failures:
        lines += ["", "## Points that failed (they run again when the sweep is re-run)", ""]
        lines += [f"- {f}" for f in failures]
    return "\n".join(lines) + "\n"


def write_report(rows: list[dict], out_dir: Path, description: str, title: str, failures: list[str],
                 chance: float | None = None) -> dict:
    """Write tradeoff.png, pareto.csv and summary.md under `out_dir`; return their paths."""
    paths = {"plot": out_dir / "tradeoff.png", "pareto": out_dir / "pareto.csv", "summary": out_dir / "summary.md"}
    plot_tradeoff(rows, paths["plot"], title, chance)
    write_pareto_csv(federated_settings(rows), paths["pareto"])
    paths["summary"].write_text(summary_markdown(rows, description, failures), encoding="utf-8")
    return paths
