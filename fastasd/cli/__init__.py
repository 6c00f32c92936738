"""The ``fastasd`` command line: the command layer, the top of the package.

Each subcommand is one module of this package (``fastasd.cli.<command>``, ``-`` spelled ``_``)
that defines ``add_cli_arguments(parser)`` and ``run_cli(args) -> int``; this file only
dispatches, and imports a module only when its subcommand runs (so ``fastasd --help`` stays
fast). Only this layer parses arguments and prints for the user; the library below it keeps no
argparse code, and only this layer imports :mod:`fastasd.api` (checked by the import-linter
contract in ``pyproject.toml``).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("fastasd.cli.demo", "synthesize data, train, score and evaluate in one go"),
    "synth": ("fastasd.cli.synth", "write a synthetic DCASE-style machine-sound dataset"),
    "train": ("fastasd.cli.train", "train a detector on a DCASE-layout dataset"),
    "fit-backend": ("fastasd.cli.fit_backend", "fit a new backend for a trained model, without retraining"),
    "score": ("fastasd.cli.score", "score audio files, folders, archives or a DCASE root"),
    "export": ("fastasd.cli.export", "export a trained model to one ONNX graph (waveform -> anomaly score)"),
    "evaluate": ("fastasd.cli.evaluate", "compute AUC/pAUC and the official score of submission files"),
    "baseline": ("fastasd.cli.baseline", "mean log-spectrum + nearest-neighbour baseline scores"),
    "info": ("fastasd.cli.info", "show how the fastasd operators were built and which backend runs"),
}

# Commands whose tensors are large enough that glibc's mmap for every big block costs page faults
# on every step (see fastasd/allocator.py; FASTASD_MALLOC_TUNING=0 turns the tuning off).
_HEAVY_COMMANDS = ("demo", "train", "fit-backend", "score")


def build_parser() -> argparse.ArgumentParser:
    from fastasd import __version__

    parser = argparse.ArgumentParser(
        prog="fastasd",
        description="Anomalous sound detection for machine condition monitoring.",
    )
    parser.add_argument("--version", action="version", version=f"fastasd {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        # Arguments are added lazily in main() for the chosen command only.
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Find the subcommand first, then let its module define the arguments.
    sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sp in sub_action.choices.items():
        if name in argv:
            idx = argv.index(name)
            if all(a.startswith("-") for a in argv[:idx]):
                importlib.import_module(COMMANDS[name][0]).add_cli_arguments(sp)
                break
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    module = importlib.import_module(args._module)
    if args.command in _HEAVY_COMMANDS:
        from fastasd.allocator import tune_allocator

        tune_allocator()
    try:
        return int(module.run_cli(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
