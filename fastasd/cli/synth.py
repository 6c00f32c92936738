"""``fastasd synth``: write a synthetic DCASE-style data set (:func:`fastasd.data.synth.generate`)."""
from __future__ import annotations

import argparse
import sys

from fastasd.data.synth import ALL_MACHINE_TYPES, DEFAULT_MACHINE_TYPES, generate


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fastasd synth``."""
    parser.add_argument("out", metavar="OUT", help="output folder (new, empty, or a previous synthetic set)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--machine-types", default=",".join(DEFAULT_MACHINE_TYPES),
                        help=f"comma-separated, from {','.join(ALL_MACHINE_TYPES)} (default %(default)s)")
    parser.add_argument("--sections", type=int, default=2, help="sections per machine type (default 2)")
    parser.add_argument("--train-source", type=int, default=60, help="source training clips per section (default 60)")
    parser.add_argument("--train-target", type=int, default=6, help="target training clips per section (default 6)")
    parser.add_argument("--test", type=int, default=40, help="test clips per section, multiple of 4 (default 40)")
    parser.add_argument("--clip-seconds", type=float, default=2.0, help="clip length in s (default 2)")
    parser.add_argument("--eval-copy", action="store_true",
                        help="also write an evaluation-style copy (unlabelled test names) and ground truth")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``fastasd synth``; returns the exit status."""
    try:
        info = generate(
            args.out, seed=args.seed, eval_copy=args.eval_copy,
            machine_types=[m.strip() for m in args.machine_types.split(",") if m.strip()],
            sections=args.sections, n_train_source=args.train_source, n_train_target=args.train_target,
            n_test=args.test, clip_seconds=args.clip_seconds, progress=sys.stderr.isatty(),
        )
    except (ValueError, FileExistsError, NotADirectoryError) as e:
        print(f"fastasd synth: {e}", file=sys.stderr)
        return 2
    print(f"wrote {info['n_files']} clips ({', '.join(info['machine_types'])}; sections "
          f"{', '.join(info['sections'])}) to {info['root']} in {info['seconds']:.1f} s")
    if info["eval_root"]:
        print(f"evaluation copy: {info['eval_root']}; ground truth: {info['ground_truth']}")
    return 0
