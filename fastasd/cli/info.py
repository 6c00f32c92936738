"""``fastasd info``: how the operators were built and which backend runs them."""
from __future__ import annotations

import argparse
import json

from fastasd._backend import format_info, info


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fastasd info``."""
    parser.add_argument("--json", action="store_true", help="print the information as JSON")


def run_cli(args: argparse.Namespace) -> int:
    """``fastasd info``: how the operators were built and which backend runs them."""
    d = info()
    print(json.dumps(d, indent=2) if args.json else format_info(d))
    return 0
