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
import re
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
            (after resampling). Only the frames these samples need are decoded (plus the
            resampler's filter margin): the result is the same as decoding the whole file.
        channel: pick this channel (0-based) instead of averaging all channels.
        resample: resample audio at another rate; if False such a file is an error.
        name: the name used in messages (default: the path, or the file object's ``name``).

    Returns:
        1-D float32 array, values in the file's scale (about [-1, 1] for PCM).

    Raises:
        AudioError: naming the file, when it is missing, empty, corrupt, unreadable, has
            non-finite samples, a sample rate outside :data:`MIN_RATE` .. :data:`MAX_RATE` Hz,
            another rate with ``resample=False``, no channel ``channel``, or would decode to more
            than :func:`max_decoded_bytes`.
    """
    return decode_audio(source, sample_rate=sample_rate, num_samples=num_samples, channel=channel,
                        resample=resample, name=name)[0]


def decode_audio(
    source,
    *,
    sample_rate: int = 16000,
    num_samples: int | None = None,
    channel: int | None = None,
    resample: bool = True,
    name: str | None = None,
) -> tuple[np.ndarray, str | None]:
    """:func:`load_audio` (same arguments, same waveform and errors), plus a note when the clip is
    far shorter than ``num_samples``: ``(waveform, note or None)``.

    The note says how much audio there was, and that the file is truncated when its header
    declares more data than the file holds (a copy cut short). It is given when the audio, at
    ``sample_rate``, is shorter than ``num_samples`` and either the file is truncated or the
    audio is shorter than half of ``num_samples``: the clip is then mostly zero padding.
    """
    label = _source_name(source, name)
    if sample_rate <= 0:
        raise ValueError(f"load_audio: sample_rate must be positive, got {sample_rate}")
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise AudioError(label, "file not found")
        if os.path.getsize(source) == 0:
            raise AudioError(label, "empty file (0 bytes)")
    if isinstance(source, (str, os.PathLike)) and os.name != "nt" and not _is_utf8(os.fspath(source)):
        source = os.fsencode(source)  # soundfile encodes a str as UTF-8: a Latin-1 name opens as bytes
    try:
        with sf.SoundFile(source) as f:
            rate, n_channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
            _check_rate(label, rate, sample_rate, resample)
            if num_samples is not None:
                frames = min(frames, _frames_needed(num_samples, rate, sample_rate))
            _check_decoded_size(label, frames, n_channels, rate, sample_rate)
            data = f.read(frames, dtype="float32", always_2d=True)
            truncated = _truncation(f) if num_samples is not None else None
    except AudioError:
        raise
    except Exception as e:  # libsndfile reports corrupt/unsupported/empty files in many ways
        reason = str(e).strip() or type(e).__name__
        raise AudioError(label, f"cannot read audio ({reason})") from e
    if data.shape[0] == 0:
        raise AudioError(label, "no audio frames (empty file)")

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
        with _resample_lock:
            first = rate not in _resample_logged
            _resample_logged.add(rate)
        if first:
            logger.warning("resampling %d Hz audio to %d Hz (first such file: %s)", rate, sample_rate, label)
        g = math.gcd(rate, sample_rate)
        # Imported here: scipy.signal costs ~2 s of start-up in every decode worker otherwise.
        from scipy.signal import resample_poly

        x = resample_poly(x, sample_rate // g, rate // g).astype(np.float32, copy=False)

    note = None
    if num_samples is not None:
        if num_samples > 0 and x.shape[0] < num_samples and (truncated or x.shape[0] < num_samples / 2):
            note = (f"short clip: {x.shape[0] / sample_rate:.2f} s of audio where the model takes "
                    f"{num_samples / sample_rate:.2f} s (the rest is zero padding)")
            if truncated:
                note += f"; the file is truncated ({truncated})"
        x = fit_length(x, num_samples)
    return np.ascontiguousarray(x, dtype=np.float32), note


#: Sample rates accepted (Hz): outside this range a file is refused, not resampled (a header that
#: declares 1 Hz would otherwise ask to upsample every sample 16,000 times).
MIN_RATE, MAX_RATE = 1000, 768000
_MAX_FILTER_TAPS = 4_000_000  # the polyphase filter of an odd rate ratio (scipy: 20 * max(up, down) taps)
_DATA_SHOULD_BE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def max_decoded_bytes() -> int:
    """Largest decoded copy of one file (float32 frames x channels, and the resampled result):
    ``FASTASD_MAX_DECODED_BYTES``, default 1 GiB. A larger one is refused with the reason, so a
    small file whose header declares an absurd length or channel count cannot exhaust memory."""
    return int(os.environ.get("FASTASD_MAX_DECODED_BYTES", str(1 << 30)))


def _check_rate(label: str, rate: int, sample_rate: int, resample: bool) -> None:
    if rate == sample_rate:
        return
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(label, f"sample rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz (not read)")
    if not resample:
        raise AudioError(label, f"sample rate {rate} Hz, expected {sample_rate} Hz (resampling off)")
    g = math.gcd(rate, sample_rate)
    if 20 * max(rate, sample_rate) // g > _MAX_FILTER_TAPS:
        raise AudioError(label, f"sample rate {rate} Hz cannot be resampled to {sample_rate} Hz with a "
                                f"filter of at most {_MAX_FILTER_TAPS} taps (the rates share no large divisor)")


def _frames_needed(num_samples: int, rate: int, sample_rate: int) -> int:
    """Input frames that the first ``num_samples`` output samples depend on, resampled as
    :func:`scipy.signal.resample_poly` resamples (its default filter of ``20 max(up, down) + 1``
    taps, centred): the prefix of the file gives exactly the same first samples as the whole."""
    if rate == sample_rate:
        return num_samples
    g = math.gcd(rate, sample_rate)
    up, down = sample_rate // g, rate // g
    half_len = 10 * max(up, down)
    n_pre_remove = (half_len + down - half_len % down) // down
    return (max(num_samples, 1) - 1 + n_pre_remove) * down // up + 2  # + 1 past the last, + 1 spare


def _check_decoded_size(label: str, frames: int, channels: int, rate: int, sample_rate: int) -> None:
    limit = max_decoded_bytes()
    decoded = frames * channels * 4
    resampled = 0 if rate == sample_rate else -(-frames * sample_rate // rate) * 8  # float64 in scipy
    if max(decoded, resampled) > limit:
        raise AudioError(label, f"{frames} frames x {channels} channels at {rate} Hz would decode to "
                                f"{max(decoded, resampled) / 2**20:.0f} MiB, over FASTASD_MAX_DECODED_BYTES="
                                f"{limit} (not read)")


def _is_utf8(path) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: bytes the file system's name had that are not UTF-8
        return False
    return True


def _truncation(f: sf.SoundFile) -> str | None:
    """What libsndfile says when the file holds less audio data than its header declares."""
    try:
        m = _DATA_SHOULD_BE.search(f.extra_info)
    except Exception:  # extra_info is informative only
        return None
    if m and int(m[2]) < int(m[1]):
        return f"its header declares {int(m[1])} bytes of audio data, the file holds {int(m[2])}"
    return None
