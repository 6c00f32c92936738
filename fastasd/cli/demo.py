"""``fastasd demo``: synthesize a small data set, train, score, evaluate, in one go.

Steps (everything under ``--out``, default ``./fastasd_demo``):

1. ``data/``: a synthetic DCASE-2022-style development set (:func:`fastasd.data.synth.generate`;
   4 machine types x 2 sections, 200 source + 10 target training clips and 40 test clips per
   section, 2-s clips).
2. the simple baseline (mean log-spectrum + nearest neighbour, :mod:`fastasd.baseline`) on the
   same data, for comparison.
3. ``model/``: the paper's system trained with the ``demo`` preset
   (:meth:`fastasd.config.Config.preset`; see there why its values are what they are).
4. ``scores/``: the test clips scored (``scores.csv`` and the DCASE submission files).
5. ``model_balanced/``: the same trained networks with a refitted backend that gives
   domain-balanced scores (the ``balanced`` preset's local-density normalization,
   :meth:`fastasd.api.Detector.refit_backend`; no second training), and its scores in
   ``scores_balanced/``.
6. the evaluation (official DCASE score, its three parts and the paper's mixed AUC/pAUC),
   printed as one table: the paper's backend, the balanced scores and the simple baseline;
   written with the per-section tables to ``results.json`` / ``results.md``.

Budget: under 5 minutes on a 2-core CPU (measured: see README). ``--quick`` runs a tiny version
(2 machine types, 1 section, 0.5-s clips, 5 training steps) in seconds, for smoke tests; its model is not
expected to learn anything.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger("fastasd.demo")  # the name its log lines always had

__all__ = ["DEMO_SYNTH", "QUICK_SYNTH", "run_demo", "evaluate_detector", "baseline_evaluation",
           "comparison_table"]

# The demo's data set. 200 source clips per section, not the synthesizer's default 60: with 60 the
# auxiliary classifier does not generalize within the budget (benchmarks/results/steps_curve_*.md).
DEMO_SYNTH = dict(machine_types=["fan", "pump", "gearbox", "valve"], sections=2, n_train_source=200,
                  n_train_target=10, n_test=40, clip_seconds=2.0)
# --quick: seconds instead of minutes; the model does not learn in this budget.
QUICK_SYNTH = dict(machine_types=["fan", "valve"], sections=1, n_train_source=8, n_train_target=2,
                   n_test=8, clip_seconds=0.5)
QUICK_OVERRIDES = dict(clip_seconds=0.5, batch_size=4, epochs=1)


def evaluate_detector(detector, root, *, out_dir=None, progress: bool | None = False,
                      strict: bool = True, metric: str = "auto"):
    """Score the test clips of ``root`` with ``detector`` and evaluate them
    (:class:`fastasd.metrics.Evaluation`; ``strict`` and ``metric`` as ``allow_undefined=not
    strict`` and ``metric`` of :func:`fastasd.metrics.evaluate_records`). With ``out_dir``,
    scores.csv and the submission files are written there (an earlier run in it is replaced)."""
    from fastasd.metrics import evaluate_records

    records = detector.score(root, out_dir=out_dir, overwrite=out_dir is not None,
                             submission=True if out_dir is not None else None, progress=progress,
                             num_workers=0)
    return evaluate_records(records, allow_undefined=not strict, metric=metric)


def baseline_evaluation(root, *, strict: bool = True, metric: str = "auto"):
    """The simple baseline's :class:`fastasd.metrics.Evaluation` on ``root`` (``strict``,
    ``metric`` as in :func:`evaluate_detector`)."""
    from fastasd.baseline import baseline_scores
    from fastasd.metrics import evaluate_records

    return evaluate_records(baseline_scores(root), allow_undefined=not strict, metric=metric)


def comparison_table(rows: list[tuple[str, object]]) -> str:
    """A fixed-width table of ``(name, Evaluation)`` rows (one official metric): the official
    score, its parts (DCASE 2022-2025: official AUC source and target, pAUC) and the paper's
    mixed AUC and pAUC, in % ("undef." where undefined)."""
    from fastasd.metrics import METRICS

    metric = METRICS[rows[0][1].metric]
    cols = ("official", *metric.keys, "mixed AUC", "mixed pAUC")
    width = max(len(n) for n, _ in rows)
    head = f"{'system':<{width}} " + " ".join(f"{c:>11}" for c in cols)
    lines = [head, "-" * len(head)]
    for name, ev in rows:
        vals = (ev.official_score, *(ev.official[k] for k in metric.keys), ev.paper["auc_mixed"],
                ev.paper["pauc_mixed"])
        lines.append(f"{name:<{width}} " + " ".join(
            f"{'undef.':>11}" if v != v else f"{100 * v:11.2f}" for v in vals))
    lines.append(f"official = {metric.title} official score; {metric.legend}; mixed: the paper's "
                 "AUC/pAUC on all clips")
    return "\n".join(lines)


def run_demo(out: str | Path = "fastasd_demo", *, seed: int = 0, quick: bool = False,
             progress: bool | None = None, echo=print, strict: bool = False,
             metric: str = "auto") -> dict:
    """Run the demo (see the module docstring); returns a summary dict.

    Args:
        out: output folder (created; an earlier demo's files in it are replaced).
        seed: seed of the synthetic data and of the training.
        quick: the tiny smoke-test version.
        progress: progress bars (None: only on a terminal).
        echo: where the report lines go (``print`` by default).
        strict: fail on a figure that is undefined (one class in its clips) instead of reporting
            it as undefined (``fastasd demo --strict``).
        metric: the official metric ("auto": from the data; see :func:`fastasd.metrics.resolve_metric`).
    """
    from fastasd import api
    from fastasd._io import atomic_write_json, atomic_write_text
    from fastasd.config import Config
    from fastasd.data.synth import generate

    out = Path(out)
    data, model_dir, scores_dir = out / "data", out / "model", out / "scores"
    balanced_dir, balanced_scores_dir = out / "model_balanced", out / "scores_balanced"
    sizes = QUICK_SYNTH if quick else DEMO_SYNTH
    config = Config.preset("demo").replace(seed=seed, device="cpu",
                                           **(QUICK_OVERRIDES if quick else {}))
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    t = time.perf_counter()
    info = generate(data, seed=seed, progress=bool(progress), **sizes)
    times["synthesize"] = time.perf_counter() - t
    echo(f"[1/6] synthesized {info['n_files']} clips ({', '.join(info['machine_types'])}; "
         f"{len(info['sections'])} section(s) each) in {times['synthesize']:.0f} s -> {data}")

    t = time.perf_counter()
    base = baseline_evaluation(data, strict=strict, metric=metric)
    times["baseline"] = time.perf_counter() - t
    echo(f"[2/6] baseline (mean log-spectrum + nearest neighbour): official score "
         f"{100 * base.official_score:.2f} % ({times['baseline']:.0f} s)")

    t = time.perf_counter()
    n_train = sum(1 for c in _train_clips(data))
    steps = -(-n_train // config.batch_size) * config.epochs
    echo(f"[3/6] training the paper's system, preset 'demo' ({config.clip_seconds:g}-s clips, batch "
         f"{config.batch_size}, {config.epochs} epochs = {steps} steps on {n_train} clips) ...")
    det = api.train(data, out_dir=model_dir, config=config, progress=progress)
    times["train"] = time.perf_counter() - t
    echo(f"      trained in {times['train']:.0f} s -> {model_dir}")

    t = time.perf_counter()
    ev = evaluate_detector(det, data, out_dir=scores_dir, progress=progress, strict=strict,
                           metric=metric)
    times["score+evaluate"] = time.perf_counter() - t
    echo(f"[4/6] scored {len(ev.records)} test clips in {times['score+evaluate']:.0f} s -> {scores_dir}")

    t = time.perf_counter()
    det_bal = det.refit_backend(data, balanced_dir, preset="balanced", progress=progress)
    ev_bal = evaluate_detector(det_bal, data, out_dir=balanced_scores_dir, progress=progress,
                               strict=strict, metric=metric)
    times["balanced backend"] = time.perf_counter() - t
    echo(f"[5/6] refitted the backend for domain-balanced scores (preset 'balanced': local-density "
         f"normalization, same networks) and scored the test clips in {times['balanced backend']:.0f} s "
         f"-> {balanced_dir}, {balanced_scores_dir}")
    times["total"] = time.perf_counter() - t_all

    table = comparison_table([
        ("fastasd, preset 'demo' (the paper's backend)", ev),
        ("fastasd, balanced scores (same model, backend refitted)", ev_bal),
        ("simple baseline (mean log-spectrum, nearest neighbour)", base)])
    delta = ev.official_score - base.official_score
    delta_bal = ev_bal.official_score - base.official_score
    summary_lines = [
        f"official score: fastasd {100 * ev.official_score:.2f} % (balanced scores "
        f"{100 * ev_bal.official_score:.2f} %)  |  baseline {100 * base.official_score:.2f} %  |  "
        f"difference {100 * delta:+.2f} points (balanced {100 * delta_bal:+.2f})",
        "time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()),
    ]
    echo("[6/6] evaluation of the test clips (%):")
    echo(table)
    for line in summary_lines:
        echo(line)
    if quick:
        echo("(--quick: a smoke test; the model is far too small and short-trained to learn)")

    result = {
        "official_score": ev.official_score,
        "balanced_official_score": ev_bal.official_score,
        "baseline_official_score": base.official_score,
        "evaluation": ev.to_dict(),
        "balanced": ev_bal.to_dict(),
        "baseline": base.to_dict(),
        "config": config.to_dict(),
        "synth": {**sizes, "seed": seed, "n_files": info["n_files"]},
        "n_train_clips": n_train,
        "steps": steps,
        "seconds": times,
        "quick": quick,
        "paths": {"data": str(data), "model": str(model_dir), "scores": str(scores_dir),
                  "model_balanced": str(balanced_dir), "scores_balanced": str(balanced_scores_dir)},
    }
    atomic_write_json(out / "results.json", result)
    md = ["# fastasd demo", "", "```", table, "```", "", *[f"- {s}" for s in summary_lines], "",
          "## Per section: the paper's backend", "", "```", ev.format_table(), "```", "",
          "## Per section: balanced scores", "", "```", ev_bal.format_table(), "```", ""]
    atomic_write_text(out / "results.md", "\n".join(md))
    echo(f"written: data {data}/, model {model_dir}/, scores and submission files {scores_dir}/, "
         f"the balanced model {balanced_dir}/ and its scores {balanced_scores_dir}/, "
         f"results {out / 'results.json'} and {out / 'results.md'} (with the per-section tables)")
    return result


def _train_clips(root):
    from fastasd.data.layout import discover

    return discover(root, splits=("train",))


# --------------------------------------------------------------------------- CLI
def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fastasd demo``."""
    parser.add_argument("--out", default="fastasd_demo", metavar="DIR",
                        help="output folder (default ./fastasd_demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the training (default 0)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke-test version (seconds; the model does not learn)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    from fastasd.cli.evaluate import add_metric_arguments

    add_metric_arguments(parser)


def run_cli(args: argparse.Namespace) -> int:
    """Run ``fastasd demo``; returns the exit status."""
    from fastasd.cli.evaluate import run_logging_undefined

    try:
        run_logging_undefined(run_demo, args.out, seed=args.seed, quick=args.quick,
                              progress=False if args.no_progress else None, strict=args.strict,
                              metric=args.metric)
    except (ValueError, FileExistsError, OSError) as e:
        print(f"fastasd demo: {e}", file=sys.stderr)
        return 2
    return 0
