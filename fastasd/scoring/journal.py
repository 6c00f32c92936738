"""The resumable journal of a scoring run: ``scores.csv``, ``errors.csv``, ``warnings.csv`` and
``run.json`` of one run folder (their format and resume rules are documented in
:mod:`fastasd.scoring`; never opened through a symbolic link), taking the run folder for one
process (:func:`open_run_dir`: its lock, the overwrite, submission-file and same-model checks),
the reporting of clips that were not scored, and the submission files written from ``scores.csv``.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from pathlib import Path

from fastasd._io import atomic_write_json
from fastasd.data.inputs import AudioSource, text_name
from fastasd.scoring.lock import O_NOFOLLOW, RunLock

# One logger for the whole job, under the name the log lines have always had (the CLI prints it).
logger = logging.getLogger("fastasd.score")  # the name its log lines always had

SCORES_FILE = "scores.csv"
ERRORS_FILE = "errors.csv"
WARNINGS_FILE = "warnings.csv"
RUN_FILE = "run.json"
SCORES_HEADER = ("file", "file_name", "machine_type", "section", "domain", "label", "score", "decision")
ERRORS_HEADER = ("file", "reason")
WARNINGS_HEADER = ("file", "warning")
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


def _open_nofollow(path: Path, flags: int) -> int:
    """``os.open`` that never follows a symbolic link at ``path``: a link planted in the run folder
    must not make fastasd create, truncate or append to a file elsewhere (ValueError naming it)."""
    try:
        return os.open(path, flags | O_NOFOLLOW, 0o644)
    except OSError:
        if os.path.islink(path):
            raise ValueError(f"{path} is a symbolic link: fastasd never follows one for its journal "
                             "files (remove the link)") from None
        raise


def _read_journal(path: Path, header: tuple[str, ...]) -> list[list[str]]:
    """Rows of an existing journal CSV; a partial last line (crash mid-write) is cut off the file."""
    with os.fdopen(_open_nofollow(path, os.O_RDONLY), "rb") as f:
        data = f.read()
    cut = data.rfind(b"\n") + 1
    if cut < len(data):
        logger.warning("%s: discarding a partial last line left by an interrupted run", path)
        fd = _open_nofollow(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, cut)
        finally:
            os.close(fd)
    try:
        text = data[:cut].decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 ({e}); not written by fastasd score?") from None
    rows = list(csv.reader(io.StringIO(text, newline="")))
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


def _text(value):
    return text_name(value) if isinstance(value, str) else value


class _Journal:
    """``scores.csv`` and ``errors.csv`` of one run directory, appended and flushed per batch, and
    ``warnings.csv`` (``file,warning``: clips scored with a note, a short clip say), created at
    its first row."""

    def __init__(self, run_dir: Path, *, resume: bool, overwrite: bool):
        self.scores_path = run_dir / SCORES_FILE
        self.errors_path = run_dir / ERRORS_FILE
        self.warnings_path = run_dir / WARNINGS_FILE
        self.done_scores: dict[str, dict] = {}
        self.done_errors: dict[str, str] = {}
        self._noted: set[str] = set()  # clips in warnings.csv (a resumed clip's note is not repeated)
        self._resume = resume
        _refuse_replacing(run_dir, resume=resume, overwrite=overwrite)
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            if os.path.lexists(self.scores_path):
                for row in _read_journal(self.scores_path, SCORES_HEADER):
                    rec = _record_from_row(row)
                    self.done_scores[rec["file"]] = rec
            if os.path.lexists(self.errors_path):
                for name, reason in _read_journal(self.errors_path, ERRORS_HEADER):
                    self.done_errors[name] = reason
            if os.path.lexists(self.warnings_path):
                self._noted = {row[0] for row in _read_journal(self.warnings_path, WARNINGS_HEADER)}
        elif os.path.lexists(self.warnings_path):
            os.unlink(self.warnings_path)  # the replaced run's (overwrite); a link is removed, not followed
        self._warnings = self._warnings_csv = None
        self._scores = self._open(self.scores_path, resume=resume)
        self._errors = self._open(self.errors_path, resume=resume)
        self._scores_csv = csv.writer(self._scores, lineterminator="\n")
        self._errors_csv = csv.writer(self._errors, lineterminator="\n")
        for f, w, header in ((self._scores, self._scores_csv, SCORES_HEADER),
                             (self._errors, self._errors_csv, ERRORS_HEADER)):
            if f.tell() == 0:
                w.writerow(header)
                f.flush()
        self._last_sync = time.monotonic()

    @staticmethod
    def _open(path: Path, *, resume: bool):
        """The journal file for appending, never through a symbolic link; a new run creates it
        exclusively (an overwritten run's file is unlinked first, which removes a link itself)."""
        if resume:
            fd = _open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        else:
            if os.path.lexists(path):
                os.unlink(path)
            fd = _open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        return os.fdopen(fd, "a", newline="", encoding="utf-8")

    def is_done(self, name: str) -> bool:
        """Whether the clip ``name`` (raw or as text) is in the resumed run's scores or errors."""
        name = text_name(name)
        return name in self.done_scores or name in self.done_errors

    def write(self, records: list[dict], errors: list[tuple[str, str]],
              notes: list[tuple[str, str]] = ()) -> None:
        """Append rows and flush (the OS has them: a killed process loses nothing written). Names
        and reasons are written as UTF-8 text (:func:`~fastasd.data.inputs.text_name`), so no
        file name can make the write fail. ``notes`` (``(file, warning)`` of clips in
        ``records``) go first, so a crash cannot leave a scored clip without its note."""
        try:
            self._write(records, errors, notes)
        except OSError as e:  # a full disk, say: name the folder in the message
            if e.filename is None:
                e.filename = str(self.scores_path.parent)
            raise

    def _write(self, records: list[dict], errors: list[tuple[str, str]], notes: list[tuple[str, str]]) -> None:
        notes = [(text_name(name), text_name(note)) for name, note in notes]
        notes = [(name, note) for name, note in notes if name not in self._noted]
        if notes:
            if self._warnings is None:
                self._warnings = self._open(self.warnings_path, resume=self._resume)
                self._warnings_csv = csv.writer(self._warnings, lineterminator="\n")
                if self._warnings.tell() == 0:
                    self._warnings_csv.writerow(WARNINGS_HEADER)
            self._warnings_csv.writerows(notes)
            self._warnings.flush()
            self._noted.update(name for name, _ in notes)
        if records:
            self._scores_csv.writerows([_text(rec[k]) if k != "score" else repr(rec[k]) for k in SCORES_HEADER]
                                       for rec in records)
            self._scores.flush()
        if errors:
            self._errors_csv.writerows((text_name(name), text_name(reason)) for name, reason in errors)
            self._errors.flush()
        if time.monotonic() - self._last_sync > _FSYNC_SECONDS:
            self.sync()

    def _files(self) -> list:
        return [f for f in (self._scores, self._errors, self._warnings) if f is not None]

    def sync(self) -> None:
        for f in self._files():
            f.flush()
            os.fsync(f.fileno())
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._scores.closed:
            return
        try:
            self.sync()
        finally:
            for f in self._files():
                f.close()


def _refuse_replacing(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """FileExistsError when ``run_dir`` holds a run's journal and neither ``resume`` nor ``overwrite``."""
    existing = [p for p in (run_dir / SCORES_FILE, run_dir / ERRORS_FILE, run_dir / WARNINGS_FILE)
                if os.path.lexists(p)]
    if existing and not (resume or overwrite):
        raise FileExistsError(f"{existing[0]} exists: pass resume=True (--resume) to continue that run "
                              "or overwrite=True (--overwrite) to start again")


# --------------------------------------------------------------------------- the run folder


def submission_files_in(folder: Path) -> list[Path]:
    """The DCASE submission files (``anomaly_score_*`` / ``decision_result_*`` CSVs) in ``folder``."""
    from fastasd.submission import DECISION_PATTERN, SCORE_PATTERN

    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if (SCORE_PATTERN.match(p.name) or DECISION_PATTERN.match(p.name)) and not p.is_dir())


def _clear_submission_files(folder: Path, *, overwrite: bool, what: str) -> None:
    """Before ``what`` writes submission files into ``folder``: remove those already there with
    ``overwrite`` (a replaced run's files would otherwise stay and be evaluated with the new
    ones), else refuse to replace them (FileExistsError)."""
    found = submission_files_in(folder)
    if not found:
        return
    if not overwrite:
        shown = ", ".join(p.name for p in found[:3]) + (f", ... ({len(found)} files)" if len(found) > 3 else "")
        raise FileExistsError(f"{folder} holds DCASE submission files of another run ({shown}) that {what} "
                              "would mix with or replace: choose an empty folder, or pass overwrite=True "
                              "(--overwrite) to remove them")
    for p in found:
        p.unlink()
    logger.info("%s: removed %d submission file(s) of the replaced run", folder, len(found))


def model_identity(detector) -> dict:
    """``{"model": path, "model_sha256": digest}`` of a detector, for ``run.json``: from its
    ``identity()`` (:class:`fastasd.api.Detector`, :class:`fastasd.onnx_detector.OnnxDetector`);
    a detector without one gives its ``path`` (if any) and None."""
    ident = getattr(detector, "identity", None)
    ident = ident() if callable(ident) else None
    if isinstance(ident, dict):
        return {"model": str(ident.get("path") or ""), "model_sha256": ident.get("sha256")}
    return {"model": str(getattr(detector, "path", "") or ""), "model_sha256": None}


def _check_resumable(run_dir: Path, run_info: dict) -> None:
    """Resuming ``run_dir``: ValueError when its ``run.json`` names another model than
    ``run_info`` (two models' scores would mix in one ``scores.csv``); a warning when either side
    does not record its model, or the inputs differ."""
    path = run_dir / RUN_FILE
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        old = {}
    except (OSError, ValueError) as e:
        logger.warning("%s: unreadable (%s); cannot check that the resumed run used the same model", path, e)
        return
    if not isinstance(old, dict):
        old = {}
    if old and (old.get("inputs") != run_info.get("inputs") or old.get("section") != run_info.get("section")):
        logger.warning("%s: resuming with other inputs or --section than the interrupted run", run_dir)
    before, now = old.get("model_sha256"), run_info.get("model_sha256")
    if before and now and before != now:
        raise ValueError(f"{run_dir}: the run was scored with the model {old.get('model') or '?'} (sha256 "
                         f"{before[:12]}...); resuming it with {run_info.get('model') or '?'} (sha256 {now[:12]}...) "
                         "would mix two models' scores in one scores.csv: resume with the same model, or "
                         "pass overwrite=True (--overwrite) to start again")
    if (before or now) and not (before and now) and os.path.lexists(run_dir / SCORES_FILE):
        logger.warning("%s: cannot check that the resumed run used the same model (%s records none)", run_dir,
                       "the interrupted run" if now else "this detector")


def open_run_dir(run_dir: Path, run_info: dict, *, resume: bool, overwrite: bool) -> tuple[_Journal, RunLock]:
    """Take ``run_dir`` for this process: its lock (:class:`~fastasd.scoring.lock.RunLock`), the
    checks (an existing run needs ``resume`` or ``overwrite``; a resumed run, the same model;
    submission files already there need ``resume`` or ``overwrite``, which removes them), the
    journal, and ``run.json`` written from ``run_info``. Nothing is replaced before every check
    passed; on an error the lock is released.

    Raises:
        NotADirectoryError: ``run_dir`` is a file.
        FileExistsError, ValueError: as the checks say.
        RunLocked: another process writes to ``run_dir``.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"{run_dir}: the output folder is a file, not a folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    try:
        _refuse_replacing(run_dir, resume=resume, overwrite=overwrite)
        if resume:
            _check_resumable(run_dir, run_info)
        else:
            _clear_submission_files(run_dir, overwrite=overwrite, what="this run")
        journal = _Journal(run_dir, resume=resume, overwrite=overwrite)
        atomic_write_json(run_dir / RUN_FILE, run_info)
    except BaseException:
        lock.release()
        raise
    return journal, lock


# --------------------------------------------------------------------------- clips not scored


class _CappedLog:
    """Logs the first clips that are not scored (or, with ``what="scored with a warning"``, noted);
    the rest are only in errors.csv (warnings.csv): a job over months of recordings must not print
    a line per clip."""

    limit = 20

    def __init__(self, what: str = "not scored", where: str = "errors.csv (or the returned errors)"):
        self.n = 0
        self.what, self.where = what, where

    def __call__(self, name: str, reason: str) -> None:
        self.n += 1
        if self.n <= self.limit:
            logger.warning("%s: %s: %s", self.what, text_name(name), reason)
        elif self.n == self.limit + 1:
            logger.warning("more clips %s: see %s", self.what, self.where)


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
