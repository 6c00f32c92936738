"""``fastasd baseline``: the simple baseline's submission files and, with labels, its evaluation
(:func:`fastasd.baseline.baseline_scores`)."""
from __future__ import annotations

import argparse
import sys

from fastasd.baseline import baseline_scores


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fastasd baseline``."""
    parser.add_argument("data_root", metavar="DATA_ROOT", help="DCASE root (<root>/<machine_type>/{train,test})")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder for the DCASE submission files (anomaly_score_*, decision_result_*)")
    parser.add_argument("--ground-truth", metavar="GT", default=None,
                        help="root of the official ground-truth CSVs (ground_truth_data/, ground_truth_domain/)")
    parser.add_argument("--references", choices=("all", "source"), default="all",
                        help="reference training clips: source and target (default) or source only")
    parser.add_argument("--percentile", type=float, default=90.0,
                        help="decision threshold percentile of the training scores (default 90)")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write the evaluation (when labels are known) as JSON")
    from fastasd.cli.evaluate import add_metric_arguments

    add_metric_arguments(parser)


def run_cli(args: argparse.Namespace) -> int:
    """Run ``fastasd baseline``: write submission files, print the evaluation if labels are known."""
    from fastasd._io import atomic_write_json
    from fastasd.cli.evaluate import run_logging_undefined
    from fastasd.data.audio import AudioError
    from fastasd.data.layout import discover, layout_year
    from fastasd.metrics import evaluate_records
    from fastasd.submission import write_submission

    refs = ("source", "target") if args.references == "all" else ("source",)
    try:
        records = baseline_scores(args.data_root, args.ground_truth, reference_domains=refs,
                                  percentile=args.percentile, progress=sys.stderr.isatty())
        paths = write_submission(args.out, records)
    except (ValueError, OSError, AudioError) as e:
        print(f"fastasd baseline: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} submission file(s) for {len(records)} test clip(s) to {args.out}")
    if any(r["label"] == "unknown" or r["domain"] == "unknown" for r in records):
        print("labels unknown (pass --ground-truth for an evaluation set): no evaluation")
        return 0
    try:
        year = layout_year(discover(args.data_root, ground_truth=args.ground_truth, splits=("test",)))
        ev = run_logging_undefined(evaluate_records, records, allow_undefined=not args.strict,
                                   metric=args.metric, layout_year=year)
    except ValueError as e:  # with --strict: e.g. a section holding one class only
        print(f"fastasd baseline: cannot evaluate: {e}", file=sys.stderr)
        return 2
    print(ev.format_table())
    if args.json:
        result = ev.to_dict()
        result["inputs"] = {"data_root": str(args.data_root), "references": args.references,
                            "ground_truth": None if args.ground_truth is None else str(args.ground_truth)}
        atomic_write_json(args.json, result)
    return 0
