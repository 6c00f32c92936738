"""Benchmark of ``stft_magnitude`` (magnitude STFT + temporal mean normalization) on 10-s clips.

Providers: reference eager, reference under ``torch.compile``, ours (``fastasd.ops``). Sizes in
``sizes.py`` (B=64 paper, B=32 target, B=1024 large); n_fft 1024, hop 512, normalize on.
"""
from __future__ import annotations

import pytest
import torch

from harness import (OURS, REF_COMPILED, REF_EAGER, describe_case, make_generator, n_input_sets,
                     op_callable, op_policy, rel_error, require_native)
from sizes import STFT_CASES

OP = "stft_magnitude"
CASES = STFT_CASES
CHECK_TOL = 1e-4  # ours (float32) vs the float64 reference, ||d|| / ||ref||: a sanity check, not the test


def providers(device: str) -> list[str]:
    return [REF_EAGER, REF_COMPILED, OURS]


def test_stft_magnitude(case, provider, device, quick, runner, benchmark):
    from fastasd import reference

    p = case.params
    B, N, n_fft, hop = p["B"], p["N"], p["n_fft"], p["hop"]
    describe_case(benchmark, case, provider)
    fn = op_callable(OP, provider, device)
    if provider == OURS:
        small = torch.rand(3, 8 * n_fft + 77, generator=make_generator(device, 1), device=device) * 2 - 1
        native = require_native(OP, lambda: fn(small, n_fft, hop, True), device)
        err = rel_error(fn(small, n_fft, hop, True), reference.stft_magnitude(small.double(), n_fft, hop, True))
        if err > CHECK_TOL:
            pytest.fail(f"ours differs from the reference: relative error {err:.3g} > {CHECK_TOL}")
        benchmark.extra_info.update(native_ops=native, check_rel_error=err)
    gen = make_generator(device, 0)
    n_sets = 2 if quick else n_input_sets(4 * B * N)
    sets = [(torch.rand(B, N, generator=gen, device=device) * 2 - 1,) for _ in range(n_sets)]
    runner.run(lambda x: fn(x, n_fft, hop, True), sets, op_policy(device, quick),
               compile_skip=provider == REF_COMPILED)
