"""`python arena.py` and `python -m app`: read and check the command line first (app.options, light), and
only then import the model libraries, load the engine and serve (app.server)."""
from __future__ import annotations

import logging

from kernel.cli import log_to_stderr, run_command

from .options import parse_args, settings_from_args


def main(argv=None) -> int:
    log_to_stderr(logging.INFO)
    args = parse_args(argv)

    def start() -> None:
        settings = settings_from_args(args)  # a wrong flag or variable stops here, before the heavy imports
        from .server import serve

        serve(args, settings)

    return run_command(start, interrupted="stopped")
