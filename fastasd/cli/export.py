"""``fastasd export``: a trained model as one ONNX graph (:func:`fastasd.export.export_onnx`)."""
from __future__ import annotations

import argparse
import sys

from fastasd.export import DEFAULT_OPSET, OnnxDetector, export_onnx


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fastasd export``."""
    parser.add_argument("model", metavar="MODEL_DIR", help="the trained model folder (fastasd train --out)")
    parser.add_argument("--out", "-o", required=True, metavar="FILE", help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the check of the graph's scores against the PyTorch detector")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing FILE (never one of the model's own files)")


def run_cli(args: argparse.Namespace) -> int:
    """``fastasd export``: write the ONNX graph; 2 with the reason for a usage error (a missing
    model, an ``--out`` that exists or is a folder), 1 when the model cannot be exported."""
    try:
        out = export_onnx(args.model, args.out, opset=args.opset, verify=not args.no_verify,
                          overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, ImportError) as e:
        print(f"fastasd export: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"fastasd export: {e}", file=sys.stderr)
        return 1
    meta = OnnxDetector(out).metadata if not args.no_verify else None
    what = (f" ({meta['ensemble_size']} member(s), {len(meta['sections'])} sections, "
            f"backends {', '.join(sorted(set(meta['backends'])))})") if meta else ""
    print(f"fastasd export: wrote {out}{what}", file=sys.stderr)
    return 0
