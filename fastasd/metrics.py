"""DCASE task 2 evaluation: per-section AUC and pAUC, official score and the paper's figures.

Two modes are computed from the same records (see SPEC "Evaluation"):

* **official** (the DCASE 2022-2024 evaluators): per section,
  ``auc_source`` = AUC over the source-domain normal clips plus ALL anomalous clips of the
  section, ``auc_target`` likewise with the target-domain normals, ``pauc`` = pAUC over all clips
  of the section. The official score is the harmonic mean of every ``auc_source``, ``auc_target``
  and ``pauc`` of every section, each value clamped at float epsilon.
* **paper** (the author's code): per section, ``auc_source`` / ``pauc_source`` over the source
  clips only, ``auc_target`` / ``pauc_target`` over the target clips only, ``auc_mixed`` /
  ``pauc_mixed`` over all clips (``pauc_mixed`` equals the official ``pauc``); harmonic means over
  sections.

AUC is scikit-learn's ``roc_auc_score``; pAUC is ``roc_auc_score(..., max_fpr=0.1)``, which is
McClish-standardized (0.5 = chance over the partial range, 1 = perfect). All figures are fractions
in [0, 1]; :meth:`Evaluation.format_table` prints percentages. Sign convention: a higher anomaly
score means more anomalous, and ``label == "anomaly"`` is the positive class.

Undefined metrics. A metric whose clips hold only one class (e.g. a section without anomalies,
or without source normals) is undefined. By default :func:`evaluate_records` raises a
``ValueError`` naming the section, the metric and the class counts, as the official evaluators
would fail there too. With ``allow_undefined=True`` the metric is reported as NaN, a warning names
it, and it is left out of every harmonic mean (so the official score is then computed over fewer
values than the official evaluators would use: compare such scores with care).
"""
from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

EPSILON = sys.float_info.epsilon
OFFICIAL_KEYS = ("auc_source", "auc_target", "pauc")
PAPER_KEYS = ("auc_source", "pauc_source", "auc_target", "pauc_target", "auc_mixed", "pauc_mixed")
_REQUIRED = ("file_name", "machine_type", "section", "domain", "label", "score")
_MAX_NAMES = 10  # file names listed in one error message


class UndefinedMetricWarning(UserWarning):
    """A per-section metric is undefined (one class only) and was left out of the means."""


def _name_list(names: Sequence[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:_MAX_NAMES])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _MAX_NAMES else "")


def harmonic_mean(values: Iterable[float]) -> float:
    """Harmonic mean as the DCASE evaluators compute it.

    Takes: numbers (fractions, e.g. AUCs). Each value is clamped below at ``sys.float_info.epsilon``
    first, so a zero AUC gives a tiny positive mean instead of a division by zero.
    Returns: a float; NaN if any value is NaN. Raises ``ValueError`` on an empty input or a
    negative value.
    """
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("harmonic_mean: no values")
    if np.isnan(arr).any():
        return float("nan")
    if (arr < 0).any():
        raise ValueError(f"harmonic_mean: negative value(s) {arr[arr < 0].tolist()}")
    arr = np.maximum(arr, EPSILON)
    return float(arr.size / np.sum(1.0 / arr))


def _mean_defined(values: Iterable[float]) -> float:
    """Harmonic mean of the non-NaN values; NaN if there are none."""
    vals = [v for v in values if not math.isnan(v)]
    return harmonic_mean(vals) if vals else float("nan")


@dataclass(frozen=True)
class SectionResult:
    """Figures of one (machine type, section).

    ``official``: {auc_source, auc_target, pauc}; ``paper``: {auc_source, pauc_source, auc_target,
    pauc_target, auc_mixed, pauc_mixed}; all fractions in [0, 1] (NaN only when undefined and
    ``allow_undefined`` was set). ``counts``: clip counts keyed "source_normal", "source_anomaly",
    "target_normal", "target_anomaly".
    """

    machine_type: str
    section: str
    official: dict[str, float]
    paper: dict[str, float]
    counts: dict[str, int]

    def official_values(self) -> list[float]:
        """The three values this section contributes to the official score."""
        return [self.official[k] for k in OFFICIAL_KEYS]

    def to_dict(self) -> dict:
        """JSON-able dict (NaN written as null)."""
        return {
            "machine_type": self.machine_type,
            "section": self.section,
            "counts": dict(self.counts),
            "official": {k: _json_float(v) for k, v in self.official.items()},
            "paper": {k: _json_float(v) for k, v in self.paper.items()},
        }


def _json_float(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def _summary(results: Sequence[SectionResult]) -> dict:
    """Harmonic means over sections: official score, per-key official means, paper means."""
    return {
        "official_score": _mean_defined(v for r in results for v in r.official_values()),
        "official": {k: _mean_defined(r.official[k] for r in results) for k in OFFICIAL_KEYS},
        "paper": {k: _mean_defined(r.paper[k] for r in results) for k in PAPER_KEYS},
    }


@dataclass(frozen=True)
class Evaluation:
    """Result of :func:`evaluate_records`.

    Attributes:
        sections: {(machine_type, section): SectionResult}, sorted by machine type then section.
        official_score: harmonic mean of all official values of all sections (fraction in [0, 1]).
        official: harmonic means over sections of ``auc_source``, ``auc_target``, ``pauc``.
        paper: harmonic means over sections of the paper's six figures.
        machine_types: {machine_type: {"official_score", "official", "paper"}} (same means over
            that machine type's sections only).
        max_fpr: the pAUC's false-positive-rate limit.
        records: the validated input records (for plots), one dict per clip.
    """

    sections: dict[tuple[str, str], SectionResult]
    official_score: float
    official: dict[str, float]
    paper: dict[str, float]
    machine_types: dict[str, dict]
    max_fpr: float = 0.1
    records: tuple[dict, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict:
        """JSON-able dict; top-level ``official_score`` is a fraction in [0, 1] (NaN -> null).

        Layout: official_score, max_fpr, official{...}, paper{...},
        machine_types{mt: {official_score, official, paper}}, sections[list of SectionResult dicts].
        """

        def conv(summary: dict) -> dict:
            return {
                "official_score": _json_float(summary["official_score"]),
                "official": {k: _json_float(v) for k, v in summary["official"].items()},
                "paper": {k: _json_float(v) for k, v in summary["paper"].items()},
            }

        top = conv({"official_score": self.official_score, "official": self.official,
                    "paper": self.paper})
        return {
            "official_score": top["official_score"],
            "max_fpr": self.max_fpr,
            "official": top["official"],
            "paper": top["paper"],
            "machine_types": {mt: conv(s) for mt, s in self.machine_types.items()},
            "sections": [r.to_dict() for r in self.sections.values()],
        }

    def format_table(self) -> str:
        """Readable fixed-width table, percentages with 2 decimals.

        One row per machine type / section / domain (source, target, mixed), then harmonic-mean
        rows per machine type ("hmean") and over everything ("all"). Columns: official AUC
        (source normals + all anomalies, resp. target), official pAUC (all clips, shown on the
        "mixed" row), paper AUC and pAUC (that domain's clips only; "mixed" = all clips).
        "-" marks a figure that does not exist in that mode, "nan" an undefined one.
        """
        head = (f"{'machine type':<16} {'section':<8} {'domain':<7} {'off. AUC':>9} "
                f"{'off. pAUC':>9} {'pap. AUC':>9} {'pap. pAUC':>9}")
        rule = "-" * len(head)
        lines = [head, rule]

        def pct(v: float | None) -> str:
            if v is None:
                return f"{'-':>9}"
            return f"{'nan':>9}" if math.isnan(v) else f"{100.0 * v:9.2f}"

        def rows(mt: str, sec: str, official: dict, paper: dict) -> None:
            for dom in ("source", "target", "mixed"):
                off_auc = official.get(f"auc_{dom}") if dom != "mixed" else None
                off_pauc = official["pauc"] if dom == "mixed" else None
                lines.append(f"{mt:<16} {sec:<8} {dom:<7} {pct(off_auc)} {pct(off_pauc)} "
                             f"{pct(paper[f'auc_{dom}'])} {pct(paper[f'pauc_{dom}'])}")

        for mt, summary in self.machine_types.items():
            for (smt, sec), r in self.sections.items():
                if smt == mt:
                    rows(mt, sec, r.official, r.paper)
            rows(mt, "hmean", summary["official"], summary["paper"])
            lines.append(f"{mt:<16} {'official score':<16} {pct(summary['official_score']).strip():>9} %")
            lines.append(rule)
        if len(self.machine_types) > 1:
            rows("all", "hmean", self.official, self.paper)
            lines.append(rule)
        lines.append(f"official score (harmonic mean of {3 * len(self.sections)} values over "
                     f"{len(self.sections)} section(s)): {pct(self.official_score).strip()} %")
        lines.append("off. = DCASE official (AUC: that domain's normals + all anomalies; pAUC: all "
                     "clips); pap. = paper (that domain's clips only; mixed = all clips)")
        return "\n".join(lines)


def _auc(y: np.ndarray, s: np.ndarray, max_fpr: float | None, what: str,
         allow_undefined: bool) -> float:
    """roc_auc_score (or pAUC when max_fpr is given) after checking both classes are present."""
    from sklearn.metrics import roc_auc_score

    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        msg = (f"{what} is undefined: its clips hold {n_neg} normal and {n_pos} anomalous "
               f"(it needs both)")
        if not allow_undefined:
            raise ValueError(msg)
        warnings.warn(msg + "; reported as NaN and left out of the means",
                      UndefinedMetricWarning, stacklevel=3)
        return float("nan")
    return float(roc_auc_score(y, s, max_fpr=max_fpr))


def _validate(records: Iterable[Mapping]) -> dict[tuple[str, str], list[dict]]:
    """Group records by (machine_type, section) and check every field; ValueError otherwise."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for i, rec in enumerate(records):
        missing = [k for k in _REQUIRED if k not in rec or rec[k] is None]
        mt = str(rec.get("machine_type", "?"))
        sec = str(rec.get("section", "?"))
        if missing:
            raise ValueError(
                f"record {i} ({rec.get('file_name', '?')}) of section {mt}/{sec} misses "
                f"{', '.join(missing)}: cannot evaluate")
        groups.setdefault((mt, sec), []).append(
            {"file_name": str(rec["file_name"]), "machine_type": mt, "section": sec,
             "domain": str(rec["domain"]), "label": str(rec["label"]), "score": rec["score"]})
    if not groups:
        raise ValueError("no records to evaluate")
    for (mt, sec), recs in groups.items():
        where = f"section {mt}/{sec}"
        names = [r["file_name"] for r in recs]
        seen: set[str] = set()
        dups = {n for n in names if n in seen or seen.add(n)}
        if dups:
            raise ValueError(f"{where}: duplicate file name(s) {_name_list(list(dups))}")
        unlabelled = [r["file_name"] for r in recs if r["label"] == "unknown"]
        if unlabelled:
            raise ValueError(
                f"{where}: no ground-truth label (label 'unknown') for {_name_list(unlabelled)}: "
                "cannot evaluate (for unlabelled evaluation sets pass the ground-truth CSVs)")
        bad = [f"{r['file_name']} ({r['label']!r})" for r in recs
               if r["label"] not in ("normal", "anomaly")]
        if bad:
            raise ValueError(f"{where}: label must be 'normal' or 'anomaly': {_name_list(bad)}")
        no_dom = [r["file_name"] for r in recs if r["domain"] == "unknown"]
        if no_dom:
            raise ValueError(
                f"{where}: no domain (domain 'unknown') for {_name_list(no_dom)}: cannot evaluate "
                "(for unlabelled evaluation sets pass the ground-truth CSVs)")
        bad = [f"{r['file_name']} ({r['domain']!r})" for r in recs
               if r["domain"] not in ("source", "target")]
        if bad:
            raise ValueError(f"{where}: domain must be 'source' or 'target': {_name_list(bad)}")
        bad = []
        for r in recs:
            try:
                r["score"] = float(r["score"])
            except (TypeError, ValueError):
                bad.append(f"{r['file_name']} ({r['score']!r})")
                continue
            if not math.isfinite(r["score"]):
                bad.append(f"{r['file_name']} ({r['score']!r})")
        if bad:
            raise ValueError(f"{where}: score is not a finite number for {_name_list(bad)}")
        recs.sort(key=lambda r: r["file_name"])
    return dict(sorted(groups.items()))


def evaluate_section(recs: Sequence[Mapping], max_fpr: float = 0.1, *,
                     allow_undefined: bool = False) -> SectionResult:
    """Official and paper figures of ONE section.

    Takes: records of one (machine_type, section), each a mapping with file_name, machine_type,
    section, domain (source|target), label (normal|anomaly) and score (higher = more anomalous).
    Returns: :class:`SectionResult`. Raises ``ValueError`` naming the section when a metric is
    undefined (unless ``allow_undefined``) or a record is invalid.
    """
    groups = _validate(recs)
    if len(groups) != 1:
        raise ValueError(f"evaluate_section: records span {len(groups)} sections: {list(groups)}")
    (mt, sec), rs = next(iter(groups.items()))
    return _section(mt, sec, rs, max_fpr, allow_undefined)


def _section(mt: str, sec: str, recs: Sequence[dict], max_fpr: float,
             allow_undefined: bool) -> SectionResult:
    y = np.array([r["label"] == "anomaly" for r in recs], dtype=np.int64)
    s = np.array([r["score"] for r in recs], dtype=np.float64)
    src = np.array([r["domain"] == "source" for r in recs])
    tgt = ~src
    anom = y == 1
    where = f"section {mt}/{sec}"

    def metric(mask: np.ndarray, name: str, pauc: bool) -> float:
        return _auc(y[mask], s[mask], max_fpr if pauc else None, f"{where}: {name}",
                    allow_undefined)

    official = {
        # DCASE evaluators: a domain's normals against every anomaly of the section.
        "auc_source": metric(src | anom, "official auc_source (source normals + all anomalies)",
                             False),
        "auc_target": metric(tgt | anom, "official auc_target (target normals + all anomalies)",
                             False),
        "pauc": metric(np.ones_like(src), "pauc (all clips)", True),
    }
    paper = {
        "auc_source": metric(src, "paper auc_source (source clips)", False),
        "pauc_source": metric(src, "paper pauc_source (source clips)", True),
        "auc_target": metric(tgt, "paper auc_target (target clips)", False),
        "pauc_target": metric(tgt, "paper pauc_target (target clips)", True),
        "auc_mixed": metric(np.ones_like(src), "paper auc_mixed (all clips)", False),
        "pauc_mixed": official["pauc"],
    }
    counts = {
        "source_normal": int((src & ~anom).sum()), "source_anomaly": int((src & anom).sum()),
        "target_normal": int((tgt & ~anom).sum()), "target_anomaly": int((tgt & anom).sum()),
    }
    return SectionResult(mt, sec, official, paper, counts)


def evaluate_records(records: Iterable[Mapping], max_fpr: float = 0.1, *,
                     allow_undefined: bool = False) -> Evaluation:
    """Evaluate scored, labelled test clips per section, in both modes.

    Takes: records, one mapping per test clip with keys ``file_name``, ``machine_type``,
    ``section``, ``domain`` ("source"|"target"), ``label`` ("normal"|"anomaly") and ``score``
    (finite float, higher = more anomalous); ``max_fpr`` for the pAUC (DCASE: 0.1).
    Returns: :class:`Evaluation` with all figures as fractions in [0, 1].
    Raises ``ValueError`` naming the section (and files) for: a missing field, a label or domain
    "unknown" (unlabelled clips cannot be evaluated), a non-finite score, a duplicated file name
    within a section, or an undefined metric (one class only) unless ``allow_undefined=True``,
    in which case that metric is NaN, a :class:`UndefinedMetricWarning` names it, and it is left
    out of the harmonic means.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    groups = _validate(records)
    sections = {key: _section(*key, recs, max_fpr, allow_undefined)
                for key, recs in groups.items()}
    results = list(sections.values())
    overall = _summary(results)
    machine_types = {
        mt: _summary([r for r in results if r.machine_type == mt])
        for mt in sorted({r.machine_type for r in results})
    }
    return Evaluation(
        sections=sections,
        official_score=overall["official_score"],
        official=overall["official"],
        paper=overall["paper"],
        machine_types=machine_types,
        max_fpr=max_fpr,
        records=tuple(r for recs in groups.values() for r in recs),
    )
