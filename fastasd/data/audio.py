"""Audio loading: any file soundfile reads -> mono float32 at the model's sample rate.

Multi-channel audio is averaged to mono (or one channel is picked); another sample rate is
resampled with a polyphase filter (:func:`scipy.signal.resample_poly`); the length is fitted by
cropping from the start or zero-padding at the end. Every failure (missing, empty, corrupt,
unreadable file, wrong rate with resampling off, bad channel) is an :class:`AudioError` whose
message begins with the file's name, so a batch reader can skip the file and say why.
"""
from __future__ import annotations

import logging
import math
import os
import threading

import numpy as np
import soundfile as sf

logger = logging.getLogger(__name__)

_resample_logged: set[int] = set()
_resample_lock = threading.Lock()


class AudioError(Exception):
    """A file that cannot be turned into audio. ``str(e) == f"{name}: {reason}"``."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason

    def __reduce__(self):
        # Keep the exception picklable (process pools) despite the two-argument constructor.
        return (type(self), (self.name, self.reason))


def fit_length(x: np.ndarray, num_samples: int) -> np.ndarray:
    """Crop (keep the start) or zero-pad (at the end) the last axis of ``x`` to ``num_samples``.

    Returns ``x`` itself when it already has that length, else a new array of the same dtype.
    """
    if num_samples < 0:
        raise ValueError(f"fit_length: num_samples must be >= 0, got {num_samples}")
    n = x.shape[-1]
    if n == num_samples:
        return x
    if n > num_samples:
        return x[..., :num_samples].copy()
    pad = [(0, 0)] * (x.ndim - 1) + [(0, num_samples - n)]
    return np.pad(x, pad)


def _source_name(source, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return str(getattr(source, "name", "<audio stream>"))


def load_audio(
    source,
    *,
    sample_rate: int = 16000,
    num_samples: int | None = None,
    channel: int | None = None,
    resample: bool = True,
    name: str | None = None,
) -> np.ndarray:
    """Read an audio file as a mono float32 waveform.

    Args:
        source: a path, or a binary file-like object (e.g. an archive member).
        sample_rate: the rate (Hz) the result must have.
        num_samples: if given, crop from the start / zero-pad at the end to this many samples
            (after resampling).
        channel: pick this channel (0-based) instead of averaging all channels.
        resample: resample audio at another rate; if False such a file is an error.
        name: the name used in messages (default: the path, or the file object's ``name``).

    Returns:
        1-D float32 array, values in the file's scale (about [-1, 1] for PCM).

    Raises:
        AudioError: naming the file, when it is missing, empty, corrupt, unreadable, has
            non-finite samples, another rate with ``resample=False``, or no channel ``channel``.
    """
    label = _source_name(source, name)
    if sample_rate <= 0:
        raise ValueError(f"load_audio: sample_rate must be positive, got {sample_rate}")
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise AudioError(label, "file not found")
        if os.path.getsize(source) == 0:
            raise AudioError(label, "empty file (0 bytes)")
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile reports corrupt/unsupported/empty files in many ways
        reason = str(e).strip() or type(e).__name__
        raise AudioError(label, f"cannot read audio ({reason})") from e
    if data.shape[0] == 0:
        raise AudioError(label, "no audio frames (empty file)")

    n_channels = data.shape[1]
    if channel is not None:
        if not 0 <= channel < n_channels:
            raise AudioError(label, f"channel {channel} out of range for {n_channels}-channel audio")
        x = data[:, channel]
    elif n_channels == 1:
        x = data[:, 0]
    else:
        x = data.mean(axis=1, dtype=np.float32)
    if not np.isfinite(x).all():
        raise AudioError(label, "contains NaN or infinite samples")

    if rate != sample_rate:
        if not resample:
            raise AudioError(label, f"sample rate {rate} Hz, expected {sample_rate} Hz (resampling off)")
        with _resample_lock:
            first = rate not in _resample_logged
            _resample_logged.add(rate)
        if first:
            logger.warning("resampling %d Hz audio to %d Hz (first such file: %s)", rate, sample_rate, label)
        g = math.gcd(rate, sample_rate)
        # Imported here: scipy.signal costs ~2 s of start-up in every decode worker otherwise.
        from scipy.signal import resample_poly

        x = resample_poly(x, sample_rate // g, rate // g).astype(np.float32, copy=False)

    if num_samples is not None:
        x = fit_length(x, num_samples)
    return np.ascontiguousarray(x, dtype=np.float32)
