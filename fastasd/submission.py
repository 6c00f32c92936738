"""DCASE task 2 submission files: write and read anomaly scores and decisions.

One pair of CSV files per machine type and section, no header (SPEC "Outputs"):

* ``anomaly_score_<mt>_section_<ss>_test.csv``: ``file_name,score`` (higher = more anomalous);
* ``decision_result_<mt>_section_<ss>_test.csv``: ``file_name,0|1`` (1 = anomalous).

The official evaluators sort both files by name and compare them row by row with the ground
truth, so every test file of a section must appear exactly once; rows are written sorted by file
name. Scores are written with Python's shortest round-trip float repr, so reading them back gives
the same float64 values.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Iterable, Mapping

from fastasd._io import atomic_open

SCORE_PATTERN = re.compile(r"^anomaly_score_(?P<mt>.+)_section_(?P<section>\w+)_test\.csv$")
DECISION_PATTERN = re.compile(r"^decision_result_(?P<mt>.+)_section_(?P<section>\w+)_test\.csv$")
_MAX_NAMES = 10
# How fastasd.data.inputs.text_name writes the bytes of a file name that are not UTF-8 (\xNN, or a
# code point \uNNNN); such a name is still a basename.
_ESCAPE = re.compile(r"\\x[0-9a-fA-F]{2}|\\u[0-9a-fA-F]{4}|\\U[0-9a-fA-F]{8}")


def _names(names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:_MAX_NAMES])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _MAX_NAMES else "")


def _section_str(section) -> str:
    # Sections are two-digit strings as in the file names ("00"); an int is formatted that way.
    if isinstance(section, bool):
        raise ValueError(f"invalid section {section!r}")
    if isinstance(section, int):
        return f"{section:02d}"
    return str(section)


def _check_part(what: str, value: str) -> str:
    if not value or "/" in value or "\\" in value or value in (".", "..") or "," in value:
        raise ValueError(f"invalid {what} {value!r} for a submission file name")
    return value


def score_file_name(machine_type: str, section) -> str:
    """``anomaly_score_<machine_type>_section_<section>_test.csv`` (section: "00" or int 0)."""
    return (f"anomaly_score_{_check_part('machine type', str(machine_type))}_section_"
            f"{_check_part('section', _section_str(section))}_test.csv")


def decision_file_name(machine_type: str, section) -> str:
    """``decision_result_<machine_type>_section_<section>_test.csv`` (section: "00" or int 0)."""
    return (f"decision_result_{_check_part('machine type', str(machine_type))}_section_"
            f"{_check_part('section', _section_str(section))}_test.csv")


def _decision(value, file_name: str) -> int:
    if isinstance(value, bool):
        return int(value)
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = float("nan")
    if f not in (0.0, 1.0):
        raise ValueError(f"decision for {file_name} must be 0 or 1, got {value!r}")
    return int(f)


def write_submission(out_dir: str | os.PathLike, records: Iterable[Mapping]) -> list[Path]:
    """Write the DCASE submission files of ``records`` into ``out_dir`` (created if needed).

    Takes: records, one mapping per test clip with ``file_name`` (basename), ``machine_type``,
    ``section`` ("00"), ``score`` (finite float, higher = more anomalous) and ``decision`` (0|1).
    If NO record has a ``decision``, only score files are written; if some have one and others
    not, that is an error.
    Returns: the written paths, per section the score file then the decision file, sections
    sorted. Raises ``ValueError`` naming the files for a duplicate file name within a section, a
    non-finite score or a decision other than 0/1. Every file is written atomically.
    """
    groups: dict[tuple[str, str], list[Mapping]] = {}
    for rec in records:
        key = (str(rec["machine_type"]), _section_str(rec["section"]))
        groups.setdefault(key, []).append(rec)
    has_decision = [("decision" in r and r["decision"] is not None)
                    for recs in groups.values() for r in recs]
    with_decisions = any(has_decision)
    if with_decisions and not all(has_decision):
        lacking = [str(r["file_name"]) for recs in groups.values() for r in recs
                   if r.get("decision") is None]
        raise ValueError(f"write_submission: some records have a decision, these do not: "
                         f"{_names(lacking)}")

    # Validate everything before writing anything.
    prepared: list[tuple[str, str, list[tuple[str, float, int | None]]]] = []
    for (mt, sec), recs in sorted(groups.items()):
        rows = []
        for r in recs:
            name = str(r["file_name"])
            bare = _ESCAPE.sub("", name)  # a byte of a non-UTF-8 name, as scores.csv writes it, is no separator
            if not name or "," in name or "\n" in name or "/" in bare or "\\" in bare:
                raise ValueError(f"write_submission: invalid file name {name!r} "
                                 f"(a basename without commas) in section {mt}/{sec}")
            try:
                score = float(r["score"])
            except (TypeError, ValueError):
                raise ValueError(f"write_submission: score of {name} is not a number: "
                                 f"{r['score']!r}") from None
            if not math.isfinite(score):
                raise ValueError(f"write_submission: score of {name} is not finite: {score}")
            dec = _decision(r["decision"], name) if with_decisions else None
            rows.append((name, score, dec))
        rows.sort(key=lambda row: row[0])
        dups = {a[0] for a, b in zip(rows, rows[1:]) if a[0] == b[0]}
        if dups:
            raise ValueError(f"write_submission: section {mt}/{sec}: duplicate file name(s) "
                             f"{_names(dups)} (each test file must appear exactly once)")
        prepared.append((mt, sec, rows))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for mt, sec, rows in prepared:
        path = out / score_file_name(mt, sec)
        with atomic_open(path, "w", encoding="utf-8", newline="") as f:
            f.writelines(f"{name},{score!r}\n" for name, score, _ in rows)
        paths.append(path)
        if with_decisions:
            path = out / decision_file_name(mt, sec)
            with atomic_open(path, "w", encoding="utf-8", newline="") as f:
                f.writelines(f"{name},{dec}\n" for name, _, dec in rows)
            paths.append(path)
    return paths


def _read_dir(scores_dir: str | os.PathLike, pattern: re.Pattern, kind: str, parse):
    """Read every file of ``scores_dir`` whose name matches ``pattern``; rows parsed by ``parse``."""
    root = Path(scores_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    files = sorted(p for p in root.iterdir() if p.is_file() and pattern.match(p.name))
    if not files:
        raise ValueError(f"{root}: no {kind} files ({pattern.pattern}) found")
    out = []
    for path in files:
        m = pattern.match(path.name)
        mt, sec = m.group("mt"), m.group("section")
        seen: dict[str, int] = {}
        with open(path, encoding="utf-8-sig", newline="") as f:
            for lineno, line in enumerate(f, start=1):
                text = line.strip()
                if not text:
                    continue  # blank lines (e.g. a trailing one) carry nothing
                parts = [p.strip() for p in text.split(",")]
                if len(parts) != 2 or not parts[0]:
                    raise ValueError(f"{path}:{lineno}: expected 'file_name,value', got {text!r}")
                name, raw = parts
                value = parse(raw)
                if value is None:
                    raise ValueError(f"{path}:{lineno}: invalid {kind} value {raw!r} for {name}")
                if name in seen:
                    raise ValueError(f"{path}:{lineno}: duplicate file name {name} "
                                     f"(first on line {seen[name]})")
                seen[name] = lineno
                out.append((mt, sec, name, value))
    return out


def _parse_score(raw: str) -> float | None:
    try:
        v = float(raw)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _parse_decision(raw: str) -> int | None:
    return int(raw) if raw in ("0", "1") else None


def read_scores(scores_dir: str | os.PathLike) -> list[tuple[str, str, str, float]]:
    """Read every ``anomaly_score_<mt>_section_<ss>_test.csv`` in ``scores_dir`` (not recursive).

    Returns: ``(machine_type, section, file_name, score)`` tuples, files in name order, rows in file
    order. Other files are ignored. Raises ``ValueError`` naming file and line for a malformed row
    (not two fields, a score that is not a finite number, e.g. a header), or a file name repeated
    within a file; ``ValueError`` when no score file is found; ``FileNotFoundError`` if the
    directory does not exist.
    """
    return _read_dir(scores_dir, SCORE_PATTERN, "anomaly score", _parse_score)


def read_decisions(scores_dir: str | os.PathLike) -> list[tuple[str, str, str, int]]:
    """Read every ``decision_result_<mt>_section_<ss>_test.csv`` in ``scores_dir``.

    Returns: ``(machine_type, section, file_name, decision)`` tuples with decision 0 or 1.
    Errors as :func:`read_scores` (a decision must be exactly "0" or "1").
    """
    return _read_dir(scores_dir, DECISION_PATTERN, "decision", _parse_decision)
