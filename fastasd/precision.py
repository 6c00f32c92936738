"""Which precision the networks compute in, decided per machine at run time: float32 or bfloat16.

``precision="auto"`` (scoring) and ``mixed_precision`` on CPU (training) take bfloat16 only where
this CPU computes it faster than float32. That is never decided by vendor or model name: the CPU
must report bfloat16 matrix instructions (``amx_bf16`` or ``avx512_bf16``, as PyTorch's own
cpuinfo sees them, else ``/proc/cpuinfo``), and a short bfloat16 matmul must then run at least
:data:`MIN_SPEEDUP` times faster than the same float32 matmul on the threads this process uses
(:func:`bf16_matmul_speedup`, about 10 ms, measured once per process). Without those instructions
PyTorch emulates bfloat16 in float32 arithmetic, which is always slower, so nothing is measured.
For scoring, ``auto`` also asks the backend (:func:`auto_allows_bfloat16`): bfloat16 only where
the official score stayed within 0.002 of float32 (the paper's plain cosine distance).

Measured (benchmarks/NOTES.md): on an AMD EPYC with ``avx512_bf16`` and no AMX (2 threads) the
bfloat16 matmul runs 2.2x and the fused scoring network 1.8x faster; on an Intel Xeon with AMX
the issue's figures give 7.7x for the matmul. On a GPU ``auto`` stays float32: no GPU has been
measured yet; ``precision="bfloat16"`` works there (the same fused network, cuDNN in bfloat16).
"""
from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import torch

__all__ = ["PRECISIONS", "MIN_SPEEDUP", "check_precision", "resolve_precision", "runs_bfloat16",
           "auto_allows_bfloat16", "cpu_bf16_units",
           "bf16_matmul_speedup", "cpu_prefers_bfloat16", "cpu_description"]

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "bfloat16")
# bfloat16 must beat float32 in the matmul probe by this factor: the network's elementwise passes
# and the float32 frontend gain nothing, so a marginal matmul gain is no gain end to end.
MIN_SPEEDUP = 1.3
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def check_precision(precision: str, what: str = "precision") -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else ``ValueError`` naming ``what``."""
    if precision not in PRECISIONS:
        raise ValueError(f"{what} must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> torch.dtype:
    """The dtype to compute in on ``device`` for ``precision`` (``"auto"``, ``"float32"`` or
    ``"bfloat16"``): ``auto`` is bfloat16 on a CPU where :func:`cpu_prefers_bfloat16`, else
    float32 (always float32 on other devices, where it has not been measured)."""
    check_precision(precision)
    if precision != "auto":
        return _DTYPES[precision]
    if torch.device(device).type == "cpu" and cpu_prefers_bfloat16():
        return torch.bfloat16
    return torch.float32


def _proc_cpuinfo() -> dict[str, str]:
    """The first processor's ``model name`` and ``flags`` from ``/proc/cpuinfo`` ({} elsewhere)."""
    out: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "flags") and key not in out:
            out[key] = value.strip()
    return out


@functools.lru_cache(maxsize=None)
def cpu_bf16_units() -> dict[str, bool]:
    """Whether this CPU has AMX bfloat16 tiles and AVX-512 bfloat16 instructions (PyTorch's
    cpuinfo where this torch exposes it, else the flags of ``/proc/cpuinfo``)."""
    flags = set(_proc_cpuinfo().get("flags", "").split())
    units = {"amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags}
    probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    for name, fn in probes.items():
        probe = getattr(torch.cpu, fn, None)
        if probe is not None:
            try:
                units[name] = units[name] or bool(probe())
            except Exception:  # an internal helper: keep the flags' answer
                pass
    return units


def bf16_matmul_speedup(size: int = 256, repeats: int = 5) -> float:
    """float32 time / bfloat16 time of a ``[size, 2 size] x [2 size, 2 size]`` matmul on this
    process's threads (best of ``repeats``, interleaved; about 10 ms at the default size)."""
    a = torch.randn(size, 2 * size)
    b = torch.randn(2 * size, 2 * size)
    pairs = {torch.float32: (a, b), torch.bfloat16: (a.bfloat16(), b.bfloat16())}
    best = {dt: float("inf") for dt in pairs}
    for dt, (x, y) in pairs.items():  # warm-up: oneDNN/BLAS pick their kernels once
        torch.mm(x, y)
    for _ in range(repeats):
        for dt, (x, y) in pairs.items():
            t = time.perf_counter()
            torch.mm(x, y)
            best[dt] = min(best[dt], time.perf_counter() - t)
    return best[torch.float32] / best[torch.bfloat16]


@functools.lru_cache(maxsize=None)
def cpu_prefers_bfloat16() -> bool:
    """Whether bfloat16 is worth it on this CPU: it has bfloat16 matrix instructions
    (:func:`cpu_bf16_units`) and the matmul probe gains at least :data:`MIN_SPEEDUP`. Decided once
    per process (the decision and the measured speedup are logged)."""
    units = cpu_bf16_units()
    if not any(units.values()):
        logger.info("precision auto: float32 (the CPU reports neither amx_bf16 nor avx512_bf16)")
        return False
    with torch.inference_mode():
        speedup = bf16_matmul_speedup()
    prefer = speedup >= MIN_SPEEDUP
    logger.info("precision auto: %s (%s; bfloat16 matmul %.2fx float32 on %d threads, needs %.1fx)",
                "bfloat16" if prefer else "float32", ", ".join(k for k, v in units.items() if v),
                speedup, torch.get_num_threads(), MIN_SPEEDUP)
    return prefer


def cpu_description() -> dict:
    """This CPU for result files: its model name, the bfloat16-related flags, every flag, and
    what ``auto`` would choose (the probe runs if it has not yet)."""
    info = _proc_cpuinfo()
    flags = info.get("flags", "").split()
    keep = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16",
            "amx_tile", "amx_int8", "amx_fp16")
    return {"model": info.get("model name", ""), "bf16_units": cpu_bf16_units(),
            "key_flags": [f for f in keep if f in flags], "flags": " ".join(flags),
            "auto_precision": "bfloat16" if cpu_prefers_bfloat16() else "float32"}


def runs_bfloat16(detector, precision: str | None) -> bool:
    """Whether batch scoring runs ``detector``'s networks in bfloat16 for ``precision`` (None: the
    detector's own default). A :class:`fastasd.api.Detector` resolves it on its device
    (``compute_dtype``); a detector without that method (the ONNX one, float32 only) runs in
    float32 unless ``"bfloat16"`` is asked for by name, which it then refuses itself."""
    if precision is not None:
        check_precision(precision)
    resolve = getattr(detector, "compute_dtype", None)
    if resolve is None:
        return precision == "bfloat16"
    return resolve(precision) == torch.bfloat16


def auto_allows_bfloat16(backend: str, score_normalization: str) -> bool:
    """Whether ``auto`` may take bfloat16 for a detector with this backend: only for the paper's
    plain minimum cosine distance, where the accuracy check held (the official score within
    0.002 of float32 on the demo-sized set, 6 trained models: benchmarks/results/precision_cpu.md).
    Local-density normalized scores divide each distance by its reference's neighbour distance,
    which amplifies the embeddings' bfloat16 rounding (the official score moved by 0.0030 once);
    the GMM backend has not been checked. ``"bfloat16"`` asked by name is always honoured."""
    return backend == "cosine" and score_normalization == "none"
