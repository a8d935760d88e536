"""`write_report`: the HTML is self-contained and renders in a real browser; Markdown gets its charts."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from confide.errors import BadInput
from confide.privacy.audit import audit_ledgers, write_report
from confide.privacy.audit.report import number

from .support import SPEND, read_entries, reseal, write_entries, write_ledger

GENERATED = datetime(2025, 1, 2, 3, 4, tzinfo=timezone.utc)
CHART_BLUE = (0x1F, 0x77, 0xB4)  # the first institution's line colour in the charts


def _browser() -> str | None:
    return next((found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))),
                None)


def _chromium(args: list[str], page: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    browser = _browser()
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
               *args, page.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _console_messages(stderr: str) -> list[str]:
    # Page console output (script errors, blocked loads, CSP violations) is logged as ":CONSOLE"
    # lines; everything else on stderr is the browser's own chatter (D-Bus, GPU) in a container.
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture
def federation_result(world):
    """hospital-a (honest, PLD) and hospital-b (RDP, 4 rounds) of one federation, with policies and keys."""
    other = write_ledger(world.root / "b", world.other, [dict(SPEND, accountant="rdp", noise_multiplier=1.2)] * 4)
    result = audit_ledgers([world.ledger, other], policies=[world.policy], federations=[world.federation],
                           receipts=[world.receipts], coordinator_keys=[world.coordinator_key])
    return result


def test_html_report_is_one_self_contained_file_with_the_numbers(federation_result, tmp_path):
    out = tmp_path / "report.html"
    assert write_report(federation_result, out, GENERATED) == [out]
    html = out.read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert "Content-Security-Policy" in html
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 3  # overview + one per institution
    a = federation_result.ledgers[0]
    assert a.budget_epsilon == 5.0
    for value in (number(a.spent_epsilon), number(5.0 - a.spent_epsilon), number(a.spends[-1].pld_epsilon)):
        assert value in html
    assert "hospital-a" in html and "hospital-b" in html and "2025-01-02 03:04 UTC" in html


@pytest.mark.integration
def test_html_report_renders_in_headless_chromium_without_errors(federation_result, tmp_path):
    if _browser() is None:
        message = "no chromium on PATH: install it (apt-get install -y chromium) to render the report"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + "; CI installs it (.ci/run), so its absence is a failure there")
        pytest.skip(message)
    out = tmp_path / "report.html"
    write_report(federation_result, out, GENERATED)
    dom = _chromium(["--dump-dom"], out, tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert _console_messages(dom.stderr) == []
    text = re.sub(r"<[^>]+>", " ", dom.stdout)
    a, b = federation_result.ledgers
    assert "Privacy budget report" in text
    for value in (number(a.spent_epsilon), number(b.spent_epsilon), number(a.spends[0].noise_multiplier),
                  number(b.spends[0].noise_multiplier), "verified"):
        assert value in text
    assert len(re.findall(r"<img ", dom.stdout)) == 3
    shot = tmp_path / "shot.png"
    screenshot = _chromium([f"--screenshot={shot}", "--window-size=1400,2400", "--hide-scrollbars"], out, tmp_path)
    assert screenshot.returncode == 0 and shot.exists(), screenshot.stderr[-2000:]
    assert _console_messages(screenshot.stderr) == []
    from matplotlib.image import imread

    pixels = (imread(shot)[..., :3] * 255).round()
    blue = ((abs(pixels - CHART_BLUE) <= 8).all(axis=-1)).sum()
    assert blue > 200, "the charts did not show: no pixels of the first institution's line colour"


def test_markdown_report_writes_its_charts_beside_it(federation_result, tmp_path):
    out = tmp_path / "report" / "budget.md"
    written = write_report(federation_result, out, GENERATED)
    images = [p for p in written if p.suffix == ".png"]
    assert [p.name for p in images] == ["budget-overview.png", "budget-1-hospital-a.png", "budget-2-hospital-b.png"]
    assert all(p.parent == out.parent and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in images)
    text = out.read_text()
    assert all(f"]({p.name})" in text for p in images)
    a = federation_result.ledgers[0]
    assert f"| hospital-a | ds-1 | 5 | {number(a.spent_epsilon)} | {number(5 - a.spent_epsilon)} | pld | 3 |" in text


def test_report_shows_failed_verification_with_the_entry(world, tmp_path):
    entries = read_entries(world.ledger)
    entries[3]["epsilon"] *= 0.8
    write_entries(world.ledger, reseal(entries, world.institution))
    result = audit_ledgers([world.ledger], key=world.key)
    out = tmp_path / "report.md"
    write_report(result, out, GENERATED)
    text = out.read_text()
    assert "FAILED" in text and "epsilon\\_pld (seq 4)" in text


def test_untrusted_ledger_text_is_escaped(world, tmp_path):
    entries = read_entries(world.ledger)
    for entry in entries:
        entry["institution"] = '<img src=x onerror="alert(1)">'
    write_entries(world.ledger, entries)
    result = audit_ledgers([world.ledger], key=world.key)
    out = tmp_path / "report.html"
    write_report(result, out, GENERATED)
    html = out.read_text()
    assert "<img src=x" not in html and "&lt;img src=x" in html
    write_report(result, tmp_path / "report.md", GENERATED)
    assert "<img src=x" not in (tmp_path / "report.md").read_text()
    assert json.dumps(result.to_dict())  # the JSON form holds the raw text; JSON encoding makes it inert


def test_report_needs_html_or_markdown(world, tmp_path):
    result = audit_ledgers([world.ledger], key=world.key)
    with pytest.raises(BadInput, match=r"\.html or \.md"):
        write_report(result, tmp_path / "report.pdf")
