"""The scoring run: :func:`score_inputs` takes the clips of one shard through input enumeration
and resume filtering, the pipeline's batches and the journal to the summary, the submission files
and (when the last shard finishes) the merge.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from fastasd._io import atomic_write_json
from fastasd.data.lengths import log_length_fit
from fastasd.data.inputs import AudioSource, iter_sources, parse_section, resolve_shard, shard_sources, text_name
from fastasd.precision import runs_bfloat16
from fastasd.scoring.journal import (
    RUN_FILE,
    SCORES_FILE,
    ScoreResult,
    _CappedLog,
    _Journal,
    _unknown_reason,
    _write_submission_from,
    model_identity,
    open_run_dir,
)
from fastasd.scoring.lock import RunLock
from fastasd.scoring.merge import _merge_if_all_done, check_merge_target, shard_dir_name
from fastasd.scoring.pipeline import _apply_ground_truth, _scored_batches, cap_num_workers, check_batch_size

# One logger for the whole job, under the name the log lines have always had (the CLI prints it).
logger = logging.getLogger("fastasd.score")  # the name its log lines always had


@dataclass(frozen=True)
class ScoreSettings:
    """The options of one :func:`score_inputs` call (see there), checked, with ``section`` and
    ``shard`` parsed."""

    out_dir: Path | None
    batch_size: int
    num_workers: int | None
    section: tuple[str, str] | None  # machine type and section of every clip; None: from each path
    resume: bool
    shard: tuple[int, int]  # (i, n): every n-th clip of the input list, starting at i
    submission: bool | None
    bf16: bool
    progress: bool | None
    overwrite: bool
    return_records: bool
    ground_truth: object

    @classmethod
    def parse(cls, *, out_dir, batch_size: int, section, shard, resume: bool, overwrite: bool,
              **options) -> ScoreSettings:
        """The settings of :func:`score_inputs`'s keyword arguments (ValueError as it says)."""
        if batch_size < 1:
            raise ValueError(f"score_inputs: batch_size must be >= 1, got {batch_size}")
        if resume and overwrite:
            raise ValueError("score_inputs: resume and overwrite exclude each other")
        if resume and out_dir is None:
            raise ValueError("score_inputs: resume needs out_dir")
        options["num_workers"] = cap_num_workers(options.get("num_workers"))
        return cls(section=parse_section(section), shard=resolve_shard(shard),
                   out_dir=Path(out_dir) if out_dir is not None else None, batch_size=batch_size,
                   resume=resume, overwrite=overwrite, **options)

    @property
    def run_dir(self) -> Path | None:
        """The folder of this run's journal: ``out_dir``, or its shard folder; None: nothing written."""
        if self.out_dir is None:
            return None
        i, n = self.shard
        return self.out_dir if n == 1 else self.out_dir / shard_dir_name(i, n)


def score_inputs(
    detector,
    inputs,
    *,
    out_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    section=None,
    resume: bool = False,
    shard=None,
    submission: bool | None = None,
    bf16: bool = False,
    precision: str | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
    return_records: bool = True,
    ground_truth=None,
) -> ScoreResult:
    """Score audio clips with a detector (see :mod:`fastasd.scoring` for inputs and outputs).

    Args:
        detector: a :class:`fastasd.api.Detector` (or any object with ``sample_rate``,
            ``num_samples``, ``config.channel``, ``device``, ``known_sections`` and
            ``score_waveforms(waveforms, machine_types, sections, bf16=) -> (scores, decisions)``).
        inputs: a path, pattern, archive or list file, or a sequence of them
            (:func:`fastasd.data.inputs.iter_sources`).
        out_dir: folder for ``scores.csv``, ``errors.csv``, ``run.json`` and the submission
            files; None writes nothing (records and errors are returned only).
        batch_size: clips per model call.
        num_workers: decode processes; None: :func:`default_num_workers`; 0: a thread.
        section: ``"MACHINE:SS"`` or ``(machine, section)`` for every clip.
        resume: continue the run in ``out_dir`` (clips already in its scores/errors are skipped).
        shard: ``"i/n"`` or ``(i, n)``; None: from torchrun's ``RANK``/``WORLD_SIZE``, else whole.
        submission: write the DCASE submission files (True), never (False), or by the default
            rule (None; see :mod:`fastasd.scoring`).
        bf16: the same as ``precision="bfloat16"`` (the older switch).
        precision: what the networks compute in: ``"auto"`` (bfloat16 on a CPU that computes it
            faster, :mod:`fastasd.precision`), ``"float32"``, ``"bfloat16"``; None: the
            detector's own (:attr:`fastasd.api.Detector.precision`, ``auto`` by default; float32
            for an ONNX detector). ``run.json``'s ``bf16`` records what ran.
        progress: tqdm bar and a summary line on stderr (None: bar only on a terminal, and only on
            shard 0 of a torchrun job; False: neither).
        overwrite: replace an existing run in ``out_dir`` instead of refusing.
        return_records: False returns an empty list (with ``summary``), for very large jobs.
        ground_truth: ground-truth folder(s) or mapping (:func:`fastasd.data.layout.read_ground_truth`)
            filling in the label/domain of clips whose names do not say (DCASE evaluation sets).

    Returns:
        :class:`ScoreResult`: the records of every clip of this shard scored (in input order;
        with ``resume``, the earlier run's rows too; names as in ``scores.csv``, see
        :func:`~fastasd.data.inputs.text_name`), ``.errors`` for this call, and ``.summary``:
        ``scored`` (this call), ``resumed`` (done before; ``resumed_failed`` of them in
        ``errors.csv``), ``failed``, ``unsafe``, ``unknown_section``, ``warned`` (scored with a
        note in ``warnings.csv``), ``skipped`` (+ ``skipped_reasons``), ``total`` (clips of this
        shard), ``seconds``, ``clips_per_s`` (scored / wall time), ``shard``.
        :func:`exit_status` turns the summary into the command's exit status.

    Whatever one clip does (decoding, the model, its row), it ends in ``scores.csv`` or
    ``errors.csv`` and the run goes on; a batch the model fails on is scored clip by clip. Only
    a detector that fails on plain noise too stops the run (the error is raised).

    Raises:
        FileExistsError: ``out_dir`` holds a run (or submission files) and neither ``resume``
            nor ``overwrite``.
        FileNotFoundError: an input does not exist.
        ValueError: bad settings, a ``batch_size`` whose buffers cannot fit in memory, or
            ``resume`` with another model than the run's.
        RunLocked: another process is writing to the run folder.
    """
    t0 = time.perf_counter()
    bf16 = runs_bfloat16(detector, "bfloat16" if bf16 else precision)
    settings = ScoreSettings.parse(
        out_dir=out_dir, batch_size=batch_size, num_workers=num_workers, section=section, resume=resume,
        shard=shard, submission=submission, bf16=bf16, progress=progress, overwrite=overwrite,
        return_records=return_records, ground_truth=ground_truth,
    )
    check_batch_size(settings.batch_size, int(detector.num_samples))
    input_list = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    sources, skipped = _enumerate_sources(input_list, settings)
    journal, run_info, lock = _open_run(detector, input_list, settings)
    try:
        writer = _Writer(journal, keep_records=settings.return_records)
        todo = _select_todo(detector, sources, writer)
        # once per run: how many clip files the model's input length crops or pads (headers only)
        log_length_fit([s.path for s in todo if s.kind == "file" and s.problem is None],
                       detector.num_samples / detector.sample_rate, "scoring", logger)
        _score_batches(detector, todo, writer, settings)
        summary = _summary(writer.counts, skipped, len(sources), settings, seconds=time.perf_counter() - t0)
        result = _result(sources, writer, summary, settings)
        _finish_run(run_info, summary, settings)
    finally:
        if lock is not None:
            lock.release()
    return result


#: Exit statuses of ``fastasd score`` (README "Failure behaviour").
EXIT_OK = 0              # every clip scored
EXIT_STOPPED = 1         # the job stopped on an error before its end (disk full, a broken model): --resume
EXIT_USAGE = 2           # a usage error: bad arguments, a refused output folder, a missing input or model
EXIT_SOME_FAILED = 3     # the run finished, some clips are in errors.csv
EXIT_NOTHING_SCORED = 4  # the run finished and no clip was scored (none found, or every one failed)


def exit_status(summary: dict) -> int:
    """The exit status of a finished run from its summary (:func:`score_inputs` or
    :func:`~fastasd.scoring.merge_shards`): :data:`EXIT_OK`, :data:`EXIT_SOME_FAILED` or
    :data:`EXIT_NOTHING_SCORED`; clips done by a resumed run count as this run's."""
    if "errors" in summary:  # a merge's summary
        scored, not_scored = summary["scored"], summary["errors"]
    else:
        before_failed = summary.get("resumed_failed", 0)
        scored = summary["scored"] + summary["resumed"] - before_failed
        not_scored = summary["failed"] + summary["unsafe"] + summary["unknown_section"] + before_failed
    if scored == 0:
        return EXIT_NOTHING_SCORED
    return EXIT_SOME_FAILED if not_scored else EXIT_OK


# --------------------------------------------------------------------------- the steps of a run


def _enumerate_sources(input_list: list, settings: ScoreSettings) -> tuple[list[AudioSource], Counter]:
    """This shard's clips of the inputs, in input order (labels/domains filled in from the ground
    truth), and the count by reason of what the inputs held that is not a clip to score."""
    i, n = settings.shard
    stats: Counter = Counter()
    sources = shard_sources(list(iter_sources(input_list, settings.section, stats=stats, include_unsafe=True)), i, n)
    stats.pop("unsafe name", None)  # reported per clip (errors.csv), counted as "unsafe"
    if settings.ground_truth is not None:
        sources = _apply_ground_truth(sources, settings.ground_truth)
    return sources, stats


def _open_run(detector, input_list: list, settings: ScoreSettings) -> tuple[_Journal | None, dict, RunLock | None]:
    """The journal of the run folder and its lock (None, None without ``out_dir``; see
    :func:`~fastasd.scoring.journal.open_run_dir`) and the content of ``run.json``, written there
    with ``"complete": false``. A shard first checks that its merge will be allowed to write
    into ``out_dir`` (:func:`~fastasd.scoring.merge.check_merge_target`)."""
    run_dir = settings.run_dir
    if run_dir is None:
        return None, {}, None
    override = settings.section
    run_info = {
        "inputs": [text_name(os.fspath(x)) for x in input_list],
        "shard": list(settings.shard),
        "section": list(override) if override else None,
        "batch_size": settings.batch_size,
        "bf16": bool(settings.bf16),
        **model_identity(detector),
        "complete": False,
    }
    i, n = settings.shard
    if n > 1:
        check_merge_target(settings.out_dir, [settings.out_dir / shard_dir_name(k, n) for k in range(n)],
                           overwrite=settings.overwrite)
    journal, lock = open_run_dir(run_dir, run_info, resume=settings.resume, overwrite=settings.overwrite)
    return journal, run_info, lock


class _Writer:
    """Where the outcome of a run goes: the journal (if any), the log (the first clips not scored),
    this call's errors and new records, and the counts of the summary."""

    def __init__(self, journal: _Journal | None, *, keep_records: bool):
        self.journal = journal
        self.keep_records = keep_records
        self.counts: Counter = Counter()
        self.errors: list[tuple[str, str]] = []
        self.new_records: dict[str, dict] = {}
        self._log_not_scored = _CappedLog()
        self._log_noted = _CappedLog("scored with a warning", "warnings.csv")

    def write(self, records: list[dict], errors: list[tuple[str, str]], notes: list[tuple[str, str]] = ()) -> None:
        """Scored ``records``, ``(file, reason)`` of clips not scored (counted by the caller) and
        ``(file, note)`` of scored clips worth a word (``warnings.csv``)."""
        errors = [(text_name(name), reason) for name, reason in errors]
        for name, reason in errors:
            self._log_not_scored(name, reason)
        for name, note in notes:
            self._log_noted(name, note)
        if self.journal is not None:
            self.journal.write(records, errors, notes)
        self.errors.extend(errors)
        self.counts["warned"] += len(notes)
        self.counts["scored"] += len(records)
        if self.keep_records:
            for rec in records:
                self.new_records[rec["file"]] = rec

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()


def _select_todo(detector, sources: list[AudioSource], writer: _Writer) -> list[AudioSource]:
    """Resume filtering: the clips left to score. A clip done by the resumed run is counted
    (``resumed``); an unsafe or unreadable one, or one of a section the model does not know, is
    written as an error at once."""
    known = set(getattr(detector, "known_sections", ()) or ())
    counts = writer.counts
    todo: list[AudioSource] = []
    early_errors: list[tuple[str, str]] = []
    for src in sources:
        if writer.journal is not None and writer.journal.is_done(src.name):
            counts["resumed"] += 1
            counts["resumed_failed"] += text_name(src.name) in writer.journal.done_errors
        elif src.problem is not None:
            counts["unsafe" if src.problem.startswith("unsafe") else "failed"] += 1
            early_errors.append((src.name, src.problem))
        elif (src.machine_type, src.section) not in known:
            counts["unknown_section"] += 1
            early_errors.append((src.name, _unknown_reason(src)))
        else:
            todo.append(src)
    writer.write([], early_errors)
    return todo


def _score_batches(detector, todo: list[AudioSource], writer: _Writer, settings: ScoreSettings) -> None:
    """Score ``todo`` through the pipeline, writing each batch as it comes, under a progress bar;
    the journal is closed (flushed and fsync'd) at the end, also on an error."""
    i, n = settings.shard
    if settings.progress is None:
        show_bar = None if i == 0 else False  # tqdm: None = only on a terminal
    else:
        show_bar = bool(settings.progress)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), unit="clip", desc="scoring" if n == 1 else f"scoring {i}/{n}",
               disable=show_bar if show_bar is None else not show_bar, smoothing=0.05, dynamic_ncols=True)
    try:
        for records, failed, noted in _scored_batches(detector, todo, batch_size=settings.batch_size,
                                                      num_workers=settings.num_workers, bf16=settings.bf16):
            batch_errors = [(s.name, reason) for s, reason in failed]
            writer.write(records, batch_errors, [(s.name, note) for s, note in noted])
            writer.counts["failed"] += len(batch_errors)
            bar.update(len(records) + len(batch_errors))
    finally:
        bar.close()
        writer.close()


def _summary(counts: Counter, stats: Counter, total: int, settings: ScoreSettings, *, seconds: float) -> dict:
    """The summary of :func:`score_inputs` (``stats``: what the inputs held that was skipped)."""
    i, n = settings.shard
    skipped = sum(stats.values())
    summary = {
        "scored": counts["scored"], "resumed": counts["resumed"], "resumed_failed": counts["resumed_failed"],
        "failed": counts["failed"], "unsafe": counts["unsafe"], "unknown_section": counts["unknown_section"],
        "warned": counts["warned"],
        "skipped": skipped, "skipped_reasons": dict(stats), "total": total,
        "seconds": round(seconds, 3), "clips_per_s": counts["scored"] / seconds if seconds > 0 else 0.0,
        "shard": f"{i}/{n}",
    }
    if counts["unsafe"]:
        summary["skipped"] += counts["unsafe"]
        summary["skipped_reasons"]["unsafe name"] = counts["unsafe"]
    return summary


def _result(sources: list[AudioSource], writer: _Writer, summary: dict, settings: ScoreSettings) -> ScoreResult:
    """The records of every clip of this shard scored, in input order (a resumed run's too)."""
    result = ScoreResult()
    if settings.return_records:
        done = writer.journal.done_scores if writer.journal is not None else {}
        for src in sources:
            name = text_name(src.name)
            rec = writer.new_records.get(name) or done.get(name)
            if rec is not None:
                result.append(rec)
    result.summary = summary
    result.errors = writer.errors
    return result


def _finish_run(run_info: dict, summary: dict, settings: ScoreSettings) -> None:
    """The submission files, ``run.json`` complete with the summary, the merge when every shard is
    complete, and the summary line."""
    run_dir = settings.run_dir
    if run_dir is not None:
        n = settings.shard[1]
        # Shards never write submission files (a section's would be partial): the merge does.
        if n == 1 and settings.submission is not False:
            summary["submission_files"] = _write_submission_from(run_dir / SCORES_FILE, run_dir,
                                                                 strict=settings.submission is True)
        atomic_write_json(run_dir / RUN_FILE, {**run_info, "complete": True, "summary": summary})
        if n > 1:
            _merge_if_all_done(settings.out_dir, n, settings.submission, overwrite=settings.overwrite)
    if settings.progress is not False:
        print(_fmt_summary(summary), file=sys.stderr)
    else:
        logger.info(_fmt_summary(summary))


def _fmt_summary(s: dict) -> str:
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(s["skipped_reasons"].items()))
    shard = f" [shard {s['shard']}]" if s["shard"] != "0/1" else ""
    resumed = f", {s['resumed']} done before" if s["resumed"] else ""
    warned = f", {s['warned']} with a warning (warnings.csv)" if s.get("warned") else ""
    return (f"fastasd score{shard}: scored {s['scored']}, failed {s['failed']}, unknown section "
            f"{s['unknown_section']}, skipped {s['skipped']}" + (f" ({skipped})" if skipped else "")
            + f"{resumed}{warned} in {s['seconds']:.1f} s ({s['clips_per_s']:.1f} clips/s)")
