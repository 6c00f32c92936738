"""Evaluation of DCASE submission files against the labelled test clips; its command line
(:mod:`fastasd.cli.evaluate`)::

    fastasd evaluate SCORES_DIR DATA_ROOT [--ground-truth GT_ROOT] [--metric YEAR] [--strict]
                     [--json FILE] [--plots DIR]

Reads every ``anomaly_score_<mt>_section_<ss>_test.csv`` in SCORES_DIR, joins each row to the
label and domain of the test clip with the same machine type, section and FILE NAME (never by
order) found under DATA_ROOT (labels of unlabelled evaluation sets come from the ground-truth CSVs
under GT_ROOT), and prints per-section AUC/pAUC of the official metric of the data's DCASE year
and the paper's (see :mod:`fastasd.metrics`) and the official score. Sections present in the data
but absent from the scores are skipped with a warning; within a scored section every test clip
must be scored exactly once, and an empty score file is an error.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from fastasd._io import atomic_open
from fastasd.metrics import CLIP_SETS, METRICS, Evaluation, clip_set_masks, evaluate_records
from fastasd.submission import SCORE_PATTERN, read_scores

logger = logging.getLogger(__name__)
_MAX_NAMES = 10


def _names(names) -> str:
    names = sorted(names)
    shown = ", ".join(names[:_MAX_NAMES])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _MAX_NAMES else "")


def build_records(scores_dir: str | os.PathLike, data_root, ground_truth=None) -> list[dict]:
    """Join the scores of ``scores_dir`` with labels and domains of the test clips of ``data_root``.

    Takes: a folder of ``anomaly_score_*`` files; a DCASE root (or anything
    :func:`fastasd.data.layout.discover` accepts); optionally the root of the official
    ground-truth CSVs (``ground_truth_data/``, ``ground_truth_domain/``).
    Returns: records (file_name, machine_type, section, domain, label, score), one per scored clip.
    Raises ``ValueError`` naming the files when a scored file is not a test clip of the data
    (extra), a test clip of a scored section has no score (missing), a score file is empty, or
    the data hold the same file name twice in a section.
    """
    return _join(scores_dir, data_root, ground_truth)[0]


def _join(scores_dir, data_root, ground_truth) -> tuple[list[dict], list]:
    """:func:`build_records` and the test clips of the data."""
    from fastasd.data.layout import discover

    scores = read_scores(scores_dir)
    clips = discover(data_root, ground_truth=ground_truth, splits=("test",))
    truth: dict[tuple[str, str, str], tuple[str, str]] = {}
    dup_data = []
    for clip in clips:
        key = (clip.machine_type, clip.section, clip.file_name)
        if key in truth:
            dup_data.append(f"{clip.machine_type}/section_{clip.section}/{clip.file_name}")
        truth[key] = (clip.label, clip.domain)
    if dup_data:
        raise ValueError(f"{data_root}: test file name(s) found more than once in a section: "
                         f"{_names(dup_data)}")

    scored_sections = {(mt, sec) for mt, sec, _, _ in scores}
    # A score file without rows is not an absent section: its clips have no score.
    empty = []
    for p in sorted(Path(scores_dir).iterdir()):
        m = SCORE_PATTERN.match(p.name)
        if m and p.is_file() and (m["mt"], m["section"]) not in scored_sections:
            n = sum(1 for mt, sec, _ in truth if (mt, sec) == (m["mt"], m["section"]))
            empty.append(f"{p} ({n} test clip(s) of {m['mt']}/section_{m['section']} in {data_root})")
    if empty:
        raise ValueError("empty score file(s), no rows: " + "; ".join(empty))
    scored_keys = {(mt, sec, name) for mt, sec, name, _ in scores}
    extra = [f"{mt}/section_{sec}/{name}" for mt, sec, name, _ in scores
             if (mt, sec, name) not in truth]
    missing = [f"{mt}/section_{sec}/{name}" for (mt, sec, name) in truth
               if (mt, sec) in scored_sections and (mt, sec, name) not in scored_keys]
    problems = []
    if extra:
        problems.append(f"{len(extra)} scored file(s) are not test clips of {data_root}: "
                        f"{_names(extra)}")
    if missing:
        problems.append(f"{len(missing)} test clip(s) of scored sections have no score in "
                        f"{scores_dir}: {_names(missing)}")
    if problems:
        raise ValueError("; ".join(problems))

    unscored = sorted({(mt, sec) for (mt, sec, _) in truth} - scored_sections)
    if unscored:
        logger.warning("sections in %s without a score file (not evaluated): %s", data_root,
                       ", ".join(f"{mt}/section_{sec}" for mt, sec in unscored))
    records = []
    for mt, sec, name, score in scores:
        label, domain = truth[(mt, sec, name)]
        records.append({"file_name": name, "machine_type": mt, "section": sec,
                        "domain": domain, "label": label, "score": score})
    return records, clips


def evaluate_directory(scores_dir: str | os.PathLike, data_root, ground_truth=None, *,
                       max_fpr: float = 0.1, allow_undefined: bool = False,
                       metric: str = "auto") -> Evaluation:
    """Evaluate the submission files in ``scores_dir`` against the test clips of ``data_root``.

    Takes: as :func:`build_records`; ``max_fpr`` for the pAUC; ``allow_undefined`` and
    ``metric`` as in :func:`fastasd.metrics.evaluate_records` ("auto" also looks at the data's
    layout: :func:`fastasd.data.layout.layout_year`).
    Returns: :class:`fastasd.metrics.Evaluation` (``official_score`` a fraction in [0, 1]).
    Raises ``ValueError`` naming files/sections for extra, missing or duplicated file names,
    empty score files, unlabelled clips (pass ``ground_truth``) and undefined figures (unless
    ``allow_undefined``).
    """
    from fastasd.data.layout import layout_year

    records, clips = _join(scores_dir, data_root, ground_truth)
    return evaluate_records(records, max_fpr=max_fpr, allow_undefined=allow_undefined,
                            metric=metric, layout_year=layout_year(clips))


def plot_evaluation(evaluation: Evaluation, out_dir: str | os.PathLike) -> list[Path]:
    """Write one PNG per section: ROC curves and score histograms by domain and label.

    Left panel: ROC curves of the clip sets of the official metric's AUCs (DCASE 2022-2025:
    source normals + all anomalies, and the target's; 2021: each domain's clips; 2020: all clips)
    and of all clips, AUCs in the legend. Right panel: histograms of the scores of source /
    target x normal / anomaly clips on shared bins. Files: ``<out_dir>/<mt>_section_<ss>.png``.
    Needs matplotlib (extra ``fastasd[plots]``); uses the Agg canvas directly, so the global
    pyplot backend is left alone. Returns the written paths.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'fastasd[plots]' "
                          f"(or matplotlib) ({e})") from e
    import numpy as np
    from sklearn.metrics import roc_curve

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_section: dict[tuple[str, str], list[dict]] = {}
    for r in evaluation.records:
        by_section.setdefault((r["machine_type"], r["section"]), []).append(r)
    paths = []
    for (mt, sec), result in evaluation.sections.items():
        recs = by_section.get((mt, sec), [])
        y = np.array([r["label"] == "anomaly" for r in recs], dtype=np.int64)
        s = np.array([r["score"] for r in recs], dtype=np.float64)
        masks = clip_set_masks(recs)
        src, tgt, anom = masks["source"], masks["target"], y == 1
        fig = Figure(figsize=(10, 4.2), dpi=80)
        FigureCanvasAgg(fig)
        ax_roc, ax_hist = fig.subplots(1, 2)
        curves = [(f"{key} (official: {CLIP_SETS[clip_set]})", masks[clip_set], result.official[key])
                  for key, clip_set, pauc in METRICS[evaluation.metric].figures
                  if not pauc and clip_set != "all"]
        curves.append(("all clips", masks["all"], result.paper["auc_mixed"]))
        for name, mask, auc in curves:
            if len(set(y[mask].tolist())) == 2:
                fpr, tpr, _ = roc_curve(y[mask], s[mask])
                ax_roc.plot(fpr, tpr, label=f"{name}: AUC {100 * auc:.2f} %")
        ax_roc.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
        ax_roc.axvline(evaluation.max_fpr, color="0.7", linestyle="--", linewidth=1)
        pauc = result.paper["pauc_mixed"]
        ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1),
                   ylim=(0, 1.01), title=f"{mt} section {sec}: ROC (pAUC of all clips "
                   + ("undefined)" if math.isnan(pauc) else f"{100 * pauc:.2f} %)"))
        if ax_roc.get_legend_handles_labels()[0]:  # no curve when the section holds one class
            ax_roc.legend(loc="lower right", fontsize="small")
        bins = np.histogram_bin_edges(s, bins=min(30, max(5, len(s) // 4)))
        for dom_name, dmask in (("source", src), ("target", tgt), ("no domain", ~(src | tgt))):
            for lab_name, lmask in (("normal", ~anom), ("anomaly", anom)):
                m = dmask & lmask
                if m.any():
                    ax_hist.hist(s[m], bins=bins, alpha=0.5, histtype="stepfilled",
                                 label=f"{dom_name} {lab_name} ({int(m.sum())})")
        ax_hist.set(xlabel="anomaly score (higher = more anomalous)", ylabel="clips",
                    title="score distribution")
        ax_hist.legend(fontsize="small")
        fig.tight_layout()
        path = out / f"{mt}_section_{sec}.png"
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png")
        paths.append(path)
    return paths
