"""Reading clips for training and scoring.

:class:`ClipDataset` is a PyTorch dataset that streams waveforms from disk (memory bounded by
the batch, unless ``cache=True`` keeps decoded audio). :func:`iter_audio_batches` reads clips in
order, in fixed-size batches, optionally decoding in a thread or process pool, and skips files
that cannot be read (recording why), so one bad file does not stop the scoring of thousands.
Both go through :func:`read_clip`, the one place where a clip becomes a waveform.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from typing import Union

import numpy as np
import torch
from tqdm.auto import tqdm

from fastasd.data.audio import AudioError, load_audio
from fastasd.data.labels import ClassEncoder
from fastasd.data.layout import Clip

logger = logging.getLogger(__name__)

ClipLike = Union[Clip, str, os.PathLike]


def clip_path(clip: ClipLike) -> str:
    """The file path of a :class:`Clip`, or the path itself."""
    return clip.path if isinstance(clip, Clip) else os.fspath(clip)


def read_clip(
    clip: ClipLike,
    num_samples: int | None,
    *,
    sample_rate: int = 16000,
    channel: int | None = None,
    resample: bool = True,
) -> np.ndarray:
    """Decode one clip (a :class:`Clip` or a path) to a float32 waveform; see :func:`load_audio`.

    Raises:
        AudioError: naming the file, when it cannot be read.
    """
    return load_audio(
        clip_path(clip),
        sample_rate=sample_rate,
        num_samples=num_samples,
        channel=channel,
        resample=resample,
    )


class ClipDataset(torch.utils.data.Dataset):
    """Waveforms of clips with their auxiliary class, read from disk on access.

    Args:
        clips: the clips (a list is kept; nothing is read until indexed).
        num_samples: waveform length; longer clips are cropped, shorter zero-padded.
        sample_rate: rate (Hz) to return; other rates are resampled unless ``resample=False``.
        encoder: maps clips to class indices; all clips must be of a known class (KeyError
            otherwise, at construction). Without it the target is -1.
        cache: keep each decoded waveform in memory after its first read (per process: each
            DataLoader worker holds its own cache). Costs ``4 * num_samples`` bytes per clip.
        channel: pick this channel instead of averaging channels.
        resample: see :func:`load_audio`.

    ``dataset[i]`` is ``(float32 tensor [num_samples], class index or -1)``. A file that cannot
    be read raises :class:`AudioError` naming it.
    """

    def __init__(
        self,
        clips: Iterable[ClipLike],
        num_samples: int,
        *,
        sample_rate: int = 16000,
        encoder: ClassEncoder | None = None,
        cache: bool = False,
        channel: int | None = None,
        resample: bool = True,
    ) -> None:
        if num_samples <= 0:
            raise ValueError(f"ClipDataset: num_samples must be positive, got {num_samples}")
        self.clips = list(clips)
        self.num_samples = int(num_samples)
        self.sample_rate = sample_rate
        self.channel = channel
        self.resample = resample
        if encoder is not None:
            self.targets = encoder.transform(self.clips)
        else:
            self.targets = np.full(len(self.clips), -1, dtype=np.int64)
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        i = range(len(self.clips))[i]  # negative indices; IndexError when out of range
        x = self._cache.get(i) if self._cache is not None else None
        if x is None:
            x = read_clip(
                self.clips[i],
                self.num_samples,
                sample_rate=self.sample_rate,
                channel=self.channel,
                resample=self.resample,
            )
            if self._cache is not None:
                self._cache[i] = x
        if self._cache is not None:
            x = x.copy()  # the caller may modify the tensor in place; the cache must not change
        return torch.from_numpy(x), int(self.targets[i])


def _decode(path: str, **kwargs) -> tuple[np.ndarray | None, str | None]:
    """(waveform, None) or (None, reason): errors travel as values, so pools can return them."""
    try:
        return read_clip(path, **kwargs), None
    except AudioError as e:
        return None, e.reason


def _ordered_map(fn: Callable, items: Sequence, num_workers: int, executor: str, max_in_flight: int) -> Iterator:
    """``map(fn, items)`` in order, with at most ``max_in_flight`` results pending in a pool."""
    if num_workers <= 0:
        yield from map(fn, items)
        return
    pool: Executor = (ThreadPoolExecutor if executor == "thread" else ProcessPoolExecutor)(num_workers)
    try:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= max_in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def iter_audio_batches(
    clips: Sequence[ClipLike],
    batch_size: int,
    num_samples: int,
    *,
    sample_rate: int = 16000,
    channel: int | None = None,
    resample: bool = True,
    errors: list | None = None,
    num_workers: int = 0,
    progress: bool = False,
    executor: str = "thread",
) -> Iterator[tuple[list[int], np.ndarray]]:
    """Read clips in order as batches of waveforms, skipping files that cannot be read.

    Args:
        clips: :class:`Clip` objects or paths.
        batch_size: clips per batch; every batch but the last is full (bad files are skipped,
            not left as holes).
        num_samples: waveform length (crop / zero-pad).
        sample_rate, channel, resample: see :func:`load_audio`.
        errors: if given, ``(path, reason)`` is appended for every skipped file.
        num_workers: 0 decodes in this thread; N > 0 uses a pool of N workers (order is kept).
        progress: show a tqdm progress bar on stderr.
        executor: "thread" (default; libsndfile and the resampler release the GIL for most of
            the work) or "process".

    Yields:
        ``(indices into clips, float32 array [b, num_samples])``.
    """
    if batch_size <= 0:
        raise ValueError(f"iter_audio_batches: batch_size must be positive, got {batch_size}")
    if num_samples <= 0:
        raise ValueError(f"iter_audio_batches: num_samples must be positive, got {num_samples}")
    if executor not in ("thread", "process"):
        raise ValueError(f"iter_audio_batches: executor must be 'thread' or 'process', got {executor!r}")
    paths = [clip_path(c) for c in clips]
    fn = partial(_decode, num_samples=num_samples, sample_rate=sample_rate, channel=channel, resample=resample)
    max_in_flight = max(batch_size, 2 * num_workers)

    indices: list[int] = []
    waves: list[np.ndarray] = []
    n_bad = 0
    bar = tqdm(total=len(paths), disable=not progress, unit="clip", desc="reading audio", leave=False)
    try:
        for i, (x, reason) in enumerate(_ordered_map(fn, paths, num_workers, executor, max_in_flight)):
            bar.update(1)
            if x is None:
                n_bad += 1
                logger.warning("skipping %s: %s", paths[i], reason)
                if errors is not None:
                    errors.append((paths[i], reason))
                continue
            indices.append(i)
            waves.append(x)
            if len(indices) == batch_size:
                yield indices, np.stack(waves)
                indices, waves = [], []
        if indices:
            yield indices, np.stack(waves)
    finally:
        bar.close()
    if n_bad:
        logger.warning("skipped %d of %d audio files that could not be read", n_bad, len(paths))
