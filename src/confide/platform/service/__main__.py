"""`python -m confide.platform.service coordinator|join ...`: the two service commands without the CLI.

The `confide coordinator` and `confide join` commands call the same functions; this entry point
exists so that tests (and operators without the full CLI) can start each side as a process.
Bad input prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from confide.errors import BadInput


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m confide.platform.service")
    commands = parser.add_subparsers(dest="command", required=True)
    coordinator = commands.add_parser("coordinator", help="Serve a federation.")
    coordinator.add_argument("federation", type=Path)
    coordinator.add_argument("--state", type=Path, required=True)
    coordinator.add_argument("--host", default="127.0.0.1")
    coordinator.add_argument("--port", type=int, default=8443)
    coordinator.add_argument("--tls-cert", type=Path)
    coordinator.add_argument("--tls-key", type=Path)
    coordinator.add_argument("--insecure", action="store_true")
    coordinator.add_argument("--tick-s", type=float, default=1.0)
    join = commands.add_parser("join", help="Take part in a federation as one institution.")
    join.add_argument("institution", type=Path)
    join.add_argument("--federation", type=Path, required=True)
    join.add_argument("--coordinator", required=True)
    join.add_argument("--pin")
    join.add_argument("--ca", type=Path)
    join.add_argument("--once", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "coordinator":
            from confide.platform.service.server import CoordinatorSettings, run_coordinator

            settings = CoordinatorSettings(host=args.host, port=args.port, tls_cert=args.tls_cert,
                                           tls_key=args.tls_key, insecure=args.insecure, tick_s=args.tick_s)
            run_coordinator(args.federation, args.state, settings, say=lambda line: print(line, flush=True))
        else:
            from confide.platform.service.agent import run_agent

            report = run_agent(args.institution, args.federation, args.coordinator, pin=args.pin, ca_file=args.ca,
                               once=args.once, say=lambda line: print(line, flush=True))
            print(f"done: uploaded {report.uploaded}, declined {report.declined}, applied {report.applied}, "
                  f"failed {report.failed}, missed {report.missed}", flush=True)
    except BadInput as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
