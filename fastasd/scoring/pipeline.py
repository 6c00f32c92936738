"""The decode/batch pipeline of a scoring run: a feeder thread, decode worker processes (or a
thread) and a batcher thread that hand the model full batches in input order, and the loop that
runs a detector on them (see "Pipeline" in :mod:`fastasd.scoring`).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from fastasd.data.inputs import AudioSource, decode_source, iter_payloads, text_name, warm_up

logger = logging.getLogger("fastasd.score")  # the name its log lines always had

_N_BUFFERS = 3  # batch buffers: one in the model, one being filled, one spare
_WINDOW_BATCHES = 4  # clips in flight (decoded or being decoded): this many batches' worth


@dataclass
class _Batch:
    buffer: int | None                      # index of the batch buffer holding the waveforms
    sources: list[AudioSource] = field(default_factory=list)
    errors: list[tuple[AudioSource, str]] = field(default_factory=list)
    notes: list[tuple[AudioSource, str]] = field(default_factory=list)  # decoded, scored, but worth a word


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


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cap_num_workers(num_workers: int | None) -> int | None:
    """``num_workers`` checked: ValueError below 0; more decode processes than this process may
    use CPUs (``os.sched_getaffinity``) cannot decode faster, so more are capped, with a warning."""
    if num_workers is None:
        return None
    if num_workers < 0:
        raise ValueError(f"num_workers (--workers) must be >= 0, got {num_workers}")
    cores = _cores()
    if num_workers > cores:
        logger.warning("--workers %d: capped to %d, the CPUs this process may use", num_workers, cores)
        return cores
    return num_workers


def _available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_batch_size(batch_size: int, num_samples: int) -> None:
    """ValueError (naming ``--batch-size``) when the pipeline's waveform buffers alone, the batch
    buffers plus the clips in flight (``(3 + 4) x batch_size`` float32 clips of ``num_samples``),
    would not fit in the memory available now: such a run could only end out of memory."""
    if batch_size < 1:
        raise ValueError(f"batch_size (--batch-size) must be >= 1, got {batch_size}")
    clips = (_N_BUFFERS + _WINDOW_BATCHES) * batch_size
    need = clips * int(num_samples) * 4
    available = _available_memory()
    if available is not None and need > available:
        raise ValueError(f"batch_size (--batch-size) {batch_size}: the scoring pipeline's buffers alone take "
                         f"{need / 2**30:.1f} GiB ({clips} clips of {num_samples} float32 samples), more than "
                         f"the {available / 2**30:.1f} GiB of memory available: use a smaller batch size")


def default_device() -> str:
    """``cuda:LOCAL_RANK`` under torchrun with CUDA, else ``cuda`` if available, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        local = os.environ.get("LOCAL_RANK")
        return f"cuda:{int(local)}" if local is not None else "cuda"
    return "cpu"


class _Pipeline:
    """Decode ``sources`` in workers and hand out full batches in input order (see :mod:`fastasd.scoring`)."""

    def __init__(self, sources: list[AudioSource], *, batch_size: int, num_workers: int, num_samples: int,
                 sample_rate: int, channel: int | None, pin_memory: bool, window: int | None = None):
        import torch

        self.sources = sources
        self.batch_size = batch_size
        self.decode_kwargs = dict(sample_rate=sample_rate, num_samples=num_samples, channel=channel)
        self.window = window or _WINDOW_BATCHES * batch_size
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
                    if reason is not None:  # decoded with a note (a short clip): scored all the same
                        batch.notes.append((src, reason))
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


class DetectorFailed(RuntimeError):
    """The detector fails on a clip of plain noise too: it, or its device, is broken, not the
    clips (the run stops; ``--resume`` goes on once it is fixed). Raised from the error."""


# --------------------------------------------------------------------------- running a detector


def _scored_batches(detector, todo: list[AudioSource], *, batch_size: int, num_workers: int | None,
                    bf16: bool) -> Iterator[tuple[list[dict], list[tuple[AudioSource, str]], list[tuple[AudioSource, str]]]]:
    """Run the pipeline on ``todo``: per batch, ``(records, [(source, reason) not scored],
    [(source, note) scored with a note])``.

    Whatever one clip does, it ends in ``records`` or in the reasons: a clip that does not decode
    comes with the decoder's reason, and the model's failures are isolated per clip
    (:func:`_score_clips`). The one loop of decoding and scoring that :func:`score_inputs` and
    :func:`watch_inputs` share; the pipeline is closed when the generator ends or is closed."""
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
            records, failed, scored = [], list(batch.errors), set()
            if batch.sources:
                x = pipeline.buffers[batch.buffer][: len(batch.sources)]
                if device.type != "cpu":
                    x = x.to(device, non_blocking=True)
                outcomes = _score_clips(detector, x, batch.sources, bf16)
                # The buffer may be refilled as soon as the scores are back (they are on the host).
                pipeline.release(batch)
                for src, outcome in zip(batch.sources, outcomes):
                    if isinstance(outcome, str):
                        failed.append((src, outcome))
                        continue
                    score, dec = outcome
                    scored.add(id(src))
                    records.append({
                        "file": text_name(src.name), "file_name": text_name(src.file_name),
                        "machine_type": src.machine_type, "section": src.section, "domain": src.domain,
                        "label": src.label, "score": score, "decision": dec,
                    })
            yield records, failed, [(src, note) for src, note in batch.notes if id(src) in scored]
    finally:
        pipeline.close()


# --------------------------------------------------------------------------- one clip's failure


def _score_clips(detector, x, sources: list[AudioSource], bf16: bool) -> list[tuple[float, int] | str]:
    """Per clip of the batch ``x``: ``(score, decision)``, or the reason it is not scored.

    The batch is scored at once; if the detector raises on it (one clip's extreme samples
    overflow to non-finite embeddings, say), each clip is scored alone, so only the clips it
    fails on are reported, with the error. A non-finite score is a failure, never a decision.
    When a clip failed, the detector is tried on a clip of plain noise
    (:func:`_check_detector_works`): if that fails too, the detector or its device is broken, not
    the clips, and the error is raised, so nothing of this batch is written and ``--resume``
    scores it again."""
    batch_error = None
    try:
        outcomes = _outcomes(detector, x, sources, bf16)
    except Exception as e:
        batch_error = e
        if len(sources) == 1:
            outcomes = [_failure(e, x[0])]
        else:
            outcomes = []
            for k in range(len(sources)):
                try:
                    outcomes += _outcomes(detector, x[k:k + 1], sources[k:k + 1], bf16)
                except Exception as clip_error:
                    outcomes.append(_failure(clip_error, x[k]))
    failed = [src for src, o in zip(sources, outcomes) if isinstance(o, str)]
    if failed:
        _check_detector_works(detector, failed[0], bf16, batch_error)
    return outcomes


def _outcomes(detector, x, sources: list[AudioSource], bf16: bool) -> list[tuple[float, int] | str]:
    scores, decisions = detector.score_waveforms(x, [s.machine_type for s in sources],
                                                 [s.section for s in sources], bf16=bf16)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    decisions = np.asarray(decisions).reshape(-1)
    if len(scores) != len(sources) or len(decisions) != len(sources):
        raise ValueError(f"the detector returned {len(scores)} scores and {len(decisions)} decisions "
                         f"for {len(sources)} clips")
    return [(float(sc), int(dec)) if np.isfinite(sc) else f"the score is not finite ({sc}): not scored"
            for sc, dec in zip(scores, decisions)]


def _failure(error: Exception, waveform) -> str:
    """The reason of a clip the detector failed on: the error, and the clip's peak when its
    samples lie far outside [-1, 1] (the usual cause: a float file with absurd values)."""
    reason = f"scoring failed ({_one_line(error)})"
    try:
        peak = float(waveform.abs().max())
    except Exception:  # the waveform's peak is only a hint
        return reason
    return reason + (f"; its samples reach {peak:.3g}" if peak > 1.0 else "")


def _check_detector_works(detector, src: AudioSource, bf16: bool, error: Exception | None) -> None:
    """Score a clip of plain noise (seeded, 0.1 RMS) in ``src``'s section; if the detector fails
    on it too, raise :class:`DetectorFailed` from ``error`` (the batch's error, if any)."""
    import torch

    noise = 0.1 * np.random.default_rng(0).standard_normal(int(detector.num_samples))
    try:
        scores, _ = detector.score_waveforms(torch.from_numpy(noise.astype(np.float32))[None],
                                             [src.machine_type], [src.section], bf16=bf16)
        problem = None if np.isfinite(np.asarray(scores, dtype=np.float64)).all() else "its score is not finite"
    except Exception as e:
        problem = _one_line(e)
    if problem is None:
        return  # the detector works: the failures are the clips'
    what = _one_line(error) if error is not None else "non-finite scores"
    raise DetectorFailed(f"the detector fails on the clips and on a clip of plain noise too ({what}; on the "
                         f"noise: {problem}): it, or its device, is broken; the batch in flight is not "
                         "written (--resume scores it again)") from error


def _one_line(error: Exception) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


def _device_of(detector):
    import torch

    return torch.device(getattr(detector, "device", "cpu"))


def _channel_of(detector) -> int | None:
    config = getattr(detector, "config", None)
    return getattr(config, "channel", None)


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
