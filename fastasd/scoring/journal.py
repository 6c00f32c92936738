"""The resumable journal of a scoring run: ``scores.csv``, ``errors.csv`` and ``run.json`` of
one run folder (their format and resume rules are documented in :mod:`fastasd.scoring`), the
reporting of clips that were not scored, and the submission files written from ``scores.csv``.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import time
from pathlib import Path

from fastasd.data.inputs import AudioSource

# One logger for the whole job, under the name the log lines have always had (the CLI prints it).
logger = logging.getLogger("fastasd.score")  # the name its log lines always had

SCORES_FILE = "scores.csv"
ERRORS_FILE = "errors.csv"
RUN_FILE = "run.json"
SCORES_HEADER = ("file", "file_name", "machine_type", "section", "domain", "label", "score", "decision")
ERRORS_HEADER = ("file", "reason")
_FSYNC_SECONDS = 30.0


class ScoreResult(list):
    """The records of a scoring run (a list of dicts), with ``summary`` and ``errors`` attached.

    Each record: ``file`` (path or ``archive::member``), ``file_name``, ``machine_type``,
    ``section``, ``domain``, ``label`` (``"unknown"`` when the name does not say), ``score``
    (float, higher = more anomalous), ``decision`` (0|1). ``errors``: ``(file, reason)`` of this
    call's clips that were not scored. ``summary``: see :func:`score_inputs`.
    """

    summary: dict
    errors: list


# --------------------------------------------------------------------------- the journal files


def _read_journal(path: Path, header: tuple[str, ...]) -> list[list[str]]:
    """Rows of an existing journal CSV; a partial last line (crash mid-write) is cut off the file."""
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut < len(data):
        logger.warning("%s: discarding a partial last line left by an interrupted run", path)
        with open(path, "r+b") as f:
            f.truncate(cut)
    rows = list(csv.reader(io.StringIO(data[:cut].decode("utf-8"), newline="")))
    if not rows:
        return []
    if tuple(rows[0]) != header:
        raise ValueError(f"{path}: unexpected header {rows[0]} (expected {list(header)}); "
                         "not written by fastasd score?")
    good = [r for r in rows[1:] if len(r) == len(header)]
    if len(good) != len(rows) - 1:
        logger.warning("%s: ignoring %d malformed row(s)", path, len(rows) - 1 - len(good))
    return good


def _record_from_row(row: list[str]) -> dict:
    rec = dict(zip(SCORES_HEADER, row))
    rec["score"] = float(rec["score"])
    rec["decision"] = int(rec["decision"])
    return rec


def read_scores_csv(path: str | os.PathLike) -> list[dict]:
    """Records of a ``scores.csv`` written by :func:`score_inputs` (see :class:`ScoreResult`)."""
    return [_record_from_row(r) for r in _read_journal(Path(path), SCORES_HEADER)]


class _Journal:
    """``scores.csv`` and ``errors.csv`` of one run directory, appended and flushed per batch."""

    def __init__(self, run_dir: Path, *, resume: bool, overwrite: bool):
        self.scores_path = run_dir / SCORES_FILE
        self.errors_path = run_dir / ERRORS_FILE
        self.done_scores: dict[str, dict] = {}
        self.done_errors: dict[str, str] = {}
        existing = [p for p in (self.scores_path, self.errors_path) if p.exists()]
        if existing and not (resume or overwrite):
            raise FileExistsError(f"{existing[0]} exists: pass resume=True (--resume) to continue that run "
                                  "or overwrite=True (--overwrite) to start again")
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            if self.scores_path.exists():
                for row in _read_journal(self.scores_path, SCORES_HEADER):
                    rec = _record_from_row(row)
                    self.done_scores[rec["file"]] = rec
            if self.errors_path.exists():
                for name, reason in _read_journal(self.errors_path, ERRORS_HEADER):
                    self.done_errors[name] = reason
        mode = "a" if resume else "w"
        self._scores = open(self.scores_path, mode, newline="", encoding="utf-8")
        self._errors = open(self.errors_path, mode, newline="", encoding="utf-8")
        self._scores_csv = csv.writer(self._scores, lineterminator="\n")
        self._errors_csv = csv.writer(self._errors, lineterminator="\n")
        for f, w, header in ((self._scores, self._scores_csv, SCORES_HEADER),
                             (self._errors, self._errors_csv, ERRORS_HEADER)):
            if f.tell() == 0:
                w.writerow(header)
                f.flush()
        self._last_sync = time.monotonic()

    def is_done(self, name: str) -> bool:
        return name in self.done_scores or name in self.done_errors

    def write(self, records: list[dict], errors: list[tuple[str, str]]) -> None:
        """Append rows and flush (the OS has them: a killed process loses nothing written)."""
        if records:
            self._scores_csv.writerows([rec[k] if k != "score" else repr(rec[k]) for k in SCORES_HEADER]
                                       for rec in records)
            self._scores.flush()
        if errors:
            self._errors_csv.writerows(errors)
            self._errors.flush()
        if time.monotonic() - self._last_sync > _FSYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        for f in (self._scores, self._errors):
            f.flush()
            os.fsync(f.fileno())
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._scores.closed:
            return
        try:
            self.sync()
        finally:
            self._scores.close()
            self._errors.close()


# --------------------------------------------------------------------------- clips not scored


class _CappedLog:
    """Logs the first clips that are not scored; the rest are only in errors.csv (a job over
    months of recordings must not print a line per clip)."""

    limit = 20

    def __init__(self):
        self.n = 0

    def __call__(self, name: str, reason: str) -> None:
        self.n += 1
        if self.n <= self.limit:
            logger.warning("not scored: %s: %s", name, reason)
        elif self.n == self.limit + 1:
            logger.warning("more clips not scored: see errors.csv (or the returned errors)")


def _unknown_reason(src: AudioSource) -> str:
    reason = f"unknown section {src.machine_type}/{src.section}"
    if src.machine_type == "unknown" or src.section == "unknown":
        reason += " (the path is not <machine_type>/test/section_<ss>_...: give --section MACHINE:SS)"
    return reason


# --------------------------------------------------------------------------- submission files


def _write_submission_from(scores_csv: Path, out_dir: Path, *, strict: bool) -> int:
    """Submission files of every row of ``scores_csv``; returns how many files were written.

    ``strict``: a section that cannot be written (duplicate file names) raises; otherwise it is a
    warning and no file is written.
    """
    from fastasd.submission import write_submission

    records = read_scores_csv(scores_csv) if scores_csv.exists() else []
    if not records:
        return 0
    try:
        return len(write_submission(out_dir, records))
    except ValueError as e:
        if strict:
            raise
        logger.warning("DCASE submission files not written (%s); the scores are in %s", e, scores_csv)
        return 0
