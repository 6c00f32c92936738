"""``fastasd evaluate``: AUC/pAUC and the official score of submission files
(:func:`fastasd.evaluate.evaluate_directory`), printed, as JSON and as plots."""
from __future__ import annotations

import argparse
import logging
import sys
import warnings

from fastasd._io import atomic_write_json
from fastasd.evaluate import evaluate_directory, plot_evaluation
from fastasd.metrics import METRIC_CHOICES, UndefinedMetricWarning

logger = logging.getLogger("fastasd.evaluate")


def add_metric_arguments(parser: argparse.ArgumentParser) -> None:
    """``--metric`` and ``--strict`` (also of ``fastasd baseline`` and ``fastasd demo``)."""
    parser.add_argument("--metric", choices=METRIC_CHOICES, default="auto",
                        help="official metric of which DCASE year: auto (default: 2020 for "
                             "2020 names or clips without domains, 2021 for its source_test/ "
                             "target_test/ folders, else 2022-2025, which share one metric)")
    parser.add_argument("--strict", action="store_true",
                        help="fail (exit 2) when a figure is undefined because its clips hold one "
                             "class only; by default it is reported as undefined with the reason, "
                             "with a warning, and every other figure is computed")


def run_logging_undefined(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with each :class:`UndefinedMetricWarning` of the evaluations it
    runs logged as one warning line instead of a Python warning (the tables list the reasons);
    other warnings pass through."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UndefinedMetricWarning)
        result = fn(*args, **kwargs)
    for w in caught:
        if issubclass(w.category, UndefinedMetricWarning):
            logger.warning("%s Pass --strict to make this an error.", w.message)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fastasd evaluate``."""
    parser.add_argument("scores_dir", metavar="SCORES_DIR",
                        help="folder with anomaly_score_<mt>_section_<ss>_test.csv files")
    parser.add_argument("data_root", metavar="DATA_ROOT",
                        help="DCASE root (<root>/<machine_type>/test/*.wav) with the test clips")
    parser.add_argument("--ground-truth", metavar="GT_ROOT", default=None,
                        help="root of the official ground-truth CSVs (ground_truth_data/, "
                             "ground_truth_domain/) for unlabelled evaluation sets")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write the results as JSON (top-level official_score, a "
                             "fraction in [0, 1])")
    parser.add_argument("--plots", metavar="DIR", default=None,
                        help="write per-section ROC curves and score histograms as PNG "
                             "(needs matplotlib)")
    parser.add_argument("--max-fpr", type=float, default=0.1,
                        help="false-positive-rate limit of the pAUC (default: 0.1, as DCASE)")
    add_metric_arguments(parser)
    parser.add_argument("--allow-undefined", action="store_true",
                        help="report a figure whose clips hold one class only as undefined and "
                             "leave it out of the means: the default now (kept for old command "
                             "lines; the opposite of --strict)")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``fastasd evaluate``: print the table; 0 on success (undefined figures are a
    warning unless --strict), 2 on a data/input error."""
    if args.strict and args.allow_undefined:
        print("fastasd evaluate: error: --strict and --allow-undefined contradict each other",
              file=sys.stderr)
        return 2
    try:
        ev = run_logging_undefined(evaluate_directory, args.scores_dir, args.data_root,
                                   args.ground_truth, max_fpr=args.max_fpr,
                                   allow_undefined=not args.strict, metric=args.metric)
        print(ev.format_table())
        if args.json:
            result = ev.to_dict()
            result["inputs"] = {"scores_dir": str(args.scores_dir),
                                "data_root": str(args.data_root),
                                "ground_truth": None if args.ground_truth is None
                                else str(args.ground_truth)}
            atomic_write_json(args.json, result)
            logger.info("wrote %s", args.json)
        if args.plots:
            paths = plot_evaluation(ev, args.plots)
            logger.info("wrote %d plot(s) to %s", len(paths), args.plots)
    except (ValueError, OSError, ImportError) as e:
        print(f"fastasd evaluate: error: {e}", file=sys.stderr)
        return 2
    return 0

