"""The decode/batch pipeline of a scoring run: a feeder thread, decode worker processes (or a
thread) and a batcher thread that hand the model full batches in input order, and the loop that
runs a detector on them (see "Pipeline" in :mod:`fastasd.scoring`).
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field

from fastasd.data.inputs import AudioSource, decode_source, iter_payloads, warm_up

_N_BUFFERS = 3  # batch buffers: one in the model, one being filled, one spare


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


# --------------------------------------------------------------------------- running a detector


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
