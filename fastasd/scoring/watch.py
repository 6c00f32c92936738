"""``--watch`` mode: keep scoring the audio files that appear in folders, once each is complete,
into the journal of one run folder, until interrupted.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path

from fastasd._io import atomic_write_json
from fastasd.data.inputs import iter_sources, parse_section, text_name
from fastasd.scoring.journal import (
    RUN_FILE,
    SCORES_FILE,
    _CappedLog,
    _unknown_reason,
    _write_submission_from,
    model_identity,
    open_run_dir,
)
from fastasd.scoring.pipeline import _apply_ground_truth, _scored_batches, check_batch_size

# One logger for the whole job, under the name the log lines have always had (the CLI prints it).
logger = logging.getLogger("fastasd.score")  # the name its log lines always had


def _file_signature(path: str) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of a file, None when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def watch_inputs(
    detector,
    folders,
    *,
    out_dir: str | os.PathLike,
    poll_interval: float = 2.0,
    retries: int = 2,
    batch_size: int = 64,
    section=None,
    resume: bool = False,
    overwrite: bool = False,
    submission: bool | None = None,
    bf16: bool = False,
    ground_truth=None,
    stop: threading.Event | None = None,
) -> dict:
    """Keep scoring the audio files that appear in ``folders`` until interrupted (``fastasd score
    ... --watch``).

    Every ``poll_interval`` seconds the folders are listed again (recursively, as
    :func:`score_inputs` lists a folder: a DCASE root gives its test clips, hidden and non-audio
    files are ignored). A file is scored once it is complete by this rule: its size and
    modification time are the same at two polls in a row (so unchanged for a whole interval) and
    it is not empty. A complete file that does not decode is tried again at the next polls and
    goes to ``errors.csv`` only after ``retries + 1`` failures with the same size and time (if
    either changes, it was still being written and waits to be complete again). A writer that may
    pause longer than ``poll_interval`` should write to a hidden or non-audio name and rename the
    file when done (a rename is atomic). Clips of a section the model does not know go to
    ``errors.csv`` at once.

    Rows are appended to ``out_dir/scores.csv`` / ``errors.csv`` and flushed after every batch,
    with the rules of :func:`score_inputs`: an existing run needs ``resume`` (its clips are not
    scored again) or ``overwrite``. Decoding runs in a thread of this process.

    It returns when ``stop`` is set or on ``KeyboardInterrupt`` (Ctrl-C), and in the main thread
    on SIGTERM too (what systemd, docker and Kubernetes send to stop a service): the first signal
    lets the batch in flight finish, a second one abandons it and leaves it to ``--resume``. The
    journals are then flushed and fsync'd, the submission files written (by the rule of
    :func:`score_inputs`) and ``run.json`` updated with the summary. Like :func:`score_inputs`
    it locks ``out_dir`` and isolates each clip's failure.

    Returns:
        the summary: ``scored``, ``failed``, ``unknown_section``, ``resumed``, ``polls``,
        ``seconds``, ``clips_per_s``.

    Raises:
        ValueError: an input that is not a folder, a bad ``poll_interval`` or ``batch_size``.
        FileExistsError: ``out_dir`` holds a run and neither ``resume`` nor ``overwrite``.
        RunLocked: another process is writing to ``out_dir``.
    """
    folders = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
    not_dirs = [os.fspath(f) for f in folders if not os.path.isdir(f)]
    if not folders or not_dirs:
        raise ValueError(f"watch: every input must be a folder to watch, got {not_dirs or 'none'}")
    if not poll_interval > 0 or batch_size < 1 or retries < 0:
        raise ValueError(f"watch: need poll_interval > 0, batch_size >= 1 and retries >= 0, got "
                         f"{poll_interval}, {batch_size}, {retries}")
    if resume and overwrite:
        raise ValueError("watch: resume and overwrite exclude each other")
    check_batch_size(batch_size, int(detector.num_samples))
    override = parse_section(section)
    run_dir = Path(out_dir)
    run_info = {"inputs": [text_name(os.fspath(f)) for f in folders], "shard": [0, 1],
                "section": list(override) if override else None, "batch_size": batch_size,
                "bf16": bool(bf16), **model_identity(detector),
                "watch": {"poll_interval": poll_interval, "retries": retries}, "complete": False}
    journal, lock = open_run_dir(run_dir, run_info, resume=resume, overwrite=overwrite)
    try:
        return _watch(detector, folders, journal, run_dir, run_info, poll_interval=poll_interval,
                      retries=retries, batch_size=batch_size, override=override, submission=submission,
                      bf16=bf16, ground_truth=ground_truth, stop=stop)
    finally:
        lock.release()


def _watch(detector, folders: list, journal, run_dir: Path, run_info: dict, *, poll_interval: float, retries: int,
           batch_size: int, override, submission, bf16: bool, ground_truth, stop) -> dict:
    """The polling loop of :func:`watch_inputs` on an open run folder; returns the summary."""
    import signal

    done = set(journal.done_scores) | set(journal.done_errors)  # names as text (text_name)
    known = set(getattr(detector, "known_sections", ()) or ())
    stop = stop if stop is not None else threading.Event()
    seen: dict[str, tuple[int, int]] = {}
    failures: dict[str, tuple[tuple[int, int], int]] = {}
    counts = Counter(resumed=len(done))
    log_not_scored = _CappedLog()
    interrupts = []

    def on_signal(signum, frame):
        interrupts.append(signum)
        if len(interrupts) > 1:
            raise KeyboardInterrupt
        logger.info("watch: %s: stopping after the batch in flight (again to stop at once)",
                    signal.Signals(signum).name)
        stop.set()

    previous_handlers = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous_handlers[signum] = signal.signal(signum, on_signal)
    logger.info("watching %s (poll every %g s); Ctrl-C or SIGTERM stops", ", ".join(run_info["inputs"]),
                poll_interval)
    t0 = time.perf_counter()
    try:
        while not stop.is_set():
            t_poll = time.monotonic()
            counts["polls"] += 1
            listed = [src for src in iter_sources(folders, override, stats=Counter())
                      if text_name(src.name) not in done]
            if ground_truth is not None:
                listed = _apply_ground_truth(listed, ground_truth)
            ready, early, now = [], [], {}
            for src in listed:
                sig = _file_signature(src.path)
                if sig is None:
                    continue  # gone since it was listed
                now[src.name] = sig
                if sig != seen.get(src.name) or sig[0] == 0:
                    continue  # new, still growing or empty: look again at the next poll
                if (src.machine_type, src.section) not in known:
                    early.append((src.name, _unknown_reason(src)))
                else:
                    ready.append(src)
            seen = now
            failures = {k: v for k, v in failures.items() if k in now}
            if early:
                journal.write([], early)
                counts["unknown_section"] += len(early)
            for name, reason in early:
                log_not_scored(name, reason)
                done.add(text_name(name))
            for records, failed, noted in _scored_batches(detector, ready, batch_size=batch_size,
                                                          num_workers=0, bf16=bf16):
                reported = []
                for src, reason in failed:
                    sig = seen.get(src.name)
                    old = failures.get(src.name)
                    tries = old[1] + 1 if old is not None and old[0] == sig else 1
                    if tries > retries:
                        reported.append((src.name, reason))
                        failures.pop(src.name, None)
                    else:
                        failures[src.name] = (sig, tries)
                        logger.info("watch: %s does not decode yet (%s); trying again", src.name, reason)
                journal.write(records, reported, [(src.name, note) for src, note in noted])
                done.update([r["file"] for r in records] + [text_name(name) for name, _ in reported])
                for name, reason in reported:
                    log_not_scored(name, reason)
                counts["scored"] += len(records)
                counts["failed"] += len(reported)
                if records:
                    logger.info("watch: scored %d new clip(s), %d in all", len(records), counts["scored"])
            stop.wait(max(0.0, poll_interval - (time.monotonic() - t_poll)))
    except KeyboardInterrupt:
        logger.info("watch: interrupted; the batch in flight is left to --resume")
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        journal.close()
    seconds = time.perf_counter() - t0
    summary = {"scored": counts["scored"], "failed": counts["failed"],
               "unknown_section": counts["unknown_section"], "resumed": counts["resumed"],
               "polls": counts["polls"], "seconds": round(seconds, 3),
               "clips_per_s": counts["scored"] / seconds if seconds > 0 else 0.0}
    if submission is not False:
        summary["submission_files"] = _write_submission_from(run_dir / SCORES_FILE, run_dir,
                                                             strict=submission is True)
    atomic_write_json(run_dir / RUN_FILE, {**run_info, "complete": True, "summary": summary})
    logger.info("watch: stopped; scored %d, failed %d, unknown section %d (%d done before)", summary["scored"],
                summary["failed"], summary["unknown_section"], summary["resumed"])
    return summary
