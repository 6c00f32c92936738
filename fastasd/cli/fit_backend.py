"""``fastasd fit-backend``: a new backend (and thresholds) for a trained model, without
retraining (:meth:`fastasd.api.Detector.refit_backend`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastasd.cli.train import add_config_switches, config_overrides
from fastasd.config import BACKEND_FIELDS, PRESETS


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fastasd fit-backend``: model, data, output, and the backend switches."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.description = (
        "Fit a new backend (and decision thresholds) for a trained model without retraining: the "
        "training clips of DATA_ROOT are embedded once by the model's networks, the backend is "
        "fitted on them, and the result is saved as a complete model in NEW_MODEL_DIR. Backend "
        "settings not given keep the model's values.")
    parser.add_argument("model", metavar="MODEL_DIR", help="a saved model (fastasd train --out)")
    parser.add_argument("data_root", nargs="+", metavar="DATA_ROOT",
                        help="DCASE root(s) whose training clips fit the backend (normally those the "
                             "model was trained on)")
    parser.add_argument("--out", required=True, metavar="NEW_MODEL_DIR", help="where to save the new model")
    parser.add_argument("--preset", choices=tuple(PRESETS), default=None,
                        help="take the backend settings of this preset (e.g. balanced), then the switches")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in NEW_MODEL_DIR")
    parser.add_argument("--ground-truth", metavar="GT", default=None,
                        help="ground-truth folder for unlabelled test names (not needed to fit)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_switches(parser.add_argument_group("backend settings (default: the model's value)"),
                        names=BACKEND_FIELDS)


def run_cli(args: argparse.Namespace) -> int:
    """Run ``fastasd fit-backend``; returns the exit status."""
    from fastasd import api
    from fastasd.data.audio import AudioError

    src, out = Path(args.model), Path(args.out)
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        print(f"fastasd fit-backend: --out {out} is the model folder itself; choose a new folder",
              file=sys.stderr)
        return 2
    if (out / api.MANIFEST).exists() and not args.overwrite:
        print(f"fastasd fit-backend: {out} already holds a model; pass --overwrite to replace it",
              file=sys.stderr)
        return 2
    try:
        overrides = config_overrides(args)
        det = api.load(src)
        new = det.refit_backend(args.data_root, out, preset=args.preset, ground_truth=args.ground_truth,
                                progress=False if args.no_progress else None, **overrides)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError, AudioError) as e:
        print(f"fastasd fit-backend: {e}", file=sys.stderr)
        return 2
    r = new.info["refit_backend"]
    changed = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "no setting changed"
    print(f"fitted the backend of {src} on {r['n_train_clips']} training clips in {r['seconds']:.0f} s "
          f"({changed}); saved to {out}")
    return 0
