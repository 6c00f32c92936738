"""stft_magnitude: the CUDA kernels (csrc/cuda/stft_magnitude.cu) run by the SIMT emulator
against the float64 reference, on the cases and tolerances of tests/ops/test_stft_magnitude.py.

Every path runs: plain (normalize=False), the sm_90 cluster path (an emulated H100) and the
two-pass path (an emulated A100, sm_80), each for power-of-two n_fft (Stockham FFT) and other
n_fft (direct DFT), on the paper's 10-s clips too (N=160000, n_fft=1024, hop=512). The empty
batch launches nothing on CUDA (the op returns first), so it has no emulated case.
"""
from __future__ import annotations

import pytest
import torch

import simt
from fastasd import reference

cpu_tests = simt.load_ops_module("test_stft_magnitude")

# (B, N, n_fft, hop): the CPU tests' shapes (but the empty batch), the CUDA tests' n_fft=4096.
CASES = [s for s in cpu_tests.SHAPES if s[0] > 0] + [(1, 20000, 4096, 1024)]
DEVICES = {"cluster": simt.H100, "two-pass": simt.A100}


def _check(kernels, check_close, B, N, n_fft, hop, normalize, dtype, device, expect_path, seed=0):
    torch.manual_seed(seed)
    x64 = torch.randn(B, N, dtype=torch.float64)
    ref = reference.stft_magnitude(x64, n_fft, hop, normalize)
    out, info = kernels.stft_magnitude(x64.to(dtype), n_fft, hop, normalize, device=device)
    assert f"path={expect_path} " in info, info
    check_close(out, ref, atol=cpu_tests._tolerance(x64, ref, n_fft, hop, normalize, dtype),
                what=f"emulated stft_magnitude B={B} N={N} n_fft={n_fft} hop={hop} {dtype} [{info}]")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("path", ["plain", "cluster", "two-pass"])
@pytest.mark.parametrize("B,N,n_fft,hop", CASES)
def test_matches_reference(B, N, n_fft, hop, path, dtype, kernels, check_close):
    device = DEVICES.get(path, simt.H100)
    if n_fft == 4096 and dtype == torch.float64 and device is simt.A100:
        # Window, twiddles and two float64 FFT buffers need 160 KiB + the sums: more than an
        # A100 lets a block have; the op says so instead of launching.
        with pytest.raises(simt.KernelError, match="n_fft needs more shared memory than this GPU has"):
            kernels.stft_magnitude(torch.randn(B, N, dtype=dtype), n_fft, hop, True, device=device)
        return
    _check(kernels, check_close, B, N, n_fft, hop, path != "plain", dtype, device, path)


def test_cluster_switch_off_takes_two_passes(kernels, check_close):
    """FASTASD_STFT_CLUSTER=0 on an sm_90 device."""
    no_cluster = simt.EmuDevice(simt.H100.sm_count, simt.H100.smem_optin, 9, 0)
    _check(kernels, check_close, 2, 4000, 512, 128, True, torch.float32, no_cluster, "two-pass")


@pytest.mark.parametrize("path", ["plain", "cluster", "two-pass"])
def test_nan_propagates(path, kernels):
    def fn(x, n_fft, hop, normalize):
        out, info = kernels.stft_magnitude(x, n_fft, hop, normalize, device=DEVICES.get(path, simt.H100))
        assert ("path=plain " in info) == (not normalize), info
        return out
    cpu_tests.check_nan_contract(fn)
