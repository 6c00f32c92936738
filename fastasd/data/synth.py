"""Synthetic machine sounds in the DCASE task 2 (2022) layout, for demos, tests and benchmarks.

``generate(out)`` writes a small *development set* (labelled names) and, with ``eval_copy=True``,
an *evaluation-style copy* of the same clips (unlabelled test names) with official ground truth::

    <out>/<machine_type>/attributes_<ss>.csv                     file_name,d1p,d1v,d2p,d2v
    <out>/<machine_type>/train/section_<ss>_<source|target>_train_normal_<nnnn>_<attrs>.wav
    <out>/<machine_type>/test/section_<ss>_<source|target>_test_<normal|anomaly>_<nnnn>_<attrs>.wav
    <out>/eval/<machine_type>/attributes_<ss>.csv                 (training rows only)
    <out>/eval/<machine_type>/train/<same names as the dev train files>
    <out>/eval/<machine_type>/test/section_<ss>_<nnnn>.wav        (shuffled: nnnn leaks nothing)
    <out>/eval_ground_truth/ground_truth_data/ground_truth_<mt>_section_<ss>_test.csv    name,0|1 (1 = anomaly)
    <out>/eval_ground_truth/ground_truth_domain/ground_truth_<mt>_section_<ss>_test.csv  name,0|1 (1 = target)
    <out>/synth_meta.csv      one row per test clip: labels, anomaly kind and severity, eval name
    <out>/synth_info.json     the parameters of the run (written first as "incomplete", last as "complete")

``<attrs>`` is ``<k1>_<v1>_<k2>_<v2>``, e.g. ``spd_1200_pres_2``. Audio: mono 16-bit PCM WAV.
``fastasd.data.layout.discover(<out>)`` finds the development set only (the machine folders of
``eval/`` sit one level deeper); use ``discover(<out>/eval, ground_truth=<out>/eval_ground_truth)``
for the evaluation copy. Test clips are a quarter each of source/target x normal/anomaly.

The physics (all vectorized numpy, no per-sample Python loops):

* Machine types: ``fan`` (shaft + blade-pass harmonics, aerodynamic noise; attributes speed,
  back pressure), ``pump`` (100 Hz motor hum, vane-pass harmonics, flow noise; speed, head),
  ``gearbox`` (gear-mesh harmonics with shaft-rate sidebands, load roughness; speed, weight),
  ``valve`` (open/close clicks exciting resonances, flow hiss while open; pattern, pressure),
  ``slider`` (stepper whine following a trapezoidal velocity profile, rail friction, end-stop
  clunks; velocity, acceleration), ``ToyCar`` (motor and gear whine, wheel rumble; speed, car).
* A *section* is one machine instance (its own harmonic profile, body resonances, tooth/blade
  counts) with its own kind of domain shift: section ``s`` shifts the speed-like attribute
  (``s % 3 == 0``), the load-like attribute (1) or both (2) to values unseen in the source domain.
  The target domain ALSO has other recording conditions: another microphone coloration (random
  biquad EQ), another SNR and another factory background (noise colour, distant hums, bangs).
* Factory background for every clip (normal or anomalous alike): pink/brown/bright coloured
  noise, distant machine hums with slow amplitude modulation, occasional transient bangs.
* Anomalies (test split only), one per anomalous clip, severity ``U(0.3, 1) * ANOMALY_GAIN``: bearing
  clicks (resonant impulse trains), rubbing (once-per-revolution noise bursts), imbalance
  (shaft-rate amplitude modulation), frequency wobble, an extra (non-harmonic) partial, a missing
  harmonic, clogging (spectral tilt), and valve/slider specific ones (missing or bouncing clicks,
  leak hiss, sluggish opening, backlash). Their strength was tuned so that the mean log-spectrum
  baseline (``fastasd.baseline``) is clearly above chance but far from perfect, and clearly worse
  on the target domain (``benchmarks/results/synth_baseline.md``).

Label regimes: :func:`label_regime` links a generated set into the labels of DCASE 2023-2025
(one section per machine type) or of a user without metadata (every machine its own type,
``noAttribute``), for studies of the auxiliary classes (``benchmarks/studies.py labels``).

Determinism: every clip has its own ``numpy.random.Generator`` seeded by
``(seed, crc32(machine_type), section, split, domain, label, index)``, instance and domain
parameters by ``(seed, crc32(machine_type), section, purpose)``; so the same arguments give
byte-identical files and changing the sizes does not change the other files.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import shutil
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import scipy.signal
import soundfile as sf

from fastasd._io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

ALL_MACHINE_TYPES = ("fan", "pump", "gearbox", "valve", "slider", "ToyCar")
DEFAULT_MACHINE_TYPES = ("fan", "pump", "gearbox", "valve")
SHIFT_KINDS = ("speed", "load", "both")  # section s gets SHIFT_KINDS[s % 3]
INFO_FILE = "synth_info.json"
META_FILE = "synth_meta.csv"
EVAL_DIR = "eval"
GT_DIR = "eval_ground_truth"

# Strength multiplier of all anomalies: severity = Uniform(0.3, 1) * ANOMALY_GAIN. 1.25 was tuned so
# that the baseline's official score lands near 0.65 (benchmarks/results/synth_baseline.md).
ANOMALY_GAIN = 1.25
# Output level of a typical clip, dBFS RMS (leaves > 20 dB headroom for bangs and clicks).
_OUTPUT_DBFS = -30.0


# --------------------------------------------------------------------------- attributes
@dataclass(frozen=True)
class _Attr:
    """One attribute: its key, source values, unseen target values and their physical numbers."""

    key: str
    source: tuple[str, ...]
    target: tuple[str, ...]
    numbers: dict  # value -> float (speed ratio for the speed-like attribute, load for the other)


def _speed(key, source, target, nominal):
    vals = source + target
    return _Attr(key, source, target, {v: float(v.rstrip("V")) / nominal for v in vals})


def _load(key, source, target, loads):
    return _Attr(key, source, target, dict(zip(source + target, loads)))


# (speed-like attribute, load-like attribute) per machine type. Target values are unseen in the
# source domain (the operating-condition half of the domain shift).
_ATTRS: dict[str, tuple[_Attr, _Attr]] = {
    "fan": (_speed("spd", ("900", "1050", "1200"), ("1500",), 1050.0),
            _load("pres", ("1", "2"), ("4",), (0.2, 0.45, 1.0))),
    "pump": (_speed("rpm", ("1200", "1500", "1800"), ("2400",), 1500.0),
             _load("head", ("10", "20"), ("40",), (0.2, 0.45, 1.0))),
    "gearbox": (_speed("spd", ("600", "900", "1200"), ("1700",), 900.0),
                _load("wt", ("0", "150"), ("400",), (0.1, 0.4, 1.0))),
    "valve": (_Attr("pat", ("00", "01", "02"), ("03",), {"00": 0, "01": 1, "02": 2, "03": 3}),
              _load("pres", ("2", "3"), ("6",), (0.3, 0.5, 1.0))),
    "slider": (_speed("vel", ("300", "500", "700"), ("1000",), 500.0),
               _load("acc", ("1", "2"), ("5",), (0.2, 0.4, 1.0))),
    "ToyCar": (_speed("spd", ("28V", "31V", "34V"), ("40V",), 31.0),
               _load("car", ("A1", "A2"), ("B1",), (0.2, 0.45, 1.0))),
}

# Valve patterns: (period in s, open fraction of the period).
_VALVE_PATTERNS = {0: (0.50, 0.50), 1: (0.80, 0.30), 2: (0.36, 0.60), 3: (1.10, 0.22)}

_ANOMALIES: dict[str, tuple[str, ...]] = {
    "fan": ("clicks", "imbalance", "rubbing", "clogging", "extra_partial"),
    "pump": ("clicks", "clogging", "extra_partial", "wobble", "missing_harmonic"),
    "gearbox": ("clicks", "extra_partial", "wobble", "missing_harmonic", "imbalance"),
    "valve": ("missing_click", "bounce", "leak", "sluggish"),
    "slider": ("rubbing", "clicks", "wobble", "backlash"),
    "ToyCar": ("clicks", "wobble", "extra_partial", "rubbing", "imbalance"),
}


def _combos(mt: str, shift: str, domain: str) -> list[tuple[str, str]]:
    """Attribute value pairs of a domain; the target shifts the attribute(s) named by ``shift``."""
    a1, a2 = _ATTRS[mt]
    if domain == "source":
        return [(v1, v2) for v1 in a1.source for v2 in a2.source]
    v1s = a1.target if shift in ("speed", "both") else a1.source
    v2s = a2.target if shift in ("load", "both") else a2.source
    return [(v1, v2) for v1 in v1s for v2 in v2s]


# --------------------------------------------------------------------------- seeding
def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _mt_id(mt: str) -> int:
    return zlib.crc32(mt.encode("utf-8"))


_SPLIT_ID = {"train": 0, "test": 1}
_DOMAIN_ID = {"source": 0, "target": 1}
_LABEL_ID = {"normal": 0, "anomaly": 1}
_PURPOSE_INSTANCE, _PURPOSE_DOMAIN, _PURPOSE_SHUFFLE = 100, 200, 400


# --------------------------------------------------------------------------- DSP helpers
def _db(x):
    return 10.0 ** (np.asarray(x, dtype=np.float64) / 20.0)


def _harmonics(phase: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """``sum_k amps[k-1] * cos(k * phase)``, by the Chebyshev recurrence (one cos for all k)."""
    amps = np.asarray(amps, dtype=np.float64)
    nz = np.flatnonzero(amps)
    if nz.size == 0:
        return np.zeros(phase.shape[0])
    cur = np.cos(phase)  # cos(k x) = 2 cos(x) cos((k-1) x) - cos((k-2) x)
    two, prev, tmp = 2.0 * cur, np.ones_like(cur), np.empty_like(cur)
    out = amps[0] * cur
    for k in range(1, nz[-1] + 1):
        np.multiply(two, cur, out=tmp)
        tmp -= prev
        prev, cur, tmp = cur, tmp, prev
        if amps[k] != 0.0:
            out += amps[k] * cur
    return out


def _nyquist_amps(amps: np.ndarray, f_max: float, sr: int) -> np.ndarray:
    """Zero the harmonics k*f_max above 0.45*sr (no aliasing)."""
    k = np.arange(1, len(amps) + 1)
    return np.where(k * f_max < 0.45 * sr, amps, 0.0)


def _freqs(n: int, sr: int) -> np.ndarray:
    return np.fft.rfftfreq(n, 1.0 / sr)


def _shaped_noise(rng: np.random.Generator, n: int, gain: np.ndarray) -> np.ndarray:
    """Gaussian noise whose amplitude spectrum is ``gain`` (on the rfft grid), unit-free."""
    spec = rng.standard_normal((gain.shape[0], 2)).view(np.complex128)[:, 0]
    spec *= gain
    return np.fft.irfft(spec, n=n)


def _band(f: np.ndarray, lo: float, hi: float, order: float = 2.0) -> np.ndarray:
    """Smooth band-pass magnitude (Butterworth-like) on frequencies ``f``."""
    f = np.maximum(f, 1e-3)
    return 1.0 / np.sqrt((1.0 + (lo / f) ** (2 * order)) * (1.0 + (f / hi) ** (2 * order)))


def _slow(rng: np.random.Generator, n: int, sr: int, fc: float) -> np.ndarray:
    """Zero-mean, unit-RMS random signal band-limited below ``fc`` Hz (drift, turbulence)."""
    m = max(2, min(n // 2 + 1, int(4 * fc * n / sr) + 2))  # only the bins below ~4 fc matter
    spec = np.zeros(n // 2 + 1, dtype=np.complex128)
    f = np.arange(1, m) * sr / n
    spec[1:m] = rng.standard_normal((m - 1, 2)).view(np.complex128)[:, 0] / (1.0 + (f / fc) ** 4)
    x = np.fft.irfft(spec, n=n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _resonate(x: np.ndarray, freq: float, decay_s: float, sr: int) -> np.ndarray:
    """Excite a two-pole resonator (``freq`` Hz, 1/e decay ``decay_s``) with ``x``.

    Scaled so that a unit impulse rings with a peak amplitude of about 1.
    """
    r = math.exp(-1.0 / (decay_s * sr))
    w = 2.0 * math.pi * freq / sr
    return scipy.signal.lfilter([math.sin(w)], [1.0, -2.0 * r * math.cos(w), r * r], x)


def _impulses(n: int, times_s: np.ndarray, amps: np.ndarray, sr: int) -> np.ndarray:
    """A signal of ``n`` samples with impulses of ``amps`` at ``times_s`` (out-of-range dropped)."""
    x = np.zeros(n)
    idx = np.round(np.asarray(times_s) * sr).astype(np.int64)
    ok = (idx >= 0) & (idx < n)
    np.add.at(x, idx[ok], np.asarray(amps, dtype=np.float64)[ok])
    return x


def _gate(open_s: np.ndarray, close_s: np.ndarray, n: int, sr: int, rise_s: float) -> np.ndarray:
    """0/1 envelope that is 1 between each open and close time, with raised edges of ``rise_s``."""
    t = np.arange(n) / sr
    on = np.zeros(n)
    for a, b in zip(open_s, close_s):  # a few events per clip, not per sample
        on += np.clip((t - a) / rise_s, 0.0, 1.0) * np.clip((b - t) / 0.005 + 1.0, 0.0, 1.0)
    return np.clip(on, 0.0, 1.0)


def _peaking_sos(f0: float, gain_db: float, q: float, sr: int) -> np.ndarray:
    """RBJ peaking-EQ biquad as one SOS row."""
    a = 10 ** (gain_db / 40.0)
    w = 2 * math.pi * f0 / sr
    alpha = math.sin(w) / (2 * q)
    b = np.array([1 + alpha * a, -2 * math.cos(w), 1 - alpha * a])
    den = np.array([1 + alpha / a, -2 * math.cos(w), 1 - alpha / a])
    return np.concatenate([b / den[0], den / den[0]])


def _shelf_sos(f0: float, gain_db: float, sr: int, high: bool) -> np.ndarray:
    """RBJ low/high-shelf biquad (slope 1) as one SOS row."""
    a = 10 ** (gain_db / 40.0)
    w = 2 * math.pi * f0 / sr
    cw, alpha = math.cos(w), math.sin(w) / 2 * math.sqrt(2.0)
    s = 1 if high else -1
    b0 = a * ((a + 1) + s * (a - 1) * cw + 2 * math.sqrt(a) * alpha)
    b1 = -2 * s * a * ((a - 1) + s * (a + 1) * cw)
    b2 = a * ((a + 1) + s * (a - 1) * cw - 2 * math.sqrt(a) * alpha)
    a0 = (a + 1) - s * (a - 1) * cw + 2 * math.sqrt(a) * alpha
    a1 = 2 * s * ((a - 1) - s * (a + 1) * cw)
    a2 = (a + 1) - s * (a - 1) * cw - 2 * math.sqrt(a) * alpha
    return np.array([b0, b1, b2, a0, a1, a2]) / a0


def _smooth_curve_db(rng: np.random.Generator, n_bumps: int, max_db: float) -> list[tuple[float, float, float]]:
    """Random smooth EQ curve: (centre Hz, gain dB, width in octaves) Gaussian bumps in log f."""
    return [(float(np.exp(rng.uniform(np.log(150.0), np.log(6500.0)))),
             float(rng.uniform(-max_db, max_db)), float(rng.uniform(0.3, 1.2)))
            for _ in range(n_bumps)]


def _curve_gain(bumps, f: np.ndarray) -> np.ndarray:
    lf = np.log2(np.maximum(f, 20.0))
    db = np.zeros_like(f)
    for fc, g, w in bumps:
        db += g * np.exp(-0.5 * ((lf - math.log2(fc)) / w) ** 2)
    return _db(db)


# --------------------------------------------------------------------------- instance / domain
@dataclass
class _Instance:
    """One machine (= one section): everything fixed across its clips."""

    mt: str
    f_nom: float  # nominal shaft/motor frequency, Hz
    count: int  # fan blades / pump vanes / gear teeth / ToyCar pinion teeth / slider Hz per m/s
    gamma: float  # harmonic roll-off exponent
    profile_db: np.ndarray  # fixed per-harmonic deviation of the main series, dB
    body: list  # smooth body-resonance bumps
    noise_band: tuple[float, float]
    noise_level: float
    res_freq: float  # resonance excited by impacts (bearing, click), Hz
    res_freq2: float
    decay: float
    extra: dict = field(default_factory=dict)
    ref_rms: float = 1.0  # RMS of a nominal normal clip (sets the background level)


@dataclass
class _Domain:
    """Recording conditions of one domain of one section."""

    mic_sos: np.ndarray
    snr_db: float
    alpha: float  # background noise colour: amplitude ~ f^(-alpha/2)
    hums: list  # (f0 Hz, n harmonics, level, roll-off)
    hum_level: float
    bang_rate: float  # per second
    gain_db: float  # microphone sensitivity


def _make_instance(seed: int, mt: str, section: int, n: int, sr: int) -> _Instance:
    rng = _rng(seed, _mt_id(mt), section, _PURPOSE_INSTANCE)
    base = {"fan": 17.5, "pump": 25.0, "gearbox": 15.0, "valve": 1.0, "slider": 1.0, "ToyCar": 190.0}[mt]
    count = {"fan": rng.choice([5, 7, 9, 11]), "pump": rng.choice([5, 6, 7]),
             "gearbox": int(rng.integers(19, 37)), "valve": 1,
             "slider": int(rng.integers(600, 1000)),  # stepper whine Hz per (m/s) of carriage speed
             "ToyCar": int(rng.integers(8, 14))}[mt]
    lo = float(rng.uniform(150, 600))
    inst = _Instance(
        mt=mt,
        f_nom=base * float(rng.uniform(0.85, 1.15)),
        count=int(count),
        gamma=float(rng.uniform(0.7, 1.4)),
        profile_db=rng.normal(0.0, 4.0, 64),
        body=_smooth_curve_db(rng, 4, 8.0),
        noise_band=(lo, float(rng.uniform(2500, 6500))),
        noise_level=float(rng.uniform(0.25, 0.5)),
        res_freq=float(rng.uniform(2500, 5500)),
        res_freq2=float(rng.uniform(700, 2200)),
        decay=float(rng.uniform(0.002, 0.006)),
        extra={"stroke": float(rng.uniform(0.2, 0.4)), "phase": float(rng.uniform(0, 2 * np.pi))},
    )
    # Calibrate: RMS of a nominal normal clip fixes this machine's loudness for the SNR.
    a1, a2 = _ATTRS[mt]
    nominal = (a1.source[len(a1.source) // 2], a2.source[0])
    ref = _render_machine(inst, _rng(seed, _mt_id(mt), section, _PURPOSE_INSTANCE + 1), nominal, None, n, sr)
    inst.ref_rms = float(np.sqrt(np.mean(ref**2))) + 1e-12
    return inst


def _make_domain(seed: int, mt: str, section: int, domain: str, sr: int) -> _Domain:
    rng = _rng(seed, _mt_id(mt), section, _PURPOSE_DOMAIN + _DOMAIN_ID[domain])
    tgt = domain == "target"
    mic_db = 7.0 if tgt else 5.0
    sos = [_peaking_sos(float(np.exp(rng.uniform(np.log(120), np.log(6000)))),
                        float(rng.uniform(-mic_db, mic_db)), float(rng.uniform(0.6, 2.5)), sr)
           for _ in range(3)]
    sos.append(_shelf_sos(float(rng.uniform(2000, 5000)), float(rng.uniform(-mic_db, mic_db * 0.5)), sr, True))
    sos.append(_shelf_sos(float(rng.uniform(100, 300)), float(rng.uniform(-mic_db, mic_db * 0.5)), sr, False))
    if tgt:
        # Another noise colour (brown or bright), more distant machinery, a noisier place.
        alpha = float(rng.choice([rng.uniform(1.7, 2.0), rng.uniform(0.2, 0.5)]))
        snr = float(rng.uniform(-2.0, 2.0))
        n_hums, bang_rate = int(rng.integers(2, 4)), float(rng.uniform(0.5, 1.5))
    else:
        alpha = float(rng.uniform(0.9, 1.1))  # pink
        snr = float(rng.uniform(3.0, 6.0))
        n_hums, bang_rate = int(rng.integers(1, 3)), float(rng.uniform(0.1, 0.5))
    hums = [(float(rng.uniform(40, 300)), int(rng.integers(3, 9)), float(rng.uniform(0.3, 1.0)),
             float(rng.uniform(0.8, 2.0))) for _ in range(n_hums)]
    return _Domain(mic_sos=np.stack(sos), snr_db=snr, alpha=alpha, hums=hums,
                   hum_level=float(rng.uniform(0.3, 0.8)), bang_rate=bang_rate,
                   gain_db=float(rng.uniform(-3, 3)))


# --------------------------------------------------------------------------- machines
def _main_amps(inst: _Instance, rng: np.random.Generator, n_harm: int, jitter_db: float = 1.0) -> np.ndarray:
    """Amplitudes of the main harmonic series: roll-off x fixed instance profile x per-clip jitter."""
    k = np.arange(1, n_harm + 1)
    db = inst.profile_db[:n_harm] + rng.normal(0.0, jitter_db, n_harm)
    return k ** (-inst.gamma) * _db(db)


def _bearing_clicks(inst, rng, n, sr, rate_hz, level, shaft_phase=None) -> np.ndarray:
    """Bearing-defect impulse train at ``rate_hz`` exciting the instance's high resonance."""
    t0 = rng.uniform(0, 1.0 / rate_hz)
    times = t0 + np.arange(int(n / sr * rate_hz) + 1) / rate_hz
    times = times + rng.normal(0, 0.02 / rate_hz, times.shape)  # slip
    amps = level * (1.0 + 0.3 * rng.standard_normal(times.shape))
    if shaft_phase is not None:  # load zone: stronger when the defect passes under the load
        idx = np.clip((times * sr).astype(np.int64), 0, n - 1)
        amps = amps * (0.6 + 0.4 * np.cos(shaft_phase[idx]))
    x = _impulses(n, times, amps, sr)
    return _resonate(x, inst.res_freq, inst.decay, sr)


def _rub(rng, phase, n, sr, band, level, sharp=6.0) -> np.ndarray:
    """Rubbing: band-limited noise bursts once per revolution of ``phase``."""
    f = _freqs(n, sr)
    env = np.maximum(0.0, np.cos(phase + rng.uniform(0, 2 * np.pi))) ** sharp
    noise = _shaped_noise(rng, n, _band(f, band[0], band[1]))
    noise /= np.sqrt(np.mean(noise**2)) + 1e-12
    return level * env * noise


def _render_rotating(inst: _Instance, rng: np.random.Generator, op: tuple[float, float],
                     anomaly: tuple[str, float] | None, n: int, sr: int) -> np.ndarray:
    """fan, pump, gearbox, ToyCar: harmonic series of a shaft + broadband noise."""
    mt = inst.mt
    speed, load = op
    kind, sev = anomaly if anomaly else ("", 0.0)
    t = np.arange(n) / sr
    f0 = inst.f_nom * speed * (1.0 + 0.004 * rng.standard_normal())
    rel = 1.0 + 0.002 * _slow(rng, n, sr, 1.0)  # slow speed drift of a healthy machine
    if kind == "wobble":  # speed fluctuation (loose belt, control oscillation)
        rel = rel + (0.003 + 0.012 * sev) * np.sin(2 * np.pi * rng.uniform(3, 9) * t + rng.uniform(0, 6.3))
    phase = 2 * np.pi * np.cumsum(f0 * rel) / sr + rng.uniform(0, 2 * np.pi)
    fmax = f0 * float(np.max(rel))
    f = _freqs(n, sr)

    # Shaft harmonics (weak: residual imbalance/misalignment).
    shaft = 0.08 * np.arange(1, 7) ** -1.0 * _db(rng.normal(0, 1.5, 6))
    count = inst.count
    if mt == "fan":
        main_f, n_main, main_level = count * f0, 24, 1.0 + 0.6 * load
        noise_level = inst.noise_level * speed**2.5 * (0.6 + 0.8 * load)
        band = (inst.noise_band[0] * speed, inst.noise_band[1])
    elif mt == "pump":
        main_f, n_main, main_level = count * f0, 16, 0.6 + 1.0 * load
        noise_level = inst.noise_level * speed**2 * (0.5 + 0.8 * load)
        band = (60.0, inst.noise_band[0] * 2 * speed)
    elif mt == "gearbox":
        main_f, n_main, main_level = count * f0, 10, 0.7 + 0.8 * load
        noise_level = inst.noise_level * 0.5 * (0.3 + 1.2 * load) * speed
        band = inst.noise_band
    else:  # ToyCar: f0 is the motor; gear whine at pinion teeth x motor
        main_f, n_main, main_level = f0, 30, 0.6 + 0.5 * load
        noise_level = inst.noise_level * 0.6 * speed**1.5
        band = (80.0, 900.0 * (1 + load))
    main = main_level * _main_amps(inst, rng, n_main)
    if mt == "ToyCar":  # heavier car: more low-order, less high-order energy
        main = main * np.arange(1, n_main + 1) ** (-0.4 * load)
    if kind == "missing_harmonic":  # e.g. a changed rotor/impeller/tooth geometry
        k = int(rng.integers(0, 3))
        main[k] *= 1.0 - min(0.95, 0.5 + 0.45 * sev)
    if kind == "imbalance":
        shaft[0] += 0.05 + 0.25 * sev
        shaft[1] += 0.05 * sev
    shaft = _nyquist_amps(shaft, fmax, sr)
    main = _nyquist_amps(main, main_f * float(np.max(rel)), sr)
    main_mult = count if mt != "ToyCar" else 1
    x = _harmonics(phase, shaft) + _harmonics(main_mult * phase, main)
    if mt == "gearbox":  # mesh sidebands at +-shaft rate grow with load
        x = x * (1.0 + (0.15 + 0.35 * load) * np.cos(phase + inst.extra["phase"]))
    if mt == "pump":  # motor magnetostriction hum: 100 Hz and harmonics, independent of speed
        hum = 0.35 * np.arange(1, 6) ** -1.3 * _db(rng.normal(0, 1.0, 5))
        x = x + _harmonics(2 * np.pi * 100.0 * t + inst.extra["phase"], hum)
    if mt == "ToyCar":
        gear = 0.5 * np.arange(1, 5) ** -1.0 * _db(rng.normal(0, 1.5, 4))
        x = x + _harmonics(count * phase / 4.0, _nyquist_amps(gear, fmax * count / 4.0, sr))
    if kind == "extra_partial":  # a non-harmonic line (cavitation, ghost mesh, loose part)
        mult = float(rng.choice([0.5, 1.5, 2.5, 3.5]))
        amp = (0.08 + 0.4 * sev) * float(main[0] if main[0] > 0 else 1.0)
        if mult * main_f < 0.45 * sr:
            x = x + amp * np.cos(mult * main_mult * phase + rng.uniform(0, 6.3))
    if kind == "imbalance":  # imbalance also modulates the whole tonal part at the shaft rate
        x = x * (1.0 + (0.05 + 0.2 * sev) * np.cos(phase + rng.uniform(0, 6.3)))

    # Broadband noise (aerodynamic / flow / gear roughness), with slow turbulence modulation.
    noise = _shaped_noise(rng, n, _band(f, *band))
    noise *= noise_level / (np.sqrt(np.mean(noise**2)) + 1e-12)
    noise *= 1.0 + 0.15 * _slow(rng, n, sr, 4.0)
    x = x + noise

    if kind == "clicks":
        rate = f0 * float(rng.uniform(3.0, 5.5))  # bearing outer-race defect frequency
        x = x + _bearing_clicks(inst, rng, n, sr, rate, 0.1 + 0.5 * sev, phase)
    if kind == "rubbing":
        x = x + _rub(rng, phase, n, sr, (1500, 6000), 0.2 + 0.8 * sev)
    if kind == "clogging":  # damped flow: high frequencies lose energy, tilt of up to ~-6 dB/oct
        X = np.fft.rfft(x) * (1.0 + (f / 800.0) ** 2) ** (-0.05 - 0.2 * sev)
        x = np.fft.irfft(X, n=n) * (1.0 + 0.2 * sev)
    return x


def _render_valve(inst, rng, op, anomaly, n, sr) -> np.ndarray:
    """Solenoid valve: clicks at open/close exciting two resonances, hiss while open, coil hum."""
    pattern, load = op
    kind, sev = anomaly if anomaly else ("", 0.0)
    period, duty = _VALVE_PATTERNS[int(pattern)]
    period *= 1.0 + 0.01 * rng.standard_normal()
    dur = n / sr
    t0 = rng.uniform(-period, 0)
    opens = t0 + period * np.arange(int(dur / period) + 3)
    closes = opens + duty * period
    opens = opens + rng.normal(0, 0.002, opens.shape)
    a_open = 1.0 * (1 + 0.1 * rng.standard_normal(opens.shape))
    a_close = 0.7 * (1 + 0.1 * rng.standard_normal(closes.shape))
    rise, res1, res2 = 0.01, inst.res_freq2, inst.res_freq
    if kind == "missing_click":  # weak or no seating
        hit = rng.random(closes.shape) < 0.5 + 0.5 * sev
        a_close = np.where(hit, a_close * (0.4 - 0.4 * sev), a_close)
    if kind == "sluggish":  # contaminated spool: slow opening, duller click
        rise = 0.01 + 0.08 * sev
        res1 *= 1.0 - 0.15 * sev
    times = np.concatenate([opens, closes])
    amps = np.concatenate([a_open, a_close])
    if kind == "bounce":  # the seat bounces: a second, weaker close click
        delay = rng.uniform(0.01, 0.04)
        times = np.concatenate([times, closes + delay])
        amps = np.concatenate([amps, a_close * (0.3 + 0.6 * sev)])
    imp = _impulses(n, times, amps, sr)
    x = 2.0 * _resonate(imp, res1, 0.012, sr) + 1.0 * _resonate(imp, res2, inst.decay * 2, sr)
    gate = _gate(opens, closes, n, sr, rise)
    f = _freqs(n, sr)
    hiss = _shaped_noise(rng, n, _band(f, inst.noise_band[0] * 2, inst.noise_band[1]))
    hiss /= np.sqrt(np.mean(hiss**2)) + 1e-12
    leak = (0.05 + 0.3 * sev) if kind == "leak" else 0.0
    x = x + (0.2 + 0.4 * load) * hiss * (gate + leak * (1 - gate))
    coil = 0.08 * np.arange(1, 5) ** -1.0
    x = x + gate * _harmonics(2 * np.pi * 100.0 * np.arange(n) / sr, coil)
    return x


def _render_slider(inst, rng, op, anomaly, n, sr) -> np.ndarray:
    """Linear slide: stepper whine following a trapezoidal velocity profile, friction, end clunks."""
    speed, load = op
    kind, sev = anomaly if anomaly else ("", 0.0)
    v = 0.5 * speed  # m/s
    acc = 2.0 + 8.0 * load  # m/s^2
    stroke = inst.extra["stroke"]
    t_acc = v / acc
    t_half = stroke / v + t_acc  # duration of one stroke (accelerate, cruise, decelerate)
    t = np.arange(n) / sr + rng.uniform(0, 2 * t_half)
    tau = np.mod(t, t_half)
    vel = v * np.clip(np.minimum(tau, t_half - tau) / t_acc, 0.0, 1.0)  # |velocity|
    rel = vel / v
    if kind == "wobble":
        rel = rel * (1.0 + (0.003 + 0.012 * sev) * np.sin(2 * np.pi * rng.uniform(4, 12) * t))
    f_step = inst.count * v  # whine frequency at cruise speed
    phase = 2 * np.pi * np.cumsum(f_step * rel) / sr
    amps = _nyquist_amps(0.8 * _main_amps(inst, rng, 12), f_step * 1.1, sr)
    x = (0.3 + 0.7 * rel) * _harmonics(phase, amps)
    f = _freqs(n, sr)
    fric = _shaped_noise(rng, n, _band(f, *inst.noise_band))
    fric /= np.sqrt(np.mean(fric**2)) + 1e-12
    x = x + inst.noise_level * rel * fric
    # End-stop clunks at every reversal (a low resonance).
    rev = (np.floor(t[0] / t_half) + 1 + np.arange(int(n / sr / t_half) + 2)) * t_half - t[0]
    amps_c = 0.6 * (1 + 0.1 * rng.standard_normal(rev.shape))
    if kind == "backlash":  # play in the drive: a second knock after each reversal
        rev = np.concatenate([rev, rev + rng.uniform(0.01, 0.03)])
        amps_c = np.concatenate([amps_c, amps_c * (0.4 + 0.8 * sev)])
    x = x + 1.5 * _resonate(_impulses(n, rev, amps_c, sr), inst.res_freq2 / 3, 0.015, sr)
    if kind == "clicks":  # damaged ball in the carriage bearing: rate follows the velocity
        turns = np.floor(np.cumsum(rel) * (40.0 * v) / sr + rng.uniform())
        hits = np.zeros(n)
        hits[1:] = np.diff(turns) * rel[1:]  # one impulse per ball pass, weaker when slow
        x = x + (0.2 + 0.8 * sev) * _resonate(hits, inst.res_freq, inst.decay, sr)
    if kind == "rubbing":  # scraping over one part of the stroke
        pos = np.minimum(tau, t_half - tau) / t_half
        env = np.exp(-0.5 * ((pos - rng.uniform(0.1, 0.4)) / 0.08) ** 2) * rel
        x = x + (0.1 + 0.4 * sev) * env * _rub(rng, np.zeros(n), n, sr, (1000, 6000), 1.0, 0.0)
    return x


def _render_machine(inst, rng, attrs: tuple[str, str], anomaly, n, sr) -> np.ndarray:
    """Render the dry machine signal (body resonances applied) for one clip."""
    a1, a2 = _ATTRS[inst.mt]
    op = (a1.numbers[attrs[0]], a2.numbers[attrs[1]])
    if inst.mt == "valve":
        x = _render_valve(inst, rng, op, anomaly, n, sr)
    elif inst.mt == "slider":
        x = _render_slider(inst, rng, op, anomaly, n, sr)
    else:
        x = _render_rotating(inst, rng, op, anomaly, n, sr)
    # The machine's body and mounting colour everything it radiates.
    if inst.extra.get("body_n") != n:
        inst.extra["body_n"], inst.extra["body_gain"] = n, _curve_gain(inst.body, _freqs(n, sr))
    return np.fft.irfft(np.fft.rfft(x) * inst.extra["body_gain"], n=n)


def _background(dom: _Domain, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Factory background of unit RMS (before bangs): coloured noise + distant hums + bangs."""
    f = _freqs(n, sr)
    shape = np.where(f > 20, np.maximum(f, 20.0) ** (-dom.alpha / 2), 0.0) * _band(f, 20, 7000)
    shape /= np.sqrt(np.sum(shape**2))
    # Distant machines: their harmonics as narrow spectral lines (~1 Hz wide). A narrow-band line
    # is a sinusoid with slow random amplitude and phase wander, at no extra cost per clip.
    lines = np.zeros_like(f)
    for f0, nh, lev, roll in dom.hums:
        f0 = f0 * (1 + 0.003 * rng.standard_normal())
        for k in range(1, nh + 1):
            lines += lev * k**-roll * np.exp(-0.5 * ((f - k * f0) / 0.7) ** 2)
    lines *= dom.hum_level / (np.sqrt(np.sum(lines**2)) + 1e-12)
    x = _shaped_noise(rng, n, shape + lines)
    x /= np.sqrt(np.mean(x**2)) + 1e-12
    n_bangs = rng.poisson(dom.bang_rate * n / sr)
    if n_bangs:
        times = rng.uniform(0, n / sr, n_bangs)
        amps = rng.uniform(3.0, 12.0, n_bangs) * rng.choice([-1, 1], n_bangs)
        imp = _impulses(n, times, amps, sr)
        x = x + _resonate(imp, float(rng.uniform(150, 1200)), float(rng.uniform(0.01, 0.05)), sr) * 0.3
        x = x + _resonate(imp, float(rng.uniform(1500, 4000)), 0.004, sr) * 0.3
    return x


def _render_clip(inst: _Instance, dom: _Domain, rng: np.random.Generator, attrs, anomaly,
                 n: int, sr: int) -> np.ndarray:
    """Machine + background at the domain's SNR, through the domain's microphone; float32."""
    machine = _render_machine(inst, rng, attrs, anomaly, n, sr) / inst.ref_rms
    snr = dom.snr_db + rng.normal(0, 0.7)
    bg = _background(dom, rng, n, sr) * _db(-snr)
    x = scipy.signal.sosfilt(dom.mic_sos, machine + bg)
    gain = _db(_OUTPUT_DBFS + dom.gain_db + rng.normal(0, 0.3)) / math.sqrt(1 + 10 ** (-snr / 10))
    return np.clip(x * gain, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- writing
def _wav_bytes(x: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _clip_name(ss: str, domain: str, split: str, label: str, index: int, attrs, mt: str) -> str:
    a1, a2 = _ATTRS[mt]
    return f"section_{ss}_{domain}_{split}_{label}_{index:04d}_{a1.key}_{attrs[0]}_{a2.key}_{attrs[1]}.wav"


def _csv_text(rows: Iterable[Sequence]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def _parse_sections(sections) -> list[int]:
    if isinstance(sections, (int, np.integer)):
        if sections < 1:
            raise ValueError(f"sections: need at least 1 section, got {sections}")
        return list(range(int(sections)))
    out = sorted({int(s) for s in sections})
    if not out or out[0] < 0 or out[-1] > 99:
        raise ValueError(f"sections: need section numbers in 0..99, got {sections!r}")
    return out


def _prepare_out(out: Path) -> None:
    """Refuse to mix with foreign files; remove the folders of a previous synthetic set."""
    if not out.exists():
        out.mkdir(parents=True)
        return
    if not out.is_dir():
        raise NotADirectoryError(f"out_dir: {out} exists and is not a folder")
    entries = list(out.iterdir())
    if not entries:
        return
    info = out / INFO_FILE
    if not info.is_file():
        raise FileExistsError(
            f"out_dir: {out} is not empty and holds no {INFO_FILE} (not a fastasd synthetic set); "
            "choose a new or empty folder")
    import json

    prev = json.loads(info.read_text(encoding="utf-8"))
    for name in list(prev.get("machine_types", [])) + [EVAL_DIR, GT_DIR]:
        p = out / name
        if p.is_dir() and p.parent == out:
            shutil.rmtree(p)
    for name in (META_FILE, INFO_FILE):
        (out / name).unlink(missing_ok=True)


def generate(
    out_dir,
    *,
    seed: int = 0,
    eval_copy: bool = False,
    machine_types: Sequence[str] = DEFAULT_MACHINE_TYPES,
    sections: int | Sequence[int] = 2,
    n_train_source: int = 60,
    n_train_target: int = 6,
    n_test: int = 40,
    clip_seconds: float = 2.0,
    sample_rate: int = 16000,
    progress: bool = False,
) -> dict:
    """Write a synthetic DCASE-2022-style development set (and optionally an evaluation copy).

    Args:
        out_dir: output folder; created if missing. If it holds a previous synthetic set (a
            ``synth_info.json``), that set's folders are replaced; any other non-empty folder is
            refused (``FileExistsError``).
        seed: non-negative integer; the same arguments give byte-identical files.
        eval_copy: also write ``<out>/eval/<mt>/{train,test}`` with unlabelled, shuffled test names
            ``section_<ss>_<nnnn>.wav`` and the official ground truth under
            ``<out>/eval_ground_truth/ground_truth_{data,domain}/ground_truth_<mt>_section_<ss>_test.csv``
            (no header, ``name,0|1``; data: 1 = anomaly, domain: 1 = target).
        machine_types: any of ``fan, pump, gearbox, valve, slider, ToyCar``.
        sections: number of sections (numbered 00..N-1) or explicit section numbers.
        n_train_source / n_train_target: normal training clips per section and domain.
        n_test: test clips per section, a multiple of 4: a quarter each of source/target x
            normal/anomaly.
        clip_seconds: clip length in seconds (at least 0.5).
        sample_rate: Hz (16000 in DCASE).
        progress: show a tqdm progress bar on stderr.

    Returns:
        dict with ``root`` (the development root, = out_dir), ``eval_root`` and ``ground_truth``
        (paths or None), ``machine_types``, ``sections`` (two-digit strings), ``shift``
        ({machine_type: {section: "speed"|"load"|"both"}}), ``n_files`` (dev WAVs written),
        ``eval_names`` ({"<mt>/<dev test name>": "<eval test name>"}, empty without eval copy),
        the sizes, ``seed`` and ``seconds`` (wall time).
    """
    t_start = time.perf_counter()
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: need a non-negative integer, got {seed!r}")
    if isinstance(machine_types, str):
        machine_types = [m for m in machine_types.split(",") if m]
    machine_types = list(dict.fromkeys(machine_types))
    unknown = [m for m in machine_types if m not in _ATTRS]
    if unknown or not machine_types:
        raise ValueError(f"machine_types: unknown {unknown or machine_types!r}; choose from {ALL_MACHINE_TYPES}")
    secs = _parse_sections(sections)
    for name, v in (("n_train_source", n_train_source), ("n_train_target", n_train_target), ("n_test", n_test)):
        if int(v) != v or v < 0:
            raise ValueError(f"{name}: need a non-negative integer, got {v!r}")
    if n_test % 4:
        raise ValueError(f"n_test: need a multiple of 4 (source/target x normal/anomaly), got {n_test}")
    if n_train_source + n_train_target < 1:
        raise ValueError("n_train_source + n_train_target: need at least one training clip per section")
    if clip_seconds < 0.5:
        raise ValueError(f"clip_seconds: need at least 0.5 s, got {clip_seconds}")
    n = int(round(clip_seconds * sample_rate))
    out = Path(out_dir)
    _prepare_out(out)

    sizes = {"n_train_source": int(n_train_source), "n_train_target": int(n_train_target),
             "n_test": int(n_test), "clip_seconds": float(clip_seconds), "sample_rate": int(sample_rate)}
    info = {"generator": "fastasd.data.synth", "status": "incomplete", "seed": int(seed),
            "machine_types": machine_types, "sections": [f"{s:02d}" for s in secs], **sizes,
            "eval_copy": bool(eval_copy), "anomaly_gain": ANOMALY_GAIN}
    atomic_write_json(out / INFO_FILE, info)  # marks the folder as ours before writing anything

    # The job list: one entry per clip, in a fixed order.
    jobs = []
    for mt in machine_types:
        for s in secs:
            shift = SHIFT_KINDS[s % len(SHIFT_KINDS)]
            for domain in ("source", "target"):
                combos = _combos(mt, shift, domain)
                n_tr = n_train_source if domain == "source" else n_train_target
                groups = [("train", "normal", n_tr), ("test", "normal", n_test // 4), ("test", "anomaly", n_test // 4)]
                for split, label, count in groups:
                    for i in range(count):
                        # Cycle through the attribute combinations: balanced and size-independent.
                        jobs.append((mt, s, domain, split, label, i, combos[i % len(combos)]))

    from tqdm import tqdm

    instances: dict = {}
    domains: dict = {}
    meta_rows: list[list] = []
    attr_rows: dict[tuple[str, int], list[list]] = {}
    written: dict[tuple[str, int], list[tuple[str, str, str, str]]] = {}  # test files per section
    for mt, s, domain, split, label, i, attrs in tqdm(jobs, desc="synth", unit="clip", disable=not progress,
                                                      file=sys.stderr):
        key = (mt, s)
        if key not in instances:
            instances[key] = _make_instance(seed, mt, s, n, sample_rate)
        if (mt, s, domain) not in domains:
            domains[(mt, s, domain)] = _make_domain(seed, mt, s, domain, sample_rate)
        rng = _rng(seed, _mt_id(mt), s, _SPLIT_ID[split], _DOMAIN_ID[domain], _LABEL_ID[label], i)
        anomaly = None
        if label == "anomaly":
            kinds = _ANOMALIES[mt]
            kind = kinds[int(rng.integers(len(kinds)))]
            anomaly = (kind, float(rng.uniform(0.3, 1.0)) * ANOMALY_GAIN)
        x = _render_clip(instances[key], domains[(mt, s, domain)], rng, attrs, anomaly, n, sample_rate)
        ss = f"{s:02d}"
        name = _clip_name(ss, domain, split, label, i, attrs, mt)
        path = out / mt / split / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # Plain writes: WAVs are regenerable data (an fsync per clip would dominate the run time);
        # synth_info.json says "complete" only after all of them are written.
        path.write_bytes(_wav_bytes(x, sample_rate))
        a1, a2 = _ATTRS[mt]
        attr_rows.setdefault(key, []).append([f"{mt}/{split}/{name}", a1.key, attrs[0], a2.key, attrs[1]])
        if split == "test":
            written.setdefault(key, []).append((name, domain, label, ""))
            meta_rows.append([mt, ss, name, domain, label, anomaly[0] if anomaly else "",
                              f"{anomaly[1]:.3f}" if anomaly else "", ""])

    for (mt, s), rows in attr_rows.items():
        atomic_write_text(out / mt / f"attributes_{s:02d}.csv",
                          _csv_text([["file_name", "d1p", "d1v", "d2p", "d2v"], *rows]))

    eval_names: dict[str, str] = {}
    if eval_copy:
        eval_names = _write_eval_copy(out, seed, attr_rows, written)
        for r in meta_rows:
            r[7] = eval_names.get(f"{r[0]}/{r[2]}", "")
    atomic_write_text(out / META_FILE, _csv_text(
        [["machine_type", "section", "file_name", "domain", "label", "anomaly", "severity", "eval_file_name"],
         *meta_rows]))
    info["status"] = "complete"
    atomic_write_json(out / INFO_FILE, info)
    seconds = time.perf_counter() - t_start
    logger.debug("wrote %d clips to %s in %.1f s", len(jobs), out, seconds)
    return {
        "root": str(out),
        "eval_root": str(out / EVAL_DIR) if eval_copy else None,
        "ground_truth": str(out / GT_DIR) if eval_copy else None,
        "machine_types": machine_types,
        "sections": [f"{s:02d}" for s in secs],
        "shift": {mt: {f"{s:02d}": SHIFT_KINDS[s % len(SHIFT_KINDS)] for s in secs} for mt in machine_types},
        "n_files": len(jobs),
        "eval_names": eval_names,
        "seed": int(seed),
        **sizes,
        "seconds": seconds,
    }


def _write_eval_copy(out: Path, seed: int, attr_rows, written) -> dict[str, str]:
    """Copy the dev set to ``out/eval`` with unlabelled, shuffled test names + ground truth CSVs."""
    eval_root, gt = out / EVAL_DIR, out / GT_DIR
    names: dict[str, str] = {}
    for (mt, s), rows in attr_rows.items():
        ss = f"{s:02d}"
        (eval_root / mt / "train").mkdir(parents=True, exist_ok=True)
        (eval_root / mt / "test").mkdir(parents=True, exist_ok=True)
        train_rows = [r for r in rows if r[0].startswith(f"{mt}/train/")]
        for r in train_rows:
            shutil.copyfile(out / r[0], eval_root / r[0])
        atomic_write_text(eval_root / mt / f"attributes_{ss}.csv",
                          _csv_text([["file_name", "d1p", "d1v", "d2p", "d2v"], *train_rows]))
        tests = written.get((mt, s), [])
        # Shuffle so that the eval index does not reveal the label or the domain.
        order = _rng(seed, _mt_id(mt), s, _PURPOSE_SHUFFLE).permutation(len(tests))
        gt_data, gt_domain = [], []
        for j, k in enumerate(order):
            dev_name, domain, label, _ = tests[k]
            eval_name = f"section_{ss}_{j:04d}.wav"
            shutil.copyfile(out / mt / "test" / dev_name, eval_root / mt / "test" / eval_name)
            names[f"{mt}/{dev_name}"] = eval_name
            gt_data.append([eval_name, int(label == "anomaly")])
            gt_domain.append([eval_name, int(domain == "target")])
        atomic_write_text(gt / "ground_truth_data" / f"ground_truth_{mt}_section_{ss}_test.csv", _csv_text(gt_data))
        atomic_write_text(gt / "ground_truth_domain" / f"ground_truth_{mt}_section_{ss}_test.csv", _csv_text(gt_domain))
    return names


# --------------------------------------------------------------------------- label regimes
LABEL_REGIMES = ("full", "dcase2023", "nometa")
_NAME = r"^section_(?P<ss>\d+)_(?P<rest>(?:source|target)_(?:train|test)_(?:normal|anomaly)_\d+)_.*\.wav$"


def label_regime(root, out_dir, regime: str) -> dict:
    """A copy of the synthetic set at ``root`` as it would be labelled in another regime, with hard
    links to the same WAV files (a copy where the file system has none): no new audio.

    - ``full``: the set as generated (every section's attributes, as DCASE 2020-2022).
    - ``dcase2023``: ONE section per machine type, as DCASE 2023-2025: the i-th machine type keeps
      section ``sections[i % len(sections)]`` (so both kinds of domain shift stay), attribute
      names and ``attributes_<ss>.csv`` kept. Half the clips of a two-section set.
    - ``nometa``: no metadata: every machine (machine type x section) becomes a machine type of
      its own, ``<type><ss>`` with section 00, and every file name ends in ``noAttribute``, so
      only machine type and domain can form classes. The same clips and sections as ``full``.

    ``out_dir`` is replaced when it holds an earlier copy (its ``synth_info.json`` says
    ``label_regime``); any other non-empty folder is refused. Returns the copy's info dict
    (``root``, ``regime``, ``machine_types``, ``n_files``).
    """
    import json
    import os
    import re

    if regime not in LABEL_REGIMES:
        raise ValueError(f"label_regime: regime {regime!r} is not one of {list(LABEL_REGIMES)}")
    root, out = Path(root), Path(out_dir)
    info_path = root / INFO_FILE
    if not info_path.is_file():
        raise FileNotFoundError(f"label_regime: {root} holds no {INFO_FILE} (not a synthetic set)")
    src = json.loads(info_path.read_text(encoding="utf-8"))
    if src.get("status") != "complete" or "label_regime" in src:
        raise ValueError(f"label_regime: {root} is not a complete generated set")
    secs = src["sections"]
    plan = []  # (machine type, section, name of the copy's machine type)
    for i, mt in enumerate(src["machine_types"]):
        for ss in (secs if regime != "dcase2023" else [secs[i % len(secs)]]):
            plan.append((mt, ss, f"{mt}{ss}" if regime == "nometa" else mt))
    _prepare_out(out)
    info = {"generator": "fastasd.data.synth", "status": "incomplete", "label_regime": regime,
            "source": str(root.resolve()), "machine_types": list(dict.fromkeys(p[2] for p in plan))}
    atomic_write_json(out / INFO_FILE, info)  # lists the folders a later call may replace
    pattern = re.compile(_NAME)
    n_files = 0
    for mt, ss, new_mt in plan:
        for split in ("train", "test"):
            (out / new_mt / split).mkdir(parents=True, exist_ok=True)
            for f in sorted((root / mt / split).iterdir()):
                m = pattern.match(f.name)
                if m is None or m["ss"] != ss:
                    continue
                name = f"section_00_{m['rest']}_noAttribute.wav" if regime == "nometa" else f.name
                try:
                    os.link(f, out / new_mt / split / name)
                except OSError:  # another file system, or no hard links there
                    shutil.copyfile(f, out / new_mt / split / name)
                n_files += 1
        if regime != "nometa":
            shutil.copyfile(root / mt / f"attributes_{ss}.csv", out / new_mt / f"attributes_{ss}.csv")
    info.update(status="complete", n_files=n_files)
    atomic_write_json(out / INFO_FILE, info)
    return {"root": str(out), "regime": regime, "machine_types": info["machine_types"], "n_files": n_files}
