"""What the CLI prints is what it was given: identifiers are not read as rich emoji codes."""

from __future__ import annotations

from confide import cli


def test_the_cli_prints_a_certificate_fingerprint_verbatim():
    # ":AB:" is rich's code for an emoji; a fingerprint containing it must still be copyable as a pin.
    fingerprint = "16:D1:02:B0:08:A1:48:D1:5E:F9:09:4F:F9:AB:40:B3"
    for console in (cli.out, cli.err):
        with console.capture() as captured:
            console.print(f"TLS certificate SHA-256 fingerprint: {fingerprint}", highlight=False, soft_wrap=True)
        assert fingerprint in captured.get()
