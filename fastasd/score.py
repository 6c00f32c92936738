"""Batch scoring: audio files, folders, archives and DCASE roots -> anomaly scores, as a
restartable, shardable production job.

Command line::

    fastasd score MODEL_DIR INPUT... --out DIR [--batch-size 64] [--workers N]
                  [--section MACHINE:SS] [--resume | --overwrite] [--shard i/n]
                  [--submission | --no-submission] [--bf16] [--device cpu|cuda|cuda:1]
    fastasd score --merge --out DIR [SHARD_DIR...]
    fastasd score --onnx detector.onnx INPUT... --out DIR [...]   # onnxruntime, fastasd.export
    fastasd score MODEL_DIR INPUT_DIR... --out DIR --watch [--poll-interval 2]

Python: :func:`score_inputs` (also ``Detector.score(inputs, **kwargs)``), :func:`watch_inputs`
and :func:`merge_shards`. Any object with the interface :func:`score_inputs` documents can be the
detector: :class:`fastasd.api.Detector`, or :class:`fastasd.export.OnnxDetector` for ``--onnx``.

Inputs: see :mod:`fastasd.data.inputs` (files, folders, globs, ``.zip``/``.tar``/``.tar.gz``
read member by member in memory, list files; a DCASE root or machine-type folder gives its test
clips). Machine type and section come from each clip's DCASE path (``<mt>/test/section_00_...``,
also inside archives) or from ``--section MACHINE:SS`` for every clip.

Outputs in ``DIR``:

* ``scores.csv``: header ``file,file_name,machine_type,section,domain,label,score,decision``, one
  row per scored clip (``file`` is the path or ``archive::member``; ``score`` higher = more
  anomalous, written with Python's round-trip float repr; ``decision`` 0|1 by the detector's
  per-section threshold). It is an append-only journal, flushed after every batch (and fsync'd
  every 30 s and at the end), so a crash loses at most the batch in flight. Rows come in the
  order the clips were read.
* ``errors.csv``: header ``file,reason``, one row per clip that was not scored: unreadable audio
  (the decoder's reason), an unsafe archive member (``unsafe member name ...``), an unreadable
  archive (``cannot read archive ...``), and a clip whose machine type/section the model does not
  know (reason ``unknown section <mt>/<ss>``; with ``unknown/unknown`` when the path says
  nothing: give ``--section``). Non-audio members, links and training clips of a DCASE archive
  are only counted (summary ``skipped``).
* ``run.json``: inputs, shard, settings, ``complete`` and, at the end, the summary.
* the DCASE submission files (``anomaly_score_<mt>_section_<ss>_test.csv`` and
  ``decision_result_...``) of every machine type and section scored, written at the end from ALL
  rows of ``scores.csv`` (so a resumed run's files are complete). Rule: ``--submission`` always
  writes them (and fails on two clips of one section with the same file name, which the DCASE
  format cannot hold); ``--no-submission`` never does; by default (neither flag) they are
  written, and skipped with a warning when a section has duplicate file names. A shard never
  writes them (its sections would be partial): the merge does, by the same rule.

An existing ``scores.csv`` in ``DIR`` is never silently replaced: ``--resume`` continues it,
``--overwrite`` starts again.

Resume: every clip named in ``scores.csv`` or ``errors.csv`` is done; a partial last line left by
a crash is discarded (that clip is scored again), the rest of the clips are scored and appended.
With the same inputs, an interrupted then resumed run gives the same rows as an uninterrupted one
(each clip exactly once; order may differ only around the interruption).

Pipeline: the main thread runs only the model. A feeder thread enumerates the work and reads
compressed-tar members as the stream reaches them. Decoding runs in ``--workers`` processes
(spawned, which is safe with CUDA and threads; files, zip members and uncompressed-tar members
are read by the worker itself, by path or byte offset), and in a thread of this process until the
first worker is up; ``--workers 0`` (the default on CPU, where one decode thread keeps up with
the model, see :func:`default_num_workers`) decodes in that thread only. At most
``4 x batch_size`` clips are in flight, so memory is bounded whatever the archive size. A batcher
thread copies waveforms, in input order, into one of three reusable batch buffers (pinned memory
when the detector is on CUDA, copied with ``non_blocking=True``), so decoding and batch assembly
overlap the model. ``--bf16`` runs the model under bfloat16 autocast.

Sharding (several GPUs or nodes): ``--shard i/n`` scores every n-th clip of the deterministic
input list starting at i (:func:`fastasd.data.inputs.shard_sources`); under ``torchrun`` the shard
defaults to ``RANK/WORLD_SIZE`` and the device to ``cuda:LOCAL_RANK``::

    torchrun --nnodes 2 --nproc-per-node 8 -m fastasd score MODEL INPUT... --out /shared/run

A sharded run writes to ``DIR/shard-<i>-of-<n>/`` (``scores.csv``, ``errors.csv``, ``run.json``;
each resumable on its own). Merge: the last shard to finish merges automatically when it sees
every shard complete in ``DIR`` (a shared file system); otherwise copy the shard folders into one
``DIR`` and run ``fastasd score --merge --out DIR`` (or name the shard folders). The merge checks
that shards ``0..n-1`` are all present and complete and that no clip is in two shards, then
writes ``DIR/scores.csv`` and ``DIR/errors.csv`` (rows sorted by file), ``DIR/run.json`` and the
submission files: the same rows as an unsharded run.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import multiprocessing
import os
import queue
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fastasd._io import atomic_open, atomic_write_json
from fastasd.data.inputs import (
    AudioSource,
    decode_source,
    iter_payloads,
    iter_sources,
    parse_section,
    resolve_shard,
    shard_sources,
    warm_up,
)

logger = logging.getLogger(__name__)

SCORES_FILE = "scores.csv"
ERRORS_FILE = "errors.csv"
RUN_FILE = "run.json"
SCORES_HEADER = ("file", "file_name", "machine_type", "section", "domain", "label", "score", "decision")
ERRORS_HEADER = ("file", "reason")
_SHARD_DIR_RE = re.compile(r"^shard-(\d+)-of-(\d+)$")
_N_BUFFERS = 3  # batch buffers: one in the model, one being filled, one spare
_FSYNC_SECONDS = 30.0


def shard_dir_name(i: int, n: int) -> str:
    """Folder of shard ``i`` of ``n`` inside the output folder: ``shard-<i>-of-<n>``."""
    return f"shard-{i}-of-{n}"


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


# --------------------------------------------------------------------------- the pipeline


@dataclass
class _Batch:
    buffer: int | None                      # index of the batch buffer holding the waveforms
    sources: list[AudioSource] = field(default_factory=list)
    errors: list[tuple[AudioSource, str]] = field(default_factory=list)


def default_num_workers(cuda: bool) -> int:
    """Decode processes used when ``num_workers`` is None (``FASTASD_SCORE_WORKERS`` overrides).

    On CUDA the CPU only feeds the GPU: up to 8 worker processes, one core left for the main
    process. On CPU the model is the bottleneck by far (a 10-s clip: ~1 ms of CPU to read and
    decode vs >= 30 ms for the forward pass), so one decode thread in this process keeps up, and a
    worker process would only cost its start-up (~1 s of CPU for its imports, taken from the
    model during the first batches): 0.
    """
    env = os.environ.get("FASTASD_SCORE_WORKERS")
    if env:
        return int(env)
    if not cuda:
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores - 1))


class _Pipeline:
    """Decode ``sources`` in workers and hand out full batches in input order (see module doc)."""

    def __init__(self, sources: list[AudioSource], *, batch_size: int, num_workers: int, num_samples: int,
                 sample_rate: int, channel: int | None, pin_memory: bool, window: int | None = None):
        import torch

        self.sources = sources
        self.batch_size = batch_size
        self.decode_kwargs = dict(sample_rate=sample_rate, num_samples=num_samples, channel=channel)
        self.window = window or 4 * batch_size
        self.buffers = [torch.empty((batch_size, num_samples), dtype=torch.float32, pin_memory=pin_memory)
                        for _ in range(_N_BUFFERS)]  # pinned: allocated in the current device's context
        self._np_buffers = [b.numpy() for b in self.buffers]
        self._free: queue.Queue[int] = queue.Queue()
        for i in range(_N_BUFFERS):
            self._free.put(i)
        self._futures: queue.Queue = queue.Queue()
        self._ready: queue.Queue = queue.Queue(maxsize=_N_BUFFERS)
        self._slots = threading.Semaphore(self.window)
        self._stop = threading.Event()
        # A thread of this process decodes until the first worker process is up (spawning and
        # importing the decoder takes seconds, which would otherwise stall the first batches).
        self._thread_pool = ThreadPoolExecutor(1, thread_name_prefix="fastasd-decode")
        self._process_pool = None
        self._warm: list[Future] = []
        if num_workers > 0:
            # spawn: forking a process that runs torch threads (or CUDA) is unsafe.
            self._process_pool = ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"))
            self._warm = [self._process_pool.submit(warm_up) for _ in range(num_workers)]
        self._threads = [threading.Thread(target=self._feed, name="fastasd-feed", daemon=True),
                         threading.Thread(target=self._assemble, name="fastasd-batch", daemon=True)]
        for t in self._threads:
            t.start()

    # Blocking queue operations wake up regularly so that close() can stop the threads.
    def _put(self, q: queue.Queue, item) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def _get(self, q: queue.Queue):
        while not self._stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                pass
        raise _Stopped

    def _feed(self) -> None:
        try:
            for src, data, error in iter_payloads(self.sources):
                while not self._slots.acquire(timeout=0.1):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
                if error is not None:
                    fut: Future = Future()
                    fut.set_result((None, error))
                else:
                    fut = self._executor().submit(decode_source, src, data, **self.decode_kwargs)
                self._futures.put((src, fut))
            self._futures.put(None)
        except BaseException as e:  # handed to the main thread, which raises it
            self._futures.put(e)

    def _executor(self):
        """The process pool once one of its workers is up, the thread until then."""
        if self._process_pool is not None:
            if not self._warm or any(f.done() for f in self._warm):
                self._warm = []
                return self._process_pool
        return self._thread_pool

    def _assemble(self) -> None:
        try:
            batch = _Batch(None)
            while True:
                item = self._get(self._futures)
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                src, fut = item
                x, reason = fut.result()
                self._slots.release()
                if x is None:
                    batch.errors.append((src, reason))
                else:
                    if batch.buffer is None:
                        batch.buffer = self._get(self._free)
                    self._np_buffers[batch.buffer][len(batch.sources)] = x
                    batch.sources.append(src)
                # A run of unreadable clips is still reported batch by batch (progress, journal).
                if len(batch.sources) == self.batch_size or len(batch.errors) >= self.batch_size:
                    if not self._put(self._ready, batch):
                        return
                    batch = _Batch(None)
            if batch.sources or batch.errors:
                self._put(self._ready, batch)
            self._put(self._ready, None)
        except _Stopped:
            pass
        except BaseException as e:
            self._put(self._ready, e)

    def __iter__(self) -> Iterator[_Batch]:
        while True:
            item = self._get(self._ready)
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def release(self, batch: _Batch) -> None:
        """Give a batch's buffer back once the model is done with it."""
        if batch.buffer is not None:
            self._free.put(batch.buffer)

    def close(self) -> None:
        self._stop.set()
        for pool in (self._thread_pool, self._process_pool):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        for t in self._threads:
            t.join(timeout=10)


class _Stopped(Exception):
    pass


# --------------------------------------------------------------------------- scoring


def _run_dir(out_dir: Path, i: int, n: int) -> Path:
    return out_dir if n == 1 else out_dir / shard_dir_name(i, n)


def _fmt_summary(s: dict) -> str:
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(s["skipped_reasons"].items()))
    shard = f" [shard {s['shard']}]" if s["shard"] != "0/1" else ""
    resumed = f", {s['resumed']} done before" if s["resumed"] else ""
    return (f"fastasd score{shard}: scored {s['scored']}, failed {s['failed']}, unknown section "
            f"{s['unknown_section']}, skipped {s['skipped']}" + (f" ({skipped})" if skipped else "")
            + f"{resumed} in {s['seconds']:.1f} s ({s['clips_per_s']:.1f} clips/s)")


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


def _scored_batches(detector, todo: list[AudioSource], *, batch_size: int, num_workers: int | None,
                    bf16: bool) -> Iterator[tuple[list[dict], list[tuple[AudioSource, str]]]]:
    """Run the pipeline on ``todo``: per batch, ``(records, [(source, reason) not decoded])``.

    The one loop of decoding and scoring that :func:`score_inputs` and :func:`watch_inputs`
    share; the pipeline is closed when the generator ends or is closed."""
    if not todo:
        return
    device = _device_of(detector)
    if num_workers is None:
        num_workers = default_num_workers(device.type == "cuda")
    if device.type == "cuda" and device.index is not None:
        import torch

        torch.cuda.set_device(device)  # else pinned buffers open a context on cuda:0 in every rank
    pipeline = _Pipeline(
        todo, batch_size=batch_size, num_workers=num_workers, num_samples=int(detector.num_samples),
        sample_rate=int(detector.sample_rate), channel=_channel_of(detector),
        pin_memory=device.type == "cuda",
    )
    try:
        for batch in pipeline:
            records = []
            if batch.sources:
                x = pipeline.buffers[batch.buffer][: len(batch.sources)]
                if device.type != "cpu":
                    x = x.to(device, non_blocking=True)
                scores, decisions = detector.score_waveforms(
                    x, [s.machine_type for s in batch.sources], [s.section for s in batch.sources],
                    bf16=bf16)
                # The buffer may be refilled as soon as the scores are back (they are on the host).
                pipeline.release(batch)
                for src, score, dec in zip(batch.sources, scores, decisions):
                    records.append({
                        "file": src.name, "file_name": src.file_name, "machine_type": src.machine_type,
                        "section": src.section, "domain": src.domain, "label": src.label,
                        "score": float(score), "decision": int(dec),
                    })
            yield records, batch.errors
    finally:
        pipeline.close()


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
    progress: bool | None = None,
    overwrite: bool = False,
    return_records: bool = True,
    ground_truth=None,
) -> ScoreResult:
    """Score audio clips with a detector (see the module docstring for inputs and outputs).

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
            rule (None; see the module docstring).
        bf16: run the model in bfloat16 autocast.
        progress: tqdm bar and a summary line on stderr (None: bar only on a terminal, and only on
            shard 0 of a torchrun job; False: neither).
        overwrite: replace an existing run in ``out_dir`` instead of refusing.
        return_records: False returns an empty list (with ``summary``), for very large jobs.
        ground_truth: ground-truth folder(s) or mapping (:func:`fastasd.data.layout.read_ground_truth`)
            filling in the label/domain of clips whose names do not say (DCASE evaluation sets).

    Returns:
        :class:`ScoreResult`: the records of every clip of this shard scored (in input order;
        with ``resume``, the earlier run's rows too), ``.errors`` for this call, and
        ``.summary``: ``scored`` (this call), ``resumed`` (done before), ``failed``,
        ``unsafe``, ``unknown_section``, ``skipped`` (+ ``skipped_reasons``), ``total``
        (clips of this shard), ``seconds``, ``clips_per_s`` (scored / wall time), ``shard``.

    Raises:
        FileExistsError: ``out_dir`` holds a run and neither ``resume`` nor ``overwrite``.
        FileNotFoundError: an input does not exist.
    """
    t0 = time.perf_counter()
    if batch_size < 1:
        raise ValueError(f"score_inputs: batch_size must be >= 1, got {batch_size}")
    if resume and overwrite:
        raise ValueError("score_inputs: resume and overwrite exclude each other")
    if resume and out_dir is None:
        raise ValueError("score_inputs: resume needs out_dir")
    override = parse_section(section)
    i, n = resolve_shard(shard)
    input_list = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)

    stats: Counter = Counter()
    sources = shard_sources(list(iter_sources(input_list, override, stats=stats, include_unsafe=True)), i, n)
    stats.pop("unsafe name", None)  # reported per clip (errors.csv), counted as "unsafe"
    if ground_truth is not None:
        sources = _apply_ground_truth(sources, ground_truth)

    run_dir = _run_dir(Path(out_dir), i, n) if out_dir is not None else None
    journal = _Journal(run_dir, resume=resume, overwrite=overwrite) if run_dir is not None else None
    run_info = {
        "inputs": [os.fspath(x) for x in input_list],
        "shard": [i, n],
        "section": list(override) if override else None,
        "batch_size": batch_size,
        "bf16": bool(bf16),
        "model": str(getattr(detector, "path", "") or ""),
        "complete": False,
    }
    if run_dir is not None:
        previous = run_dir / RUN_FILE
        if resume and previous.exists():
            try:
                old = json.loads(previous.read_text())
                if old.get("inputs") != run_info["inputs"] or old.get("section") != run_info["section"]:
                    logger.warning("%s: resuming with other inputs or --section than the interrupted run", run_dir)
            except (OSError, ValueError):
                pass
        atomic_write_json(run_dir / RUN_FILE, run_info)

    known = set(getattr(detector, "known_sections", ()) or ())
    counts = Counter()
    errors: list[tuple[str, str]] = []
    new_records: dict[str, dict] = {}
    todo: list[AudioSource] = []
    early_errors: list[tuple[str, str]] = []
    for src in sources:
        if journal is not None and journal.is_done(src.name):
            counts["resumed"] += 1
        elif src.problem is not None:
            counts["unsafe" if src.problem.startswith("unsafe") else "failed"] += 1
            early_errors.append((src.name, src.problem))
        elif (src.machine_type, src.section) not in known:
            counts["unknown_section"] += 1
            early_errors.append((src.name, _unknown_reason(src)))
        else:
            todo.append(src)
    log_not_scored = _CappedLog()
    for name, reason in early_errors:
        log_not_scored(name, reason)
    errors.extend(early_errors)
    if journal is not None:
        journal.write([], early_errors)

    if progress is None:
        show_bar = None if i == 0 else False  # tqdm: None = only on a terminal
    else:
        show_bar = bool(progress)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), unit="clip", desc="scoring" if n == 1 else f"scoring {i}/{n}",
               disable=show_bar if show_bar is None else not show_bar, smoothing=0.05, dynamic_ncols=True)
    try:
        for records, failed in _scored_batches(detector, todo, batch_size=batch_size,
                                               num_workers=num_workers, bf16=bf16):
            batch_errors = [(s.name, reason) for s, reason in failed]
            for name, reason in batch_errors:
                log_not_scored(name, reason)
            if journal is not None:
                journal.write(records, batch_errors)
            errors.extend(batch_errors)
            counts["scored"] += len(records)
            counts["failed"] += len(batch_errors)
            if return_records:
                for rec in records:
                    new_records[rec["file"]] = rec
            bar.update(len(records) + len(batch_errors))
    finally:
        bar.close()
        if journal is not None:
            journal.close()

    seconds = time.perf_counter() - t0
    skipped = sum(stats.values())
    summary = {
        "scored": counts["scored"], "resumed": counts["resumed"], "failed": counts["failed"],
        "unsafe": counts["unsafe"], "unknown_section": counts["unknown_section"],
        "skipped": skipped, "skipped_reasons": dict(stats), "total": len(sources),
        "seconds": round(seconds, 3), "clips_per_s": counts["scored"] / seconds if seconds > 0 else 0.0,
        "shard": f"{i}/{n}",
    }
    if counts["unsafe"]:
        summary["skipped"] += counts["unsafe"]
        summary["skipped_reasons"]["unsafe name"] = counts["unsafe"]

    result = ScoreResult()
    if return_records:
        done = journal.done_scores if journal is not None else {}
        for src in sources:
            rec = new_records.get(src.name) or done.get(src.name)
            if rec is not None:
                result.append(rec)
    result.summary = summary
    result.errors = errors

    if run_dir is not None:
        # Shards never write submission files (a section's would be partial): the merge does.
        if n == 1 and submission is not False:
            summary["submission_files"] = _write_submission_from(run_dir / SCORES_FILE, run_dir,
                                                                 strict=submission is True)
        atomic_write_json(run_dir / RUN_FILE, {**run_info, "complete": True, "summary": summary})
        if n > 1:
            _merge_if_all_done(Path(out_dir), n, submission)
    if progress is not False:
        print(_fmt_summary(summary), file=sys.stderr)
    else:
        logger.info(_fmt_summary(summary))
    return result


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

    It returns when ``stop`` is set or on ``KeyboardInterrupt`` (Ctrl-C; in the main thread the
    first Ctrl-C lets the batch in flight finish, a second one abandons it and leaves it to
    ``--resume``); the journals are then flushed and fsync'd, the submission files written (by
    the rule of :func:`score_inputs`) and ``run.json`` updated with the summary.

    Returns:
        the summary: ``scored``, ``failed``, ``unknown_section``, ``resumed``, ``polls``,
        ``seconds``, ``clips_per_s``.

    Raises:
        ValueError: an input that is not a folder, a bad ``poll_interval`` or ``batch_size``.
        FileExistsError: ``out_dir`` holds a run and neither ``resume`` nor ``overwrite``.
    """
    import signal

    folders = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
    not_dirs = [os.fspath(f) for f in folders if not os.path.isdir(f)]
    if not folders or not_dirs:
        raise ValueError(f"watch: every input must be a folder to watch, got {not_dirs or 'none'}")
    if not poll_interval > 0 or batch_size < 1 or retries < 0:
        raise ValueError(f"watch: need poll_interval > 0, batch_size >= 1 and retries >= 0, got "
                         f"{poll_interval}, {batch_size}, {retries}")
    if resume and overwrite:
        raise ValueError("watch: resume and overwrite exclude each other")
    override = parse_section(section)
    run_dir = Path(out_dir)
    journal = _Journal(run_dir, resume=resume, overwrite=overwrite)
    run_info = {"inputs": [os.fspath(f) for f in folders], "shard": [0, 1],
                "section": list(override) if override else None, "batch_size": batch_size,
                "bf16": bool(bf16), "model": str(getattr(detector, "path", "") or ""),
                "watch": {"poll_interval": poll_interval, "retries": retries}, "complete": False}
    atomic_write_json(run_dir / RUN_FILE, run_info)
    done = set(journal.done_scores) | set(journal.done_errors)
    known = set(getattr(detector, "known_sections", ()) or ())
    stop = stop if stop is not None else threading.Event()
    seen: dict[str, tuple[int, int]] = {}
    failures: dict[str, tuple[tuple[int, int], int]] = {}
    counts = Counter(resumed=len(done))
    log_not_scored = _CappedLog()
    interrupts = []

    def on_sigint(signum, frame):
        interrupts.append(signum)
        if len(interrupts) > 1:
            raise KeyboardInterrupt
        logger.info("watch: stopping after the batch in flight (Ctrl-C again to stop at once)")
        stop.set()

    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGINT, on_sigint)
    logger.info("watching %s (poll every %g s); Ctrl-C stops", ", ".join(run_info["inputs"]), poll_interval)
    t0 = time.perf_counter()
    try:
        while not stop.is_set():
            t_poll = time.monotonic()
            counts["polls"] += 1
            listed = [src for src in iter_sources(folders, override, stats=Counter())
                      if src.name not in done]
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
                done.add(name)
            for records, failed in _scored_batches(detector, ready, batch_size=batch_size,
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
                journal.write(records, reported)
                done.update([r["file"] for r in records] + [name for name, _ in reported])
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
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
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


def _apply_ground_truth(sources: list[AudioSource], ground_truth) -> list[AudioSource]:
    """Fill unknown labels/domains from the official ground truth, joined by (mt, section, name)."""
    from dataclasses import replace

    from fastasd.data.layout import read_ground_truth

    if isinstance(ground_truth, (str, os.PathLike)):
        truth = read_ground_truth(ground_truth)
    elif isinstance(ground_truth, dict):
        truth = ground_truth
    else:
        truth = {}
        for gt in ground_truth:
            truth.update(read_ground_truth(gt))
    out = []
    for src in sources:
        t = truth.get((src.machine_type, src.section, src.file_name))
        if t is not None:
            label, domain = t
            src = replace(src, label=src.label if src.label != "unknown" else label,
                          domain=src.domain if src.domain != "unknown" else domain)
        out.append(src)
    return out


def _device_of(detector):
    import torch

    return torch.device(getattr(detector, "device", "cpu"))


def _channel_of(detector) -> int | None:
    config = getattr(detector, "config", None)
    return getattr(config, "channel", None)


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


# --------------------------------------------------------------------------- merging shards


def _shard_dirs_in(out_dir: Path) -> list[Path]:
    found = [p for p in out_dir.iterdir() if p.is_dir() and _SHARD_DIR_RE.match(p.name)] if out_dir.is_dir() else []
    return sorted(found, key=lambda p: tuple(int(v) for v in _SHARD_DIR_RE.match(p.name).groups()[::-1]))


def _merge_if_all_done(out_dir: Path, n: int, submission: bool | None) -> None:
    """Merge when every shard of ``n`` in ``out_dir`` is complete (the last one to finish does it)."""
    dirs = [d for d in _shard_dirs_in(out_dir) if _SHARD_DIR_RE.match(d.name)[2] == str(n)]
    states = []
    for d in dirs:
        try:
            states.append(json.loads((d / RUN_FILE).read_text()).get("complete", False))
        except (OSError, ValueError):
            states.append(False)
    if len(dirs) == n and all(states):
        logger.info("all %d shards complete: merging into %s", n, out_dir)
        merge_shards(dirs, out_dir, submission=submission)
    else:
        logger.info("shard done; %d of %d shards complete in %s (merge with: fastasd score --merge --out %s)",
                    sum(states), n, out_dir, out_dir)


def merge_shards(shard_dirs: Iterable[str | os.PathLike] | None, out_dir: str | os.PathLike, *,
                 submission: bool | None = None, allow_incomplete: bool = False) -> dict:
    """Merge the outputs of a sharded run into ``out_dir``.

    Args:
        shard_dirs: the shard folders (each with ``scores.csv``, ``errors.csv``, ``run.json``);
            None: every ``shard-<i>-of-<n>`` folder in ``out_dir``.
        out_dir: where ``scores.csv``, ``errors.csv``, ``run.json`` and the submission files go.
        submission: write the DCASE submission files (None: yes, with a warning instead of an
            error for duplicate file names in a section; False: no).
        allow_incomplete: merge although a shard is missing or did not finish (the merged
            ``run.json`` then says ``"complete": false``).

    Returns:
        Summary: ``scored``, ``errors``, ``shards``, ``complete``.

    Raises:
        ValueError: shards of different ``n``, a shard twice, a missing or unfinished shard
            (unless ``allow_incomplete``), or one clip in two shards.
    """
    out = Path(out_dir)
    dirs = _shard_dirs_in(out) if shard_dirs is None else [Path(d) for d in shard_dirs]
    if not dirs:
        raise ValueError(f"merge: no shard folders given or found in {out} (expected shard-<i>-of-<n>/)")
    seen_shards: dict[int, Path] = {}
    total = None
    complete = True
    for d in dirs:
        if not (d / SCORES_FILE).exists():
            raise ValueError(f"merge: {d} has no {SCORES_FILE}")
        try:
            info = json.loads((d / RUN_FILE).read_text())
            si, sn = info["shard"]
        except (OSError, ValueError, KeyError, TypeError):
            m = _SHARD_DIR_RE.match(d.name)
            if not m:
                raise ValueError(f"merge: {d} has no readable {RUN_FILE} and is not named shard-<i>-of-<n>") from None
            si, sn, info = int(m[1]), int(m[2]), {}
        if total is None:
            total = sn
        elif sn != total:
            raise ValueError(f"merge: {d} is shard {si}/{sn} but others are of {total}")
        if si in seen_shards:
            raise ValueError(f"merge: shard {si}/{sn} given twice ({seen_shards[si]} and {d})")
        seen_shards[si] = d
        if not info.get("complete", False):
            complete = False
            if not allow_incomplete:
                raise ValueError(f"merge: {d} (shard {si}/{sn}) did not finish; resume it "
                                 f"(--resume --shard {si}/{sn}) or pass allow_incomplete")
    missing = sorted(set(range(total)) - set(seen_shards))
    if missing:
        complete = False
        if not allow_incomplete:
            raise ValueError(f"merge: shard(s) {missing} of {total} missing")

    scores: dict[str, list[str]] = {}
    errs: dict[str, list[str]] = {}
    for si in sorted(seen_shards):
        d = seen_shards[si]
        for path, header, rows_by_name in ((d / SCORES_FILE, SCORES_HEADER, scores),
                                           (d / ERRORS_FILE, ERRORS_HEADER, errs)):
            if not path.exists():
                continue
            for row in _read_journal(path, header):
                if row[0] in scores or row[0] in errs:
                    raise ValueError(f"merge: {row[0]} is in two shards (were they run on different inputs?)")
                rows_by_name[row[0]] = row
    for path, header, rows in ((out / SCORES_FILE, SCORES_HEADER, scores), (out / ERRORS_FILE, ERRORS_HEADER, errs)):
        with atomic_open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows[k] for k in sorted(rows))
    summary = {"scored": len(scores), "errors": len(errs), "shards": total, "complete": complete}
    if submission is not False:
        summary["submission_files"] = _write_submission_from(out / SCORES_FILE, out, strict=submission is True)
    atomic_write_json(out / RUN_FILE, {"merged_from": [str(seen_shards[k]) for k in sorted(seen_shards)],
                                       "shard": [0, 1], "complete": complete, "summary": summary})
    return summary


# --------------------------------------------------------------------------- command line


def default_device() -> str:
    """``cuda:LOCAL_RANK`` under torchrun with CUDA, else ``cuda`` if available, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        local = os.environ.get("LOCAL_RANK")
        return f"cuda:{int(local)}" if local is not None else "cuda"
    return "cpu"


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fastasd score`` (see the module docstring)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "outputs: DIR/scores.csv (file,file_name,machine_type,section,domain,label,score,decision),\n"
        "  DIR/errors.csv (file,reason), DIR/run.json and the DCASE submission files.\n"
        "resume: --resume skips every clip already in scores.csv/errors.csv.\n"
        "sharding: --shard i/n (default RANK/WORLD_SIZE under torchrun) writes DIR/shard-<i>-of-<n>/;\n"
        "  the last shard to finish merges them into DIR when it sees them all; otherwise gather the\n"
        "  shard folders in one DIR and run: fastasd score --merge --out DIR")
    parser.add_argument("paths", nargs="*", metavar="MODEL_DIR INPUT",
                        help="the trained model folder, then audio files, folders, DCASE roots, glob patterns, "
                             ".zip/.tar/.tar.gz archives or .txt/.lst list files (with --merge: shard folders)")
    parser.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--batch-size", type=int, default=64, help="clips per model call (default 64)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="decode processes (default: up to 8 on CUDA; on CPU 0 = a decode thread)")
    parser.add_argument("--section", metavar="MACHINE:SS",
                        help="machine type and section of every clip (default: from each clip's DCASE path)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the run in DIR")
    group.add_argument("--overwrite", action="store_true", help="replace the run in DIR")
    parser.add_argument("--shard", metavar="i/n",
                        help="score shard i of n (default: RANK/WORLD_SIZE under torchrun, else all)")
    parser.add_argument("--submission", action=argparse.BooleanOptionalAction, default=None,
                        help="write the DCASE submission files (default: yes, but duplicate file names "
                             "in a section then only warn; shards leave them to the merge)")
    parser.add_argument("--ground-truth", action="append", metavar="GT_DIR",
                        help="official ground-truth folder filling in labels/domains of evaluation clips "
                             "(repeatable)")
    parser.add_argument("--bf16", action="store_true", help="run the model in bfloat16 autocast")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda:LOCAL_RANK / cuda / cpu)")
    parser.add_argument("--merge", action="store_true",
                        help="merge shard folders (default: DIR/shard-*-of-*) into DIR instead of scoring")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or summary line")
    parser.add_argument("--onnx", metavar="FILE",
                        help="score with this ONNX export (fastasd export) on onnxruntime's CPU provider "
                             "instead of a model folder: then every path is an INPUT")
    parser.add_argument("--watch", action="store_true",
                        help="keep running: score each new audio file that appears in the INPUT folders "
                             "once its size and mtime stay unchanged for a poll interval; Ctrl-C stops")
    parser.add_argument("--poll-interval", type=float, default=2.0, metavar="SECONDS",
                        help="with --watch: seconds between two listings of the folders (default 2)")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``fastasd score``; returns the exit status (0 when the run finished)."""
    if args.merge:
        summary = merge_shards(args.paths or None, args.out, submission=args.submission)
        print(f"fastasd score --merge: {summary['scored']} scores and {summary['errors']} errors "
              f"of {summary['shards']} shard(s) merged into {args.out}", file=sys.stderr)
        return 0
    if args.onnx:
        if args.bf16 or (args.device and args.device != "cpu"):
            print("fastasd score: --onnx runs on onnxruntime's CPU provider (no --bf16, --device cpu only)",
                  file=sys.stderr)
            return 2
        from fastasd.export import load_onnx

        inputs = args.paths
    else:
        inputs = args.paths[1:]
    if not inputs:
        print("fastasd score: need MODEL_DIR (or --onnx FILE) and at least one INPUT", file=sys.stderr)
        return 2
    if args.watch and args.shard:
        print("fastasd score: --watch does not shard (run one watcher per folder)", file=sys.stderr)
        return 2
    if args.onnx:
        detector = load_onnx(args.onnx)
    else:
        from fastasd.api import load

        detector = load(args.paths[0], device=args.device or default_device())
    if args.watch:
        watch_inputs(detector, inputs, out_dir=args.out, poll_interval=args.poll_interval,
                     batch_size=args.batch_size, section=args.section, resume=args.resume,
                     overwrite=args.overwrite, submission=args.submission, bf16=args.bf16,
                     ground_truth=args.ground_truth)
        return 0
    result = score_inputs(
        detector, inputs, out_dir=args.out, batch_size=args.batch_size, num_workers=args.workers,
        section=args.section, resume=args.resume, shard=args.shard, submission=args.submission,
        bf16=args.bf16, progress=False if args.no_progress else None, overwrite=args.overwrite,
        return_records=False, ground_truth=args.ground_truth,
    )
    return 0 if result.summary["scored"] or not result.summary["failed"] else 1


__all__ = ["score_inputs", "watch_inputs", "merge_shards", "read_scores_csv", "ScoreResult", "default_device",
           "default_num_workers", "shard_dir_name", "add_cli_arguments", "run_cli"]
