"""Progress events: typed, picklable (they cross from worker processes), and shown by the display."""

from __future__ import annotations

import io
import math
import pickle

from rich.console import Console

from confide.platform.display import FederationDisplay
from confide.platform.events import MemberNote, Phase, Plans, RoundOpened, RoundSettled, TrainingStep

EVENTS = [Phase("loading models and data"), Plans({"a": {"noise_multiplier": 1.2}}), RoundOpened(1),
          TrainingStep("a", 1, 3, 8, 1.25), TrainingStep("b", 1, 2, 8, math.inf), MemberNote("b", "round 1: declined"),
          RoundSettled(1, "applied", 0.875, {"b": "over budget"})]


def test_every_event_survives_a_process_boundary():
    assert [pickle.loads(pickle.dumps(event)) for event in EVENTS] == EVENTS


def _statuses(display: FederationDisplay) -> dict[str, str]:
    return {task.description.strip(): task.fields["status"] for task in display.progress.tasks}


def test_the_display_shows_each_event_where_it_belongs():
    console = Console(file=io.StringIO(), width=80)
    display = FederationDisplay(console, 2, ["a", "b"], "federated")
    display(EVENTS[0])
    assert _statuses(display)["federated rounds"] == "loading models and data"
    display(EVENTS[2])
    assert _statuses(display)["federated rounds"] == "round 1: training"
    display(EVENTS[3])
    display(EVENTS[4])
    assert _statuses(display)["a"] == "round 1 step 3/8 eps 1.25"
    assert _statuses(display)["b"] == "round 1 step 2/8"  # no finite epsilon (a no-DP reference run)
    display(EVENTS[5])
    assert _statuses(display)["b"] == "round 1: declined"
    display(EVENTS[6])
    statuses = _statuses(display)
    assert statuses["federated rounds"] == "round 1 applied, accuracy 0.875"
    assert statuses["b"] == "declined: over budget"
    assert display.progress.tasks[0].completed == 1
    display(MemberNote("z", "not a member here"))  # an institution the display does not show: ignored
    assert "z" not in _statuses(display)
