"""Training under ``torchrun``: process group, device, failure detection and the batch split.

Two modes (``fastasd.train(..., data_parallel=...)`` / ``fastasd train [--data-parallel]``):

* **Ensemble members across ranks** (default): rank ``r`` of ``W`` trains members
  ``r, r + W, ...`` with the seeds they get in one process (``config.seed + member``); rank 0
  receives every member's weights, fits the backends and writes the model. Exactly the
  single-process result (tested on CPU).
* **Data-parallel** (:func:`mirrored_positions`, used by :func:`fastasd.training.train_model`): one
  member at a time, PyTorch ``DistributedDataParallel``; every global batch of ``batch_size``
  clips is split over the ranks.

:func:`setup` initializes the process group from torchrun's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): NCCL with ``cuda:LOCAL_RANK``
when CUDA is used (``CUDA_VISIBLE_DEVICES`` decides which GPUs are there; a process that sees
a single GPU uses it), gloo on CPU. Every collective times out after ``FASTASD_DIST_TIMEOUT``
seconds (default 1800).

Failures: a rank whose training raises posts the error to the rendezvous store; a rank that
waits for the others (the ensemble mode, where ranks finish at different times, and the final
"model saved" wait) polls the store and raises ``RuntimeError`` naming the failed rank and its
error. Every rank also sends a heartbeat every 2 s; a peer silent for
``FASTASD_DIST_HEARTBEAT_TIMEOUT`` seconds (default 120: killed, crashed, node lost) fails the
waiters with a message naming it. Under torchrun the agent also stops the whole job when a worker
exits with an error.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
import torch.distributed as dist

logger = logging.getLogger("fastasd.distributed")  # the name its log lines always had

__all__ = ["DistContext", "launched", "setup", "pick_device", "mirrored_positions",
           "MirroredBatchSampler", "broadcast_tensors", "broadcast_json", "all_equal",
           "average_batchnorm_statistics"]

_TIMEOUT_ENV = "FASTASD_DIST_TIMEOUT"
_HEARTBEAT_ENV = "FASTASD_DIST_HEARTBEAT_TIMEOUT"
_HEARTBEAT_INTERVAL = 2.0


def _seconds(env: str, default: float) -> float:
    text = os.environ.get(env)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{env}={text!r}: must be a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{env}={text!r}: must be > 0")
    return value


def launched() -> bool:
    """True when this process is one of several started by ``torchrun`` (``WORLD_SIZE > 1``)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def pick_device(spec, local_rank: int) -> torch.device:
    """The device of a torchrun worker: ``cuda:LOCAL_RANK`` for ``"auto"`` (when CUDA is
    available) or ``"cuda"``; an explicit index or ``"cpu"`` is kept. A process that sees one
    GPU only (``CUDA_VISIBLE_DEVICES`` set per rank) uses it."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    if spec in (None, "auto"):
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(spec)
    if dev.type != "cuda" or dev.index is not None:
        return dev
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} requested but CUDA is not available")
    count = torch.cuda.device_count()
    if local_rank < count:
        return torch.device("cuda", local_rank)
    if count == 1:
        return torch.device("cuda", 0)
    raise RuntimeError(f"LOCAL_RANK={local_rank} but this process sees {count} GPUs "
                       f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); "
                       f"start at most {count} processes per node")


@dataclass
class DistContext:
    """This process's place in a torchrun job (from :func:`setup`)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    owns_group: bool
    _store: object = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints of shared state, the model and the progress bar."""
        return self.rank == 0

    # ---------------------------------------------------------------- failure detection
    def _heartbeat(self) -> None:
        while not self._stop.wait(_HEARTBEAT_INTERVAL):
            try:
                self._store.add(f"alive/{self.rank}", 1)
            except Exception:  # the store is gone: the job is ending
                return

    def fail(self, error: BaseException | str) -> None:
        """Tell the other ranks that this one failed (they raise when they next wait)."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        try:
            self._store.set(f"failed/{self.rank}", text[:2000])
        except Exception:  # pragma: no cover - the store itself is gone
            pass

    def done(self, phase: str) -> None:
        """Mark ``phase`` finished on this rank (see :meth:`wait`)."""
        self._store.set(f"{phase}/{self.rank}", "1")

    def wait(self, phase: str, what: str, ranks: Sequence[int] | None = None) -> None:
        """Block until ``ranks`` (default: all) marked ``phase`` done. Raises ``RuntimeError``
        naming a rank that failed or whose heartbeat stopped. Waiting itself has no time limit:
        peers may train much longer (an ensemble whose size the world size does not divide)."""
        stale = _seconds(_HEARTBEAT_ENV, 120.0)
        ranks = [r for r in (range(self.world_size) if ranks is None else ranks) if r != self.rank]
        seen = {r: (-1, time.monotonic()) for r in ranks}
        while True:
            for r in range(self.world_size):
                if r != self.rank and self._store.check([f"failed/{r}"]):
                    msg = self._store.get(f"failed/{r}").decode("utf-8", "replace")
                    raise RuntimeError(f"rank {r} of {self.world_size} failed ({msg}); "
                                       f"rank {self.rank} stops too")
            pending = [r for r in ranks if not self._store.check([f"{phase}/{r}"])]
            if not pending:
                return
            now = time.monotonic()
            for r in pending:
                count = self._store.add(f"alive/{r}", 0)
                if count != seen[r][0]:
                    seen[r] = (count, now)
                elif now - seen[r][1] > stale:
                    raise RuntimeError(
                        f"rank {r} of {self.world_size} sent no heartbeat for {stale:.0f} s while "
                        f"rank {self.rank} waited for it to finish {what}: it died or hangs (see "
                        f"its output; {_HEARTBEAT_ENV} sets this limit)")
            time.sleep(_HEARTBEAT_INTERVAL / 2)

    def close(self) -> None:
        """Stop the heartbeat and destroy the process group if :func:`setup` created it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup(device=None, config=None, *, single: bool = False) -> DistContext | None:
    """Join the torchrun job this process belongs to; None when not launched by torchrun.

    ``single``: also for a torchrun job of ONE process (``--nproc-per-node 1``), which is
    otherwise trained as without torchrun; data-parallel training asks for it, so that its
    NCCL, DDP and SyncBatchNorm path runs (and can be checked) on a machine with one GPU.

    ``device``/``config.device`` as in :func:`fastasd.training.resolve_device`, made per rank by
    :func:`pick_device`. The process group (NCCL for CUDA, gloo otherwise) is created with the
    ``FASTASD_DIST_TIMEOUT`` timeout unless the caller already created one (then it is used
    as is and left open)."""
    if not (launched() or (single and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ)):
        return None
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    spec = device if device is not None else (config.device if config is not None else "auto")
    dev = pick_device(spec, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    timeout = datetime.timedelta(seconds=_seconds(_TIMEOUT_ENV, 1800.0))
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend, timeout=timeout, **kwargs)
    backend = dist.get_backend()
    if dev.type == "cuda" and backend != "nccl":
        logger.warning("rank %d: CUDA training over the %s backend (NCCL is faster)", rank, backend)
    # A client of the rendezvous store (torchrun's, or rank 0's for a plain env:// launch) for
    # the failure / heartbeat keys; namespaced per run and restart.
    base = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                         timeout=timeout)
    prefix = f"fastasd/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/" \
             f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    ctx = DistContext(rank, world, local_rank, dev, backend, owns, dist.PrefixStore(prefix, base))
    ctx._store.add(f"alive/{rank}", 1)
    ctx._thread = threading.Thread(target=ctx._heartbeat, name="fastasd-heartbeat", daemon=True)
    ctx._thread.start()
    logger.info("rank %d of %d (local rank %d): %s, backend %s", rank, world, local_rank, dev, backend)
    return ctx


# --------------------------------------------------------------------------- the batch split
def mirrored_positions(batch: int, rank: int, world: int) -> list[int]:
    """The positions of a global batch of ``batch`` clips that rank ``rank`` of ``world`` takes.

    Mixup pairs position ``p`` with ``batch - 1 - p`` (the batch reversed, as in one process),
    so the batch is split in such pairs: pair ``k`` = positions ``(k, batch - 1 - k)``,
    ``k < ceil(batch / 2)`` (the middle clip of an odd batch is its own partner), and rank
    ``r`` takes pairs ``r, r + world, ...``. Every rank then holds each of its clips' partners:
    the mixed batch is exactly the one-process mixed batch, with no clip loaded twice. Returned
    ascending.
    """
    pairs = range(rank, (batch + 1) // 2, world)
    return sorted({q for k in pairs for q in (k, batch - 1 - k)})


class MirroredBatchSampler(torch.utils.data.Sampler):
    """Batches of dataset indices for one rank: the ``sampler``'s order cut into global batches of
    ``batch_size`` (as ``DataLoader(batch_size=..., drop_last=False)`` does), of which this rank
    takes :func:`mirrored_positions`. A last global batch smaller than ``2 * world`` clips is
    dropped (some rank would get fewer than 2 clips, which BatchNorm cannot train on)."""

    def __init__(self, sampler, batch_size: int, rank: int, world: int):
        self.sampler, self.batch_size, self.rank, self.world = sampler, int(batch_size), rank, world

    def global_sizes(self) -> list[int]:
        """The sizes of the global batches of one epoch (the same on every rank)."""
        n, b = len(self.sampler), self.batch_size
        sizes = [b] * (n // b)
        if n % b >= 2 * self.world:
            sizes.append(n % b)
        return sizes

    def __iter__(self) -> Iterator[list[int]]:
        order = list(self.sampler)
        start = 0
        for size in self.global_sizes():
            chunk = order[start:start + size]
            start += size
            yield [chunk[p] for p in mirrored_positions(size, self.rank, self.world)]

    def __len__(self) -> int:
        return len(self.global_sizes())


# --------------------------------------------------------------------------- collectives
def broadcast_tensors(tensors: Sequence[torch.Tensor], src: int, device: torch.device) -> list[torch.Tensor]:
    """Broadcast ``tensors`` from rank ``src`` (every rank passes tensors of the same shapes and
    dtypes; their values matter on ``src`` only). Returns them on ``device``, in order."""
    out = []
    for t in tensors:
        t = t.detach().to(device).contiguous().clone()
        dist.broadcast(t, src)
        out.append(t)
    return out


def broadcast_json(obj, src: int, device: torch.device):
    """``obj`` of rank ``src`` (anything JSON can hold) on every rank; no pickle on the wire."""
    data = json.dumps(obj).encode("utf-8") if dist.get_rank() == src else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src)
    buf = torch.zeros(int(size), dtype=torch.uint8, device=device)
    if dist.get_rank() == src:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, src)
    return json.loads(bytes(buf.cpu().tolist()).decode("utf-8"))


def all_equal(values: Sequence[int], device: torch.device) -> list[list[int]] | None:
    """None if every rank passed the same integers, else every rank's values (rank order)."""
    t = torch.tensor(list(values), dtype=torch.int64, device=device)
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    rows = [p.tolist() for p in parts]
    return None if all(r == rows[0] for r in rows) else rows


@torch.no_grad()
def average_batchnorm_statistics(model: torch.nn.Module) -> None:
    """Replace every BatchNorm's running mean and variance by their mean over the ranks.

    Without ``SyncBatchNorm`` (CPU) each rank's running statistics follow its own share of the
    batches; their mean is the estimate from all of them (on CUDA, SyncBatchNorm keeps them
    equal and this is not needed)."""
    world = dist.get_world_size()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf.div_(world)
