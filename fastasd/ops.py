"""Public tensor operators of fastasd (one name per op: schema, ops, reference, tests, benchmarks).

Until the compiled operators are wired in (operators issue), every op forwards to
``fastasd.reference``. The system calls these functions only, so swapping the backend happens here.
"""
from __future__ import annotations

from fastasd import reference

stft_magnitude = reference.stft_magnitude
subcluster_adacos = reference.subcluster_adacos
min_cosine_distance = reference.min_cosine_distance

__all__ = ["stft_magnitude", "subcluster_adacos", "min_cosine_distance"]
