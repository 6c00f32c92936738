"""Clip lengths against the model's input length: durations from file headers (nothing is
decoded), the most common one (``clip_seconds="auto"``), and the once-per-run line saying how many
clips are cropped or zero-padded and by how much. Imports no torch (the ONNX scoring path uses it).
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence

logger = logging.getLogger(__name__)


def header_seconds(clips: Iterable) -> list[float | None]:
    """Each clip's (a :class:`fastasd.data.layout.Clip` or a path) duration in seconds from its
    file header alone (nothing is decoded); None where the header cannot be read (that clip's
    error is reported when it is decoded)."""
    import soundfile as sf

    out: list[float | None] = []
    for c in clips:
        try:
            info = sf.info(c.path if hasattr(c, "path") else os.fspath(c))
        except Exception:  # libsndfile fails in many ways; the decoder reports them later
            out.append(None)
            continue
        out.append(info.frames / info.samplerate if info.samplerate > 0 else None)
    return out


def most_common_seconds(seconds: Iterable[float | None]) -> float | None:
    """The most common duration (in milliseconds' precision; a tie goes to the longer one), or
    None when no duration is known (``clip_seconds="auto"``)."""
    counts = Counter(round(s, 3) for s in seconds if s)
    return max(counts, key=lambda s: (counts[s], s)) if counts else None


def log_length_fit(clips: Sequence, clip_seconds: float, what: str,
                   log: logging.Logger = logger, hint: str = "") -> None:
    """Log (a WARNING) :func:`length_fit_message` for the clips' header durations, if any,
    followed by ``hint``."""
    text = length_fit_message(header_seconds(clips), clip_seconds, what)
    if text:
        log.warning("%s%s", text, hint)


def length_fit_message(seconds: Sequence[float | None], clip_seconds: float, what: str) -> str | None:
    """One line saying how many of the clips of durations ``seconds`` are cropped or zero-padded
    to ``clip_seconds``, by how much, and which lengths they have; None when all fit (to the
    millisecond) or no duration is known."""
    known = [s for s in seconds if s is not None]
    longer = [s - clip_seconds for s in known if s > clip_seconds + 1e-3]
    shorter = [clip_seconds - s for s in known if s < clip_seconds - 1e-3]
    if not longer and not shorter:
        return None

    def by(diffs: list[float]) -> str:
        lo, hi = min(diffs), max(diffs)
        return f"{lo:.2f} s" if hi - lo < 0.005 else f"{lo:.2f} to {hi:.2f} s"

    parts = []
    if longer:
        parts.append(f"{len(longer)} cropped (by {by(longer)}; their end is not used)")
    if shorter:
        parts.append(f"{len(shorter)} zero-padded (by {by(shorter)})")
    lengths = Counter(round(s, 2) for s in known).most_common()
    shown = ", ".join(f"{s:g} s: {n}" for s, n in lengths[:4]) + (", ..." if len(lengths) > 4 else "")
    return (f"{what}: {' and '.join(parts)} of {len(known)} to the model's {clip_seconds:g}-s "
            f"input (lengths {shown})")

