"""Process-wide C allocator settings for CPU training and scoring (glibc only).

Why: glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
unmaps it on free. A training step or a scoring batch of 10-s clips allocates feature maps of
40-160 MB, so each step page-faults its whole working set in again: on this project's 2-core CPU
half of a plain forward's CPU time was system time (``benchmarks/NOTES.md``). Serving large
blocks from the heap (``M_MMAP_MAX = 0``) and not returning freed heap memory below 2 GiB to the
system (``M_TRIM_THRESHOLD``) lets every step reuse the previous step's memory.

This changes the whole process, so the library never does it on import: the ``fastasd`` command
line calls :func:`tune_allocator` for ``train``, ``score`` and ``demo``, and Python users may call
it themselves (``fastasd.tune_allocator()``). ``FASTASD_MALLOC_TUNING=0`` turns it off. The
environment variables ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` set before Python starts
have the same effect. Cost: the process keeps up to 2 GiB of freed memory for reuse instead of
returning it at once; the peak memory use does not grow.
"""
from __future__ import annotations

import ctypes
import logging
import sys

logger = logging.getLogger(__name__)

__all__ = ["tune_allocator", "ENV_VAR"]

ENV_VAR = "FASTASD_MALLOC_TUNING"
# glibc's <malloc.h> parameter numbers
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int: 2 GiB, the largest it accepts

_applied = False


def tune_allocator() -> bool:
    """Serve large allocations from the reusable heap (see the module docstring).

    Returns True when the settings are in effect (now or from an earlier call), False when they
    were not applied: ``FASTASD_MALLOC_TUNING=0``, not Linux, or a C library without glibc's
    ``mallopt`` (e.g. musl). Never raises.
    """
    from fastasd._backend import switch_on

    global _applied
    if not switch_on(ENV_VAR):
        return False
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        if not hasattr(libc, "gnu_get_libc_version"):
            return False  # not glibc: its mallopt (if any) does not take these parameters
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    if ok:
        _applied = True
        logger.debug("glibc malloc: large blocks from the heap (M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB)")
    return ok
