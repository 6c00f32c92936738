"""DCASE task 2 evaluation: per-section AUC and pAUC, every year's official score, the paper's figures.

The official metric of each DCASE year (:data:`METRICS`; ``metric=`` picks one, ``"auto"`` chooses
from the data, see :func:`resolve_metric`):

* ``dcase2022`` (the official evaluators of 2022, 2023, 2024 and 2025): per section,
  ``auc_source`` = AUC over the source-domain normal clips plus ALL anomalous clips of the
  section, ``auc_target`` likewise with the target-domain normals, ``pauc`` = pAUC over all clips
  of the section. The official score is the harmonic mean of every ``auc_source``,
  ``auc_target`` and ``pauc`` of every section.
* ``dcase2021`` (the 2021 evaluator; its test clips of the two domains lay in separate folders):
  per section and domain, ``auc_<domain>`` and ``pauc_<domain>`` over that domain's clips only
  (its normals against ITS anomalies). The official score is the harmonic mean of the four
  values of every section.
* ``dcase2020`` (the 2020 evaluator; data without domains): per section (the machine id), ``auc``
  and ``pauc`` over all its clips. Per machine type the arithmetic mean over its sections (the
  evaluator's "Average" row) and, as its score, the arithmetic mean of all its AUC and pAUC
  values; over machine types the arithmetic means of those.

Harmonic means clamp each value at float epsilon first, as the evaluators do.

The paper's figures (the author's code), for data with domains: per section ``auc_source`` /
``pauc_source`` over the source clips only, ``auc_target`` / ``pauc_target`` over the target clips
only, ``auc_mixed`` / ``pauc_mixed`` over all clips; harmonic means over sections. Without domains
(the 2020 metric) only the mixed ones exist.

AUC is scikit-learn's ``roc_auc_score``; pAUC is ``roc_auc_score(..., max_fpr=0.1)``, which is
McClish-standardized (0.5 = chance over the partial range, 1 = perfect). All figures are fractions
in [0, 1]; :meth:`Evaluation.format_table` prints percentages. Sign convention: a higher anomaly
score means more anomalous, and ``label == "anomaly"`` is the positive class.

Undefined figures. A figure whose clips hold only one class (a section without anomalies, a
domain without normals) is undefined. By default (``allow_undefined=False``) :func:`evaluate_records`
raises a ``ValueError`` naming the section, the figure and the class counts, as the official
evaluators would fail there too. With ``allow_undefined=True`` (what ``fastasd evaluate`` does
unless ``--strict``) the figure is NaN, its reason is kept (``SectionResult.undefined``), one
:class:`UndefinedMetricWarning` lists them, every other figure is computed, the means over
sections leave the undefined values out, and the official score is NaN with its reason
(``Evaluation.undefined["official_score"]``): ``partial_official_score`` then holds the mean of
the defined values, which is NOT comparable with official scores.
"""
from __future__ import annotations

import math
import re
import sys
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

EPSILON = sys.float_info.epsilon
OFFICIAL_KEYS = ("auc_source", "auc_target", "pauc")  # the 2022-2025 metric's per-section values
PAPER_KEYS = ("auc_source", "pauc_source", "auc_target", "pauc_target", "auc_mixed", "pauc_mixed")
_REQUIRED = ("file_name", "machine_type", "section", "label", "score")
_MAX_NAMES = 10  # file names listed in one error message


@dataclass(frozen=True)
class Metric:
    """One DCASE year's official per-section figures and how they are averaged.

    ``figures``: ``(key, clip set, is_pauc)`` per figure of a section, the clip set one of
    :data:`CLIP_SETS`; ``mean``: "harmonic" or "arithmetic"; ``domains``: whether the metric
    needs each clip's domain; ``source``: where the definition comes from.
    """

    name: str
    title: str
    figures: tuple[tuple[str, str, bool], ...]
    mean: str
    domains: bool
    legend: str
    source: str

    @property
    def keys(self) -> tuple[str, ...]:
        """The per-section figure names, in order."""
        return tuple(k for k, _, _ in self.figures)


#: clip set -> what it holds (the masks are built in :func:`_masks`).
CLIP_SETS = {
    "all": "all clips",
    "source": "source clips",
    "target": "target clips",
    "source+anomalies": "source normals + all anomalies",
    "target+anomalies": "target normals + all anomalies",
}

METRICS: dict[str, Metric] = {
    "dcase2020": Metric(
        "dcase2020", "DCASE 2020", (("auc", "all", False), ("pauc", "all", True)), "arithmetic",
        False, "DCASE 2020 official: AUC and pAUC over all clips of a section (machine id); "
        "mean = arithmetic mean over sections; score = arithmetic mean of the AUC and pAUC values",
        "dcase2020_task2_evaluator (per machine id AUC/pAUC, 'Average' per machine type)"),
    "dcase2021": Metric(
        "dcase2021", "DCASE 2021",
        (("auc_source", "source", False), ("auc_target", "target", False),
         ("pauc_source", "source", True), ("pauc_target", "target", True)), "harmonic", True,
        "off. = DCASE 2021 official (AUC and pAUC over that domain's clips only); pap. = paper "
        "(that domain's clips only; mixed = all clips)",
        "dcase2021_task2_evaluator (per section and domain; harmonic mean over all)"),
    "dcase2022": Metric(
        "dcase2022", "DCASE 2022-2025",
        (("auc_source", "source+anomalies", False), ("auc_target", "target+anomalies", False),
         ("pauc", "all", True)), "harmonic", True,
        "off. = DCASE 2022-2025 official (AUC: that domain's normals + all anomalies; pAUC: all "
        "clips); pap. = paper (that domain's clips only; mixed = all clips)",
        "dcase2022/2023/2024/2025_task2_evaluator (official score: harmonic mean of AUC source, "
        "AUC target and pAUC of every section)"),
}
_PAPER_FIGURES = (("auc_source", "source", False), ("pauc_source", "source", True),
                  ("auc_target", "target", False), ("pauc_target", "target", True),
                  ("auc_mixed", "all", False), ("pauc_mixed", "all", True))
#: what ``metric=`` accepts besides "auto" and the names of :data:`METRICS`
METRIC_ALIASES = {"2020": "dcase2020", "2021": "dcase2021", "2022": "dcase2022",
                  "2023": "dcase2022", "2024": "dcase2022", "2025": "dcase2022",
                  "dcase2023": "dcase2022", "dcase2024": "dcase2022", "dcase2025": "dcase2022"}
METRIC_CHOICES = ("auto", "2020", "2021", "2022", "2023", "2024", "2025")
# DCASE 2020 file names: machine id instead of section, no domain ("normal_id_00_00000000.wav").
_DCASE2020_NAME = re.compile(r"^(?:(?:normal|anomaly)_)?id_\d+_\d+", re.IGNORECASE)


class UndefinedMetricWarning(UserWarning):
    """A per-section figure is undefined (one class only) and was left out of the means."""


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


def arithmetic_mean(values: Iterable[float]) -> float:
    """Plain mean (the DCASE 2020 averages); NaN if any value is NaN. ``ValueError`` if empty."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("arithmetic_mean: no values")
    return float(arr.mean())


def _mean_defined(values: Iterable[float], mean=harmonic_mean) -> float:
    """``mean`` of the non-NaN values; NaN if there are none."""
    vals = [v for v in values if not math.isnan(v)]
    return mean(vals) if vals else float("nan")


def metric_by_name(metric: str) -> Metric:
    """The :class:`Metric` called ``metric`` ("dcase2022", or a year "2020" ... "2025").

    Raises ``ValueError`` naming the allowed values.
    """
    name = METRIC_ALIASES.get(str(metric).lower(), str(metric).lower())
    if name not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: choose auto, one of {list(METRICS)} or a "
                         f"year {', '.join(c for c in METRIC_CHOICES if c != 'auto')}")
    return METRICS[name]


def _has_domain(rec: Mapping) -> bool:
    return rec.get("domain") not in (None, "unknown")


def resolve_metric(metric: str, records: Sequence[Mapping], layout_year: int | None = None
                   ) -> tuple[Metric, str]:
    """The official metric to use and why.

    Takes: ``metric`` ("auto" or a name/year, see :func:`metric_by_name`); the records; the DCASE
    year the data's layout reveals, if the caller knows it (:func:`fastasd.data.layout.layout_year`:
    2020 names, 2021 ``source_test/`` folders; 2022-2025 look alike).
    Returns: ``(Metric, reason)``. "auto" picks ``dcase2020`` for 2020 file names or clips without
    any domain, ``dcase2021`` for the 2021 layout, ``dcase2022`` (2022-2025) otherwise.
    """
    if str(metric).lower() != "auto":
        m = metric_by_name(metric)
        return m, f"chosen by metric={metric!r}"
    if layout_year == 2020 or (records and all(_DCASE2020_NAME.match(str(r.get("file_name", "")))
                                               for r in records)):
        return METRICS["dcase2020"], ("chosen automatically: the file names follow the DCASE 2020 "
                                      "layout (normal_id_00_00000000.wav: machine ids, no domains)")
    if not any(_has_domain(r) for r in records):
        return METRICS["dcase2020"], ("chosen automatically: no clip has a domain, and the 2020 "
                                      "metric is the one without domains")
    if layout_year == 2021:
        return METRICS["dcase2021"], ("chosen automatically: the test clips lie in the DCASE 2021 "
                                      "folders source_test/ and target_test/")
    return METRICS["dcase2022"], ("chosen automatically: the clips have source/target domains "
                                  "(2021 data look alike: force --metric 2021 for them)")


@dataclass(frozen=True)
class SectionResult:
    """Figures of one (machine type, section).

    ``official``: the metric's figures (:attr:`Metric.keys`; for ``dcase2022`` auc_source,
    auc_target, pauc); ``paper``: the paper's six (two, auc_mixed and pauc_mixed, without
    domains); all fractions in [0, 1], NaN when undefined (then ``undefined["official.<key>"]``
    or ``undefined["paper.<key>"]`` says why). ``counts``: clip counts keyed "source_normal",
    "source_anomaly", "target_normal", "target_anomaly" (and "unknown_normal",
    "unknown_anomaly" for clips without a domain).
    """

    machine_type: str
    section: str
    official: dict[str, float]
    paper: dict[str, float]
    counts: dict[str, int]
    metric: str = "dcase2022"
    undefined: dict[str, str] = field(default_factory=dict)

    def official_values(self) -> list[float]:
        """The values this section contributes to the official score."""
        return list(self.official.values())

    def to_dict(self) -> dict:
        """JSON-able dict (NaN written as null; ``undefined`` gives the reasons)."""
        return {
            "machine_type": self.machine_type,
            "section": self.section,
            "counts": dict(self.counts),
            "official": {k: _json_float(v) for k, v in self.official.items()},
            "paper": {k: _json_float(v) for k, v in self.paper.items()},
            "undefined": dict(self.undefined),
        }


def _json_float(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def _summary(results: Sequence[SectionResult], metric: Metric) -> dict:
    """Means over the sections of ``results``: official score, per-key official means, paper means.

    Undefined values are left out of the per-key means; the official score is NaN when one of
    its values is undefined (``undefined["official_score"]`` says which), and
    ``partial_official_score`` is the mean of the defined ones.
    """
    mean = harmonic_mean if metric.mean == "harmonic" else arithmetic_mean
    values = [v for r in results for v in r.official_values()]
    missing = [f"{r.machine_type}/{r.section} {k}" for r in results
               for k, v in r.official.items() if math.isnan(v)]
    paper_keys = list(results[0].paper) if results else []
    summary = {
        "official_score": float("nan") if missing else mean(values),
        "partial_official_score": _mean_defined(values, mean),
        "official": {k: _mean_defined((r.official[k] for r in results), mean) for k in metric.keys},
        "paper": {k: _mean_defined(r.paper[k] for r in results) for k in paper_keys},
        "undefined": {},
    }
    if missing:
        summary["undefined"]["official_score"] = (
            f"{len(missing)} of {len(values)} official values are undefined "
            f"({_name_list(missing)})")
    return _note_empty_means(summary)


def _summary_of_types(by_type: Mapping[str, dict], results: Sequence[SectionResult],
                      metric: Metric) -> dict:
    """DCASE 2020 over machine types: arithmetic means of the machine types' means and scores
    (paper means still over all sections)."""
    types = list(by_type.values())
    undefined = [s["undefined"]["official_score"] for s in types if "official_score" in s["undefined"]]
    summary = {
        "official_score": float("nan"),
        "partial_official_score": _mean_defined((s["partial_official_score"] for s in types),
                                                arithmetic_mean),
        "official": {k: _mean_defined((s["official"][k] for s in types), arithmetic_mean)
                     for k in metric.keys},
        "paper": _summary(results, metric)["paper"],
        "undefined": {},
    }
    if undefined:
        summary["undefined"]["official_score"] = "; ".join(undefined)
    else:
        summary["official_score"] = arithmetic_mean(s["official_score"] for s in types)
    return _note_empty_means(summary)


def _note_empty_means(summary: dict) -> dict:
    for mode in ("official", "paper"):
        for k, v in summary[mode].items():
            if math.isnan(v):
                summary["undefined"][f"{mode}.{k}"] = "undefined in every section"
    return summary


@dataclass(frozen=True)
class Evaluation:
    """Result of :func:`evaluate_records`.

    Attributes:
        sections: {(machine_type, section): SectionResult}, sorted by machine type then section.
        official_score: the metric's official score (fraction in [0, 1]); NaN when one of its
            values is undefined (``undefined["official_score"]`` says why).
        official: the means over sections of each official figure (harmonic; arithmetic for
            ``dcase2020``, there over machine types of their means), undefined values left out.
        paper: harmonic means over sections of the paper's figures.
        machine_types: {machine_type: {"official_score", "partial_official_score", "official",
            "paper", "undefined"}} (the same means over that machine type's sections only).
        max_fpr: the pAUC's false-positive-rate limit.
        records: the validated input records (for plots), one dict per clip.
        metric: the name of the official metric used (a key of :data:`METRICS`).
        metric_reason: why that metric (chosen automatically, or by ``metric=``).
        partial_official_score: the same mean over the defined official values only (equal to
            ``official_score`` when all are defined; otherwise NOT comparable with official scores).
        undefined: reasons for undefined aggregates ("official_score", "official.<key>", ...);
            the sections' own reasons are in ``SectionResult.undefined``.
    """

    sections: dict[tuple[str, str], SectionResult]
    official_score: float
    official: dict[str, float]
    paper: dict[str, float]
    machine_types: dict[str, dict]
    max_fpr: float = 0.1
    records: tuple[dict, ...] = field(default=(), repr=False)
    metric: str = "dcase2022"
    metric_reason: str = ""
    partial_official_score: float = float("nan")
    undefined: dict[str, str] = field(default_factory=dict)

    def undefined_figures(self) -> list[tuple[str, str, str, str]]:
        """``(machine_type, section, "official.<key>" | "paper.<key>", reason)`` of every
        undefined section figure."""
        return [(r.machine_type, r.section, k, why) for r in self.sections.values()
                for k, why in r.undefined.items()]

    def undefined_summary(self) -> str:
        """One paragraph on what is undefined and what that means; ``""`` when all is defined."""
        figures = self.undefined_figures()
        if not figures and not self.undefined:
            return ""
        names = [f"{mt}/{sec} {k}" for mt, sec, k, _ in figures]
        text = (f"{len(figures)} figure(s) undefined because their clips hold one class only "
                f"({_name_list(names)}); every other figure is computed and the means leave "
                "them out.")
        if "official_score" in self.undefined:
            text += (f" The official score is undefined: {self.undefined['official_score']}; "
                     f"the mean of the defined values is {_pct(self.partial_official_score)} % "
                     "(not comparable with official scores).")
        return text

    def to_dict(self) -> dict:
        """JSON-able dict; top-level ``official_score`` is a fraction in [0, 1] (NaN -> null).

        Layout: official_score, metric{name, title, reason, source}, partial_official_score,
        max_fpr, official{...}, paper{...}, undefined{aggregate or "<mt>/<section> <figure>": reason},
        machine_types{mt: {official_score, partial_official_score, official, paper, undefined}},
        sections[list of SectionResult dicts].
        """

        def conv(summary: dict) -> dict:
            return {
                "official_score": _json_float(summary["official_score"]),
                "partial_official_score": _json_float(summary["partial_official_score"]),
                "official": {k: _json_float(v) for k, v in summary["official"].items()},
                "paper": {k: _json_float(v) for k, v in summary["paper"].items()},
                "undefined": dict(summary.get("undefined", {})),
            }

        m = METRICS[self.metric]
        top = conv({"official_score": self.official_score, "official": self.official,
                    "paper": self.paper, "partial_official_score": self.partial_official_score})
        undefined = dict(self.undefined)
        undefined.update({f"{mt}/{sec} {k}": why for mt, sec, k, why in self.undefined_figures()})
        return {
            "official_score": top["official_score"],
            "metric": {"name": m.name, "title": m.title, "reason": self.metric_reason,
                       "source": m.source},
            "partial_official_score": top["partial_official_score"],
            "max_fpr": self.max_fpr,
            "official": top["official"],
            "paper": top["paper"],
            "undefined": undefined,
            "machine_types": {mt: conv(s) for mt, s in self.machine_types.items()},
            "sections": [r.to_dict() for r in self.sections.values()],
        }

    def format_table(self) -> str:
        """Readable fixed-width table, percentages with 2 decimals.

        One row per machine type / section / domain (source, target, mixed; one row "all"
        without domains), then mean rows per machine type ("hmean", or "mean" for the
        arithmetic 2020 means) and over everything ("all"), the official score, which metric
        was used and why, a legend, and the reasons of undefined figures. "-" marks a figure that does
        not exist in that mode, "undef." an undefined one.
        """
        m = METRICS[self.metric]
        rows_of = _TABLE_ROWS[m.name]
        head = f"{'machine type':<16} {'section':<8} {'domain':<7} {'off. AUC':>9} {'off. pAUC':>9}"
        if m.domains:
            head += f" {'pap. AUC':>9} {'pap. pAUC':>9}"
        rule = "-" * len(head)
        lines = [head, rule]
        mean_name = "hmean" if m.mean == "harmonic" else "mean"

        def cell(values: dict, key: str | None) -> str:
            if key is None:
                return f"{'-':>9}"
            v = values.get(key)
            return f"{'-':>9}" if v is None else f"{_pct(v):>9}"

        def rows(mt: str, sec: str, official: dict, paper: dict) -> None:
            for dom, auc_key, pauc_key, pdom in rows_of:
                line = f"{mt:<16} {sec:<8} {dom:<7} {cell(official, auc_key)} {cell(official, pauc_key)}"
                if m.domains:
                    line += f" {cell(paper, f'auc_{pdom}')} {cell(paper, f'pauc_{pdom}')}"
                lines.append(line)

        for mt, summary in self.machine_types.items():
            for (smt, sec), r in self.sections.items():
                if smt == mt:
                    rows(mt, sec, r.official, r.paper)
            rows(mt, mean_name, summary["official"], summary["paper"])
            lines.append(f"{mt:<16} official score {_pct(summary['official_score']).strip():>9}"
                         + (" %" if not math.isnan(summary["official_score"]) else ""))
            lines.append(rule)
        if len(self.machine_types) > 1:
            rows("all", mean_name, self.official, self.paper)
            lines.append(rule)
        lines.append(self._score_line(m))
        lines.append(f"metric: {m.title} ({self.metric_reason})")
        lines.append(m.legend)
        lines.extend(self._undefined_lines())
        return "\n".join(lines)

    def _score_line(self, m: Metric) -> str:
        n_values = sum(len(r.official) for r in self.sections.values())
        if m.mean == "harmonic":
            what = (f"official score (harmonic mean of {n_values} values over "
                    f"{len(self.sections)} section(s))")
        else:
            what = (f"official score (arithmetic mean over {len(self.machine_types)} machine "
                    f"type(s) of the mean of their AUC and pAUC values)")
        if not math.isnan(self.official_score):
            return f"{what}: {_pct(self.official_score)} %"
        reason = self.undefined.get("official_score", "")
        partial = ("" if math.isnan(self.partial_official_score) else
                   f"; mean of the defined values {_pct(self.partial_official_score)} % "
                   "(not comparable with official scores)")
        return f"{what}: undefined: {reason}{partial}"

    def _undefined_lines(self) -> list[str]:
        figures = self.undefined_figures()
        if not figures:
            return []
        lines = ["undefined figures (their clips hold one class only; left out of every mean):"]
        grouped: dict[tuple[str, str, str], list[str]] = {}
        for mt, sec, k, why in figures:
            mode, key = k.split(".", 1)
            grouped.setdefault((mt, sec, why), []).append(f"{'off.' if mode == 'official' else 'pap.'} {key}")
        for (mt, sec, why), names in grouped.items():
            lines.append(f"  {mt}/{sec}: {', '.join(names)}: {why}")
        return lines


# metric -> table rows: (domain column, official AUC key, official pAUC key, paper domain)
_TABLE_ROWS = {
    "dcase2022": (("source", "auc_source", None, "source"), ("target", "auc_target", None, "target"),
                  ("mixed", None, "pauc", "mixed")),
    "dcase2021": (("source", "auc_source", "pauc_source", "source"),
                  ("target", "auc_target", "pauc_target", "target"), ("mixed", None, None, "mixed")),
    "dcase2020": (("all", "auc", "pauc", "mixed"),),
}


def _pct(v: float) -> str:
    return "undef." if v is None or math.isnan(v) else f"{100.0 * v:.2f}"


def _auc(y: np.ndarray, s: np.ndarray, max_fpr: float | None) -> tuple[float, str | None]:
    """``(roc_auc_score, None)`` (pAUC when ``max_fpr`` is given), or ``(NaN, reason)`` when the
    clips do not hold both classes."""
    from sklearn.metrics import roc_auc_score

    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos + n_neg == 0:
        return float("nan"), "it has no clips"
    if n_pos == 0 or n_neg == 0:
        return float("nan"), f"its clips hold {n_neg} normal and {n_pos} anomalous (it needs both)"
    return float(roc_auc_score(y, s, max_fpr=max_fpr)), None


def _validate(records: Iterable[Mapping], need_domains: bool = True) -> dict[tuple[str, str], list[dict]]:
    """Group records by (machine_type, section) and check every field; ValueError otherwise.

    Without ``need_domains`` a missing domain counts as "unknown" (the 2020 metric needs none).
    """
    required = _REQUIRED + (("domain",) if need_domains else ())
    groups: dict[tuple[str, str], list[dict]] = {}
    for i, rec in enumerate(records):
        missing = [k for k in required if k not in rec or rec[k] is None]
        mt = str(rec.get("machine_type", "?"))
        sec = str(rec.get("section", "?"))
        if missing:
            raise ValueError(
                f"record {i} ({rec.get('file_name', '?')}) of section {mt}/{sec} misses "
                f"{', '.join(missing)}: cannot evaluate")
        groups.setdefault((mt, sec), []).append(
            {"file_name": str(rec["file_name"]), "machine_type": mt, "section": sec,
             "domain": str(rec.get("domain") or "unknown"), "label": str(rec["label"]),
             "score": rec["score"]})
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
        if need_domains:
            no_dom = [r["file_name"] for r in recs if r["domain"] == "unknown"]
            if no_dom:
                raise ValueError(
                    f"{where}: no domain (domain 'unknown') for {_name_list(no_dom)}: cannot "
                    "evaluate (for unlabelled evaluation sets pass the ground-truth CSVs; the "
                    "DCASE 2020 metric needs no domains: metric='2020')")
        allowed = ("source", "target") if need_domains else ("source", "target", "unknown")
        bad = [f"{r['file_name']} ({r['domain']!r})" for r in recs if r["domain"] not in allowed]
        if bad:
            raise ValueError(f"{where}: domain must be {' or '.join(map(repr, allowed))}: "
                             f"{_name_list(bad)}")
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
                     allow_undefined: bool = False, metric: str = "auto") -> SectionResult:
    """Official and paper figures of ONE section.

    Takes: records of one (machine_type, section), each a mapping with file_name, machine_type,
    section, domain (source|target; optional for the 2020 metric), label (normal|anomaly) and
    score (higher = more anomalous); ``metric`` as in :func:`evaluate_records`.
    Returns: :class:`SectionResult`. Raises ``ValueError`` naming the section when a figure is
    undefined (unless ``allow_undefined``) or a record is invalid.
    """
    recs = list(recs)
    m, _ = resolve_metric(metric, recs)
    groups = _validate(recs, m.domains)
    if len(groups) != 1:
        raise ValueError(f"evaluate_section: records span {len(groups)} sections: {list(groups)}")
    (mt, sec), rs = next(iter(groups.items()))
    return _section(mt, sec, rs, max_fpr, m, allow_undefined)


def clip_set_masks(recs: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """Boolean masks over ``recs`` (records with "domain" and "label") of every clip set of
    :data:`CLIP_SETS`."""
    src = np.array([r["domain"] == "source" for r in recs], dtype=bool)
    tgt = np.array([r["domain"] == "target" for r in recs], dtype=bool)
    anom = np.array([r["label"] == "anomaly" for r in recs], dtype=bool)
    return {"all": np.ones_like(src), "source": src, "target": tgt,
            # DCASE 2022-2025: a domain's normals against every anomaly of the section
            "source+anomalies": src | anom, "target+anomalies": tgt | anom}


def _section(mt: str, sec: str, recs: Sequence[dict], max_fpr: float, metric: Metric,
             allow_undefined: bool) -> SectionResult:
    y = np.array([r["label"] == "anomaly" for r in recs], dtype=np.int64)
    s = np.array([r["score"] for r in recs], dtype=np.float64)
    masks = clip_set_masks(recs)
    src, tgt, anom = masks["source"], masks["target"], y == 1
    unk = ~(src | tgt)
    cache: dict[tuple[str, bool], tuple[float, str | None]] = {}
    undefined: dict[str, str] = {}

    def figure(mode: str, key: str, clip_set: str, pauc: bool) -> float:
        if (clip_set, pauc) not in cache:
            mask = masks[clip_set]
            cache[(clip_set, pauc)] = _auc(y[mask], s[mask], max_fpr if pauc else None)
        value, reason = cache[(clip_set, pauc)]
        if reason is not None:
            if not allow_undefined:
                raise ValueError(f"section {mt}/{sec}: {mode} {key} ({CLIP_SETS[clip_set]}) is "
                                 f"undefined: {reason}")
            undefined[f"{mode}.{key}"] = reason
        return value

    official = {k: figure("official", k, cs, p) for k, cs, p in metric.figures}
    paper_figures = _PAPER_FIGURES if metric.domains else [f for f in _PAPER_FIGURES if f[1] == "all"]
    paper = {k: figure("paper", k, cs, p) for k, cs, p in paper_figures}
    counts = {
        "source_normal": int((src & ~anom).sum()), "source_anomaly": int((src & anom).sum()),
        "target_normal": int((tgt & ~anom).sum()), "target_anomaly": int((tgt & anom).sum()),
    }
    if unk.any():
        counts.update(unknown_normal=int((unk & ~anom).sum()), unknown_anomaly=int((unk & anom).sum()))
    return SectionResult(mt, sec, official, paper, counts, metric.name, undefined)


def evaluate_records(records: Iterable[Mapping], max_fpr: float = 0.1, *,
                     allow_undefined: bool = False, metric: str = "auto",
                     layout_year: int | None = None) -> Evaluation:
    """Evaluate scored, labelled test clips per section: the official metric and the paper's figures.

    Takes: records, one mapping per test clip with keys ``file_name``, ``machine_type``,
    ``section``, ``domain`` ("source"|"target"; optional for the 2020 metric), ``label``
    ("normal"|"anomaly") and ``score`` (finite float, higher = more anomalous); ``max_fpr`` for
    the pAUC (DCASE: 0.1); ``metric``: "auto" (from the data, see :func:`resolve_metric`), a
    name of :data:`METRICS` or a year "2020" ... "2025"; ``layout_year``: the DCASE year the
    data's layout reveals (:func:`fastasd.data.layout.layout_year`), for "auto".
    Returns: :class:`Evaluation` with all figures as fractions in [0, 1].
    Raises ``ValueError`` naming the section (and files) for: a missing field, a label or (for a
    metric with domains) a domain "unknown" (unlabelled clips cannot be evaluated), a
    non-finite score, a duplicated file name within a section, or an undefined figure (one class
    only) unless ``allow_undefined=True``, in which case that figure is NaN with its reason, one
    :class:`UndefinedMetricWarning` lists them, the means leave them out and the official score
    is NaN (see the module docstring).
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    records = list(records)
    m, reason = resolve_metric(metric, records, layout_year)
    groups = _validate(records, m.domains)
    sections = {key: _section(*key, recs, max_fpr, m, allow_undefined)
                for key, recs in groups.items()}
    results = list(sections.values())
    machine_types = {
        mt: _summary([r for r in results if r.machine_type == mt], m)
        for mt in sorted({r.machine_type for r in results})
    }
    overall = (_summary_of_types(machine_types, results, m) if m.mean == "arithmetic"
               else _summary(results, m))
    ev = Evaluation(
        sections=sections,
        official_score=overall["official_score"],
        official=overall["official"],
        paper=overall["paper"],
        machine_types=machine_types,
        max_fpr=max_fpr,
        records=tuple(r for recs in groups.values() for r in recs),
        metric=m.name,
        metric_reason=reason,
        partial_official_score=overall["partial_official_score"],
        undefined=overall["undefined"],
    )
    if ev.undefined_figures():
        warnings.warn(ev.undefined_summary(), UndefinedMetricWarning, stacklevel=2)
    return ev
