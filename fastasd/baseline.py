"""A simple, training-free baseline: mean log-spectrum + nearest neighbour. Its command line
(:mod:`fastasd.cli.baseline`)::

    fastasd baseline DATA_ROOT --out DIR [--ground-truth GT] [--references all|source]

Per clip, the feature is the mean over frames of the log-magnitude STFT in dB
(``20 log10 |X|``; frames of 1024 samples, hop 512, periodic Hann window, no centering or padding,
as the system's frontend; 513 bins). The anomaly score of a test clip is the distance to the
NEAREST training clip of its section (source and target training clips together by default),
measured as the RMS difference in dB over the 513 bins (= Euclidean distance / sqrt(513)).
Higher = more anomalous.

Why Euclidean and not cosine: a dB spectrum has an arbitrary zero (0 dB = full scale), so the
angle between two dB vectors depends on that reference and on the overall level; the RMS dB
difference is the plain "how different do the spectra look" a listener would measure.

Decisions (for the DCASE decision files): 1 when the score exceeds the 90th percentile of the
section's training scores, each training clip scored leave-one-out (its distance to the nearest
OTHER training clip of the section; its distance to itself would be 0).

It sees only the average spectrum: anomalies that change it (an extra or missing harmonic,
clogging, leaks) are found, short transients and pure timing changes barely. Without a model of
the domain shift, target-domain normals (few references, other recording conditions) look
anomalous, which is the point of the paper's system.
"""
from __future__ import annotations

import logging
import sys
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)

N_FFT = 1024
HOP = 512
_FLOOR = 1e-10  # |X| floor before the log (-200 dB): digital silence stays finite


def clip_feature(waveform: np.ndarray, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """Mean over frames of the log-magnitude STFT of one clip.

    Args:
        waveform: 1-D float array (any length; shorter than ``n_fft`` is zero-padded to it).
        n_fft: frame length = DFT length (periodic Hann window), samples.
        hop: hop size, samples.

    Returns:
        float64 array of ``n_fft // 2 + 1`` values in dB (``20 log10 max(|X|, 1e-10)``, averaged
        over the ``1 + (N - n_fft) // hop`` frames).
    """
    x = np.asarray(waveform, dtype=np.float64).reshape(-1)
    if x.shape[0] < n_fft:
        x = np.pad(x, (0, n_fft - x.shape[0]))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    mag = np.abs(np.fft.rfft(frames * window, axis=1))
    return (20.0 * np.log10(np.maximum(mag, _FLOOR))).mean(axis=0)


def nearest_distance(queries: np.ndarray, refs: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """RMS difference (dB) of each query feature to its nearest reference feature.

    Args:
        queries: ``[N, F]`` features; refs: ``[M, F]`` features.
        exclude_self: queries ARE refs (same rows, same order): skip each row's own distance
            (leave-one-out); with a single reference the result is then NaN.

    Returns:
        ``[N]`` float64 distances, ``sqrt(mean_f (q_f - r_f)^2)`` minimised over the references.
    """
    q = np.asarray(queries, dtype=np.float64)
    r = np.asarray(refs, dtype=np.float64)
    # |q - r|^2 = |q|^2 + |r|^2 - 2 q.r, clamped at 0 against rounding.
    d2 = (q * q).sum(1)[:, None] + (r * r).sum(1)[None, :] - 2.0 * q @ r.T
    d2 = np.maximum(d2, 0.0) / q.shape[1]
    if exclude_self:
        np.fill_diagonal(d2, np.inf)
    best = d2.min(axis=1) if d2.shape[1] else np.full(q.shape[0], np.inf)
    return np.where(np.isfinite(best), np.sqrt(best), np.nan)


def baseline_scores(
    data_root,
    ground_truth=None,
    *,
    reference_domains: Sequence[str] = ("source", "target"),
    percentile: float = 90.0,
    progress: bool = False,
) -> list[dict]:
    """Score every test clip of a DCASE data set with the mean log-spectrum + nearest neighbour.

    Args:
        data_root: anything :func:`fastasd.data.layout.discover` accepts (a DCASE root, one
            machine-type folder, or a list of roots).
        ground_truth: root of the official ground-truth CSVs for unlabelled evaluation sets
            (passed to ``discover``), or None.
        reference_domains: training domains whose clips are the references of a section;
            ``("source",)`` gives the naive source-only variant.
        percentile: decision threshold = this percentile of the section's leave-one-out
            training scores.
        progress: tqdm progress bar on stderr while reading audio.

    Returns:
        One dict per test clip, sorted by (machine_type, section, file_name), with ``file_name``,
        ``machine_type``, ``section`` ("00"), ``domain`` and ``label`` (as discovered; "unknown"
        without ground truth), ``score`` (RMS dB distance to the nearest reference, higher = more
        anomalous), ``decision`` (0|1) and ``threshold`` (the section's threshold, dB).

    Raises:
        FileNotFoundError / ValueError: from ``discover``; ValueError naming the section when a
            section with test clips has no reference training clip;
        fastasd.data.audio.AudioError: naming a file that cannot be read.
    """
    from tqdm import tqdm

    from fastasd.data.audio import load_audio
    from fastasd.data.layout import discover

    reference_domains = tuple(reference_domains)
    bad = [d for d in reference_domains if d not in ("source", "target")]
    if bad or not reference_domains:
        raise ValueError(f"reference_domains: need 'source' and/or 'target', got {reference_domains!r}")
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile: need a value in [0, 100], got {percentile}")
    clips = discover(data_root, ground_truth=ground_truth)
    sections: dict[tuple[str, str], dict[str, list]] = {}
    for c in clips:
        sec = sections.setdefault((c.machine_type, c.section), {"train": [], "test": []})
        if c.split == "test" or c.domain in reference_domains:
            sec[c.split].append(c)
    missing = [f"{mt}/section_{s}" for (mt, s), v in sections.items() if v["test"] and not v["train"]]
    if missing:
        raise ValueError(f"{data_root}: no {'/'.join(reference_domains)} training clips for "
                         f"section(s) {', '.join(missing)}: nothing to compare the test clips with")

    needed = [c for v in sections.values() if v["test"] for c in v["train"] + v["test"]]
    feats: dict[str, np.ndarray] = {}
    for c in tqdm(needed, desc="baseline", unit="clip", disable=not progress, file=sys.stderr):
        feats[c.path] = clip_feature(load_audio(c.path))

    records: list[dict] = []
    for (mt, sec), v in sorted(sections.items()):
        if not v["test"]:
            continue
        refs = np.stack([feats[c.path] for c in v["train"]])
        test = np.stack([feats[c.path] for c in v["test"]])
        scores = nearest_distance(test, refs)
        train_scores = nearest_distance(refs, refs, exclude_self=True)
        train_scores = train_scores[np.isfinite(train_scores)]
        # One reference only: no leave-one-out score; flag nothing rather than everything.
        threshold = float(np.percentile(train_scores, percentile)) if train_scores.size else float("inf")
        for c, s in zip(v["test"], scores):
            records.append({"file_name": c.file_name, "machine_type": mt, "section": sec,
                            "domain": c.domain, "label": c.label, "score": float(s),
                            "decision": int(s > threshold), "threshold": threshold})
    records.sort(key=lambda r: (r["machine_type"], r["section"], r["file_name"]))
    return records
