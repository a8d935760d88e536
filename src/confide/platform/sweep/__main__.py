"""`python -m confide.platform.sweep SWEEP.yaml --out DIR [--executor local|ray] [--workers N] [--ray-address A]`.

The same as `confide sweep`, for running a sweep where only the package is importable.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from confide.errors import BadInput


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m confide.platform.sweep", description="Run a privacy-utility sweep.")
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--executor", default="local", choices=["local", "ray"])
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--ray-address", default=None)
    args = parser.parse_args(argv)
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TRANSFORMERS_VERBOSITY", "error"),
                        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(name, value)
    from confide.platform.sweep.command import sweep_command

    try:
        sweep_command(args.sweep, args.out, args.executor, args.workers, args.ray_address)
    except BadInput as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
