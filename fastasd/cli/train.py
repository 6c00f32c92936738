"""``fastasd train``: its arguments (data, output, preset, one switch per Config field) and its
handler, which calls :func:`fastasd.api.train`. :func:`add_config_switches` and
:func:`config_overrides` also serve ``fastasd fit-backend``."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from fastasd.config import PRESETS, Config


_CLI_SKIP = frozenset()  # every Config field gets a switch


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fastasd train``: data, output, preset, and one switch per Config field."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.description = (
        "Train a detector (an ensemble of embedding networks + per-section backend) on the "
        "training clips of one or more DCASE-layout roots and save it to MODEL_DIR. Defaults "
        "are the paper's configuration (--preset paper); every switch below overrides the "
        "preset.")
    parser.add_argument("data_root", nargs="+", metavar="DATA_ROOT",
                        help="DCASE root(s) (<root>/<machine_type>/train) or machine-type folders; "
                             "give development and evaluation roots together to train on both")
    parser.add_argument("--out", required=True, metavar="MODEL_DIR", help="where to save the model")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted training from MODEL_DIR/checkpoints")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the model and training checkpoints already in MODEL_DIR "
                             "(without it, or --resume, an existing one is refused)")
    parser.add_argument("--ground-truth", metavar="GT", default=None,
                        help="ground-truth folder for unlabelled test names (not needed to train)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="paper",
                        help="base configuration: the paper's system, the paper's Table 7 "
                             "'standard design choices', the small demo setting, or the paper's "
                             "system with domain-balanced (local-density normalized) scores")
    parser.add_argument("--config", metavar="JSON", default=None,
                        help="a config.json (e.g. of a saved model) as the base instead of --preset")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--data-parallel", action="store_true",
                        help="under torchrun: train each ensemble member with DistributedDataParallel "
                             "over all processes (each global batch of --batch-size clips split over "
                             "them) instead of one member per process (the default)")
    add_config_switches(parser.add_argument_group("configuration (default: the preset's value)"))


def add_config_switches(group, names=None) -> None:
    """One ``--<field>`` switch per Config field (or per field in ``names``), default None (= keep
    the base configuration's value); :func:`config_overrides` reads them back."""
    for name, typ, default, help_text, choices in Config.fields_help():
        if name in _CLI_SKIP or (names is not None and name not in names):
            continue
        metavar = "{" + ",".join(map(str, choices)) + "}" if choices else (
            "BOOL" if typ is bool else typ.__name__.upper())
        group.add_argument(_option(name), dest=f"cfg_{name}", default=None, metavar=metavar,
                           help=f"{help_text} [paper: {default}]")


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The Config fields set by :func:`add_config_switches` switches, parsed."""
    overrides = {}
    for name, *_ in Config.fields_help():
        text = getattr(args, f"cfg_{name}", None)
        if text is not None:
            overrides[name] = Config.parse_value(name, text)
    return overrides


def config_from_args(args: argparse.Namespace) -> Config:
    """The Config of a parsed ``fastasd train`` command line (preset or --config, then switches)."""
    if getattr(args, "config", None):
        with open(args.config, encoding="utf-8") as f:
            base = Config.from_dict(json.load(f))
    else:
        base = Config.preset(args.preset)
    overrides = config_overrides(args)
    return base.replace(**overrides) if overrides else base


def _refuse_replacing(out: Path, *, resume: bool, overwrite: bool) -> str | None:
    """Why training into ``out`` is refused (None: it is not). A folder holding a trained model
    (``manifest.json``) or training checkpoints needs ``--resume`` (continue from the
    checkpoints) or ``--overwrite`` (its checkpoints are removed, so no member of the old training
    can be resumed into the new one; the model files are replaced when the new one is saved)."""
    from fastasd.api import MANIFEST

    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a folder"
    if resume and overwrite:
        return "--resume and --overwrite exclude each other"
    checkpoints = sorted((out / "checkpoints").glob("member_*.pt")) if out.is_dir() else []
    held = (["a trained model"] if (out / MANIFEST).exists() else []) + (
        [f"{len(checkpoints)} training checkpoint(s)"] if checkpoints else [])
    if not held or resume:
        return None
    if not overwrite:
        return (f"{out} already holds {' and '.join(held)}; pass --overwrite to replace them, or --resume to "
                "continue that training")
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one process removes them
        for p in checkpoints:
            p.unlink()
    return None


def run_cli(args: argparse.Namespace) -> int:
    """Run ``fastasd train``; returns the exit status."""
    from fastasd import api
    from fastasd.data.audio import AudioError

    try:
        config = config_from_args(args)
    except (ValueError, OSError) as e:
        print(f"fastasd train: {e}", file=sys.stderr)
        return 2
    refused = _refuse_replacing(Path(args.out), resume=args.resume, overwrite=args.overwrite)
    if refused:
        print(f"fastasd train: {refused}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        detector = api.train(args.data_root, out_dir=args.out, config=config,
                             ground_truth=args.ground_truth, resume=args.resume,
                             progress=False if args.no_progress else None,
                             data_parallel=args.data_parallel)
    except (ValueError, FileNotFoundError, RuntimeError, AudioError) as e:
        rank = f" (rank {os.environ['RANK']})" if "RANK" in os.environ else ""
        print(f"fastasd train{rank}: {e}", file=sys.stderr)
        return 2
    if detector is None:  # a torchrun rank other than 0: rank 0 saved the model
        return 0
    print(f"trained {len(detector.models)} model(s) on {detector.info.get('n_train_clips', '?')} clips "
          f"({len(detector.encoder)} classes, {len(detector.known_sections)} sections) in "
          f"{time.perf_counter() - t0:.0f} s; saved to {args.out}")
    return 0
