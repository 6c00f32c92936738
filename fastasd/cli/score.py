"""The ``fastasd score`` command: its arguments, and the run they ask for (score, watch or merge)
with a model folder (:func:`fastasd.api.load`) or an ONNX export (:func:`fastasd.onnx_detector.load_onnx`).
The job itself is :mod:`fastasd.scoring`.
"""
from __future__ import annotations

import argparse
import sys

from fastasd.data.inputs import parse_shard
from fastasd.precision import runs_bfloat16
from fastasd.scoring import (
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_USAGE,
    RunLocked,
    default_device,
    exit_status,
    merge_shards,
    score_inputs,
    watch_inputs,
)
from fastasd.scoring.pipeline import DetectorFailed

# Errors of what the user asked for (arguments, folders, inputs, the model): one line, exit 2.
_USAGE_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
                 PermissionError, RunLocked, ImportError)


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _shard(text: str) -> str:
    try:
        parse_shard(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fastasd score`` (see :mod:`fastasd.scoring`)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "outputs: DIR/scores.csv (file,file_name,machine_type,section,domain,label,score,decision),\n"
        "  DIR/errors.csv (file,reason), DIR/run.json and the DCASE submission files.\n"
        "resume: --resume skips every clip already in scores.csv/errors.csv.\n"
        "sharding: --shard i/n (default RANK/WORLD_SIZE under torchrun) writes DIR/shard-<i>-of-<n>/;\n"
        "  the last shard to finish merges them into DIR when it sees them all; otherwise gather the\n"
        "  shard folders in one DIR and run: fastasd score --merge --out DIR\n"
        "exit status: 0 every clip scored; 3 some clips failed (errors.csv); 4 nothing scored;\n"
        "  2 usage error (arguments, refused or locked output folder, missing input or model);\n"
        "  1 the job stopped before its end (disk full, a broken model): fix it and --resume.")
    parser.add_argument("paths", nargs="*", metavar="MODEL_DIR INPUT",
                        help="the trained model folder, then audio files, folders, DCASE roots, glob patterns, "
                             ".zip/.tar/.tar.gz archives or .txt/.lst list files (with --merge: shard folders)")
    parser.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--batch-size", type=_int_at_least(1), default=64, help="clips per model call (default 64)")
    parser.add_argument("--workers", type=_int_at_least(0), default=None, metavar="N",
                        help="decode processes (default: up to 8 on CUDA; on CPU 0 = a decode thread; "
                             "at most the CPUs available)")
    parser.add_argument("--section", metavar="MACHINE:SS",
                        help="machine type and section of every clip (default: from each clip's DCASE path)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the run in DIR")
    group.add_argument("--overwrite", action="store_true",
                       help="replace the run in DIR (with --merge: the results in DIR), its submission files too")
    parser.add_argument("--shard", metavar="i/n", type=_shard,
                        help="score shard i of n (default: RANK/WORLD_SIZE under torchrun, else all)")
    parser.add_argument("--submission", action=argparse.BooleanOptionalAction, default=None,
                        help="write the DCASE submission files (default: yes, but duplicate file names "
                             "in a section then only warn; shards leave them to the merge)")
    parser.add_argument("--ground-truth", action="append", metavar="GT_DIR",
                        help="official ground-truth folder filling in labels/domains of evaluation clips "
                             "(repeatable)")
    parser.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="what the networks compute in: auto (default) = bfloat16 on a CPU whose "
                             "bfloat16 units are measured faster (AMX or AVX512-BF16), else float32; "
                             "the frontend and the backend always compute in float32")
    parser.add_argument("--bf16", action="store_true", help="the same as --precision bfloat16")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda:LOCAL_RANK / cuda / cpu)")
    parser.add_argument("--merge", action="store_true",
                        help="merge shard folders (default: DIR/shard-*-of-*) into DIR instead of scoring")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or summary line")
    parser.add_argument("--onnx", metavar="FILE",
                        help="score with this ONNX export (fastasd export) on onnxruntime's CPU provider "
                             "instead of a model folder: then every path is an INPUT")
    parser.add_argument("--watch", action="store_true",
                        help="keep running: score each new audio file that appears in the INPUT folders "
                             "once its size and mtime stay unchanged for a poll interval; Ctrl-C stops")
    parser.add_argument("--poll-interval", type=_positive_float, default=2.0, metavar="SECONDS",
                        help="with --watch: seconds between two listings of the folders (default 2)")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``fastasd score``; returns the exit status (:func:`fastasd.scoring.exit_status`; 2 for a
    usage error, 1 when the job stopped before its end), errors as one line naming the file."""
    try:
        return _run(args)
    except _USAGE_ERRORS as e:
        print(f"fastasd score: {_message(e)}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, DetectorFailed) as e:  # disk full, I/O errors, a broken model: --resume goes on
        print(f"fastasd score: stopped: {_message(e)} (the rows written so far are kept: fix it and pass "
              "--resume)", file=sys.stderr)
        return EXIT_STOPPED


def _message(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if isinstance(e, OSError) and e.filename is not None and e.strerror:  # "[Errno 28] ..." -> name it
        text = f"{e.filename}: {e.strerror}"
    return text or type(e).__name__


def _run(args: argparse.Namespace) -> int:
    if args.merge:
        summary = merge_shards(args.paths or None, args.out, submission=args.submission, overwrite=args.overwrite)
        print(f"fastasd score --merge: {summary['scored']} scores and {summary['errors']} errors "
              f"of {summary['shards']} shard(s) merged into {args.out}", file=sys.stderr)
        return exit_status(summary)
    if args.onnx:
        if args.bf16 or args.precision == "bfloat16" or (args.device and args.device != "cpu"):
            print("fastasd score: --onnx runs on onnxruntime's CPU provider in float32 (no --bf16 or "
                  "--precision bfloat16, --device cpu only)",
                  file=sys.stderr)
            return EXIT_USAGE
        from fastasd.onnx_detector import load_onnx

        inputs = args.paths
    else:
        inputs = args.paths[1:]
    if not inputs:
        print("fastasd score: need MODEL_DIR (or --onnx FILE) and at least one INPUT", file=sys.stderr)
        return EXIT_USAGE
    if args.watch and args.shard:
        print("fastasd score: --watch does not shard (run one watcher per folder)", file=sys.stderr)
        return EXIT_USAGE
    if args.onnx:
        detector = load_onnx(args.onnx)
    else:
        from fastasd.api import load

        detector = load(args.paths[0], device=args.device or default_device())
    if args.watch:
        watch_inputs(detector, inputs, out_dir=args.out, poll_interval=args.poll_interval,
                     batch_size=args.batch_size, section=args.section, resume=args.resume,
                     overwrite=args.overwrite, submission=args.submission,
                     bf16=runs_bfloat16(detector, "bfloat16" if args.bf16 else args.precision),
                     ground_truth=args.ground_truth)
        return EXIT_OK
    result = score_inputs(
        detector, inputs, out_dir=args.out, batch_size=args.batch_size, num_workers=args.workers,
        section=args.section, resume=args.resume, shard=args.shard, submission=args.submission,
        bf16=args.bf16, precision=args.precision, progress=False if args.no_progress else None,
        overwrite=args.overwrite,
        return_records=False, ground_truth=args.ground_truth,
    )
    return exit_status(result.summary)


__all__ = ["add_cli_arguments", "run_cli"]
