"""stft_magnitude: native kernels (C++ CPU, CUDA) against the float64 PyTorch reference.

Tolerances (errors against ``fastasd.reference`` run in float64 on the same input):
- float64 kernels: ``1e-9 * max|ref|`` (FFT round-off is ~1e-15 relative);
- float32 kernels: ``max(2 * e_torch, 2e-6 * max|ref|)`` where ``e_torch`` is the error of
  PyTorch's own float32 computation (the reference in float32): the flash-attention rule,
  with a floor because both errors are ~1e-7 relative and fluctuate.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fastasd import _backend, ops, reference

op = torch.ops.fastasd.stft_magnitude.default

# (B, N, n_fft, hop): odd sizes, N not a multiple of hop, power-of-two and other n_fft, tiny FFTs,
# one frame, empty batch and the paper's 10-s clips.
SHAPES = [
    (1, 1024, 1024, 512),
    (3, 5000, 1024, 512),
    (2, 4000, 512, 128),
    (3, 3001, 256, 100),
    (2, 4000, 400, 160),
    (1, 999, 6, 5),
    (2, 64, 2, 1),
    (2, 200, 16, 7),
    (0, 3000, 1024, 512),
    (2, 160000, 1024, 512),
]


def _tolerance(x64: torch.Tensor, ref: torch.Tensor, n_fft: int, hop: int, normalize: bool, dtype) -> float:
    scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
    if dtype == torch.float64:
        return 1e-9 * scale
    e_torch = (reference.stft_magnitude(x64.float(), n_fft, hop, normalize).double() - ref).abs().max().item() \
        if ref.numel() else 0.0
    return max(2 * e_torch, 2e-6 * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "norm"])
@pytest.mark.parametrize("B,N,n_fft,hop", SHAPES)
def test_cpu_matches_reference(B, N, n_fft, hop, normalize, dtype, check_close):
    x64 = torch.randn(B, N, dtype=torch.float64)
    ref = reference.stft_magnitude(x64, n_fft, hop, normalize)
    out = op(x64.to(dtype), n_fft, hop, normalize)
    assert out.dtype == dtype and out.shape == (B, 1 + (N - n_fft) // hop, n_fft // 2 + 1)
    check_close(out, ref, atol=_tolerance(x64, ref, n_fft, hop, normalize, dtype),
                what=f"stft_magnitude B={B} N={N} n_fft={n_fft} hop={hop} normalize={normalize} {dtype}")


def test_normalize_removes_the_temporal_mean():
    x = torch.randn(3, 9000)
    out = op(x, 512, 256, True)
    assert out.mean(dim=1).abs().max().item() < 1e-4
    torch.testing.assert_close(out, op(x, 512, 256, False) - op(x, 512, 256, False).mean(dim=1, keepdim=True),
                               rtol=0, atol=1e-4)


def test_batch_rows_are_independent():
    # B=1 splits a clip over threads, larger batches do not: same numbers either way.
    x = torch.randn(5, 20000)
    whole = op(x, 1024, 512, True)
    for b in range(5):
        torch.testing.assert_close(op(x[b:b + 1].contiguous(), 1024, 512, True), whole[b:b + 1],
                                   rtol=0, atol=1e-5)


def check_nan_contract(fn, dtypes=(torch.float32, torch.float64)):
    """NaN contract: a NaN sample gives NaN in every bin of the frames that contain it and, with
    normalize, in every bin of its clip; the other clip matches the reference. fn(waveforms,
    n_fft, hop, normalize) is the implementation under test (also used by tests/emulated)."""
    n_fft, hop = 512, 128
    x = torch.randn(2, 4000, dtype=torch.float64)
    x[0, 1000] = float("nan")
    T = 1 + (4000 - n_fft) // hop
    frames = torch.tensor([t * hop <= 1000 < t * hop + n_fft for t in range(T)])
    for normalize in (False, True):
        ref = reference.stft_magnitude(x, n_fft, hop, normalize)
        expect = torch.zeros_like(ref, dtype=torch.bool)
        expect[0] = True if normalize else frames[:, None]
        assert torch.equal(torch.isnan(ref), expect)
        for dtype in dtypes:
            out = fn(x.to(dtype), n_fft, hop, normalize)
            assert torch.equal(torch.isnan(out), expect), (dtype, normalize)
            torch.testing.assert_close(out[1].double(), ref[1], rtol=0, atol=1e-3)


def test_cpu_nan_propagates():
    check_nan_contract(op)


def test_public_wrapper_dispatches_to_native():
    x = torch.randn(2, 3000)
    assert _backend.use_native("stft_magnitude", "cpu")
    torch.testing.assert_close(ops.stft_magnitude(x, 1024, 512, True), op(x, 1024, 512, True), rtol=0, atol=0)


@pytest.mark.parametrize("normalize", [False, True])
def test_opcheck(normalize):
    x = torch.randn(3, 2000)
    torch.library.opcheck(op, (x, 256, 128, normalize))
    torch.library.opcheck(op, (torch.randn(0, 2000, dtype=torch.float64), 400, 160, normalize))


@pytest.mark.slow
def test_torch_compile_fullgraph():
    # One compiled function over both native search-side ops (compiling is the slow part).
    def frontend(x, q, r, g, off):
        spec = ops.stft_magnitude(x, 256, 128, True)
        return spec.relu().sum(dim=(1, 2)), ops.min_cosine_distance(q, r, g, off) * 2.0

    torch._dynamo.reset()
    compiled = torch.compile(frontend, fullgraph=True)
    args = (torch.randn(3, 2000), torch.randn(10, 8), torch.randn(5, 8),
            torch.randint(0, 2, (10,)), torch.tensor([0, 2, 5]))
    for got, want in zip(compiled(*args), frontend(*args)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make_args,argument", [
    (lambda: (torch.randn(2, 100).half(), 16, 4, False), "waveforms"),
    (lambda: (torch.randn(2, 100, dtype=torch.float64).to(torch.int32), 16, 4, False), "waveforms"),
    (lambda: (torch.randn(100), 16, 4, False), "waveforms"),
    (lambda: (torch.randn(2, 3, 100), 16, 4, False), "waveforms"),
    (lambda: (torch.randn(100, 2).t(), 16, 4, False), "waveforms"),  # not contiguous
    (lambda: (torch.randn(2, 10), 16, 4, False), "waveforms"),       # fewer samples than n_fft
    (lambda: (torch.randn(2, 100), 1, 4, False), "n_fft"),
    (lambda: (torch.randn(2, 100), 16, 0, False), "hop"),
])
def test_bad_input_names_op_and_argument(make_args, argument):
    with pytest.raises(ValueError, match=rf"^fastasd::stft_magnitude: {argument} "):
        ops.stft_magnitude(*make_args())


def test_backend_switch(monkeypatch):
    calls = []
    real = reference.stft_magnitude

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(reference, "stft_magnitude", spy)
    x = torch.randn(2, 3000)
    monkeypatch.setenv("FASTASD_BACKEND", "native")
    ops.stft_magnitude(x, 1024, 512, True)
    assert calls == []
    monkeypatch.setenv("FASTASD_BACKEND", "reference")
    ops.stft_magnitude(x, 1024, 512, True)
    assert len(calls) == 1
    monkeypatch.setenv("FASTASD_BACKEND", "fast")
    with pytest.raises(ValueError, match="FASTASD_BACKEND"):
        ops.stft_magnitude(x, 1024, 512, True)


# --- CUDA (skipped without a GPU; FASTASD_REQUIRE_CUDA=1 turns the skips into failures) --------

CUDA_SHAPES = [(1, 1024, 1024, 512), (3, 5000, 1024, 512), (3, 3001, 256, 100), (2, 4000, 400, 160),
               (2, 64, 2, 1), (2, 200, 16, 7), (4, 160000, 1024, 512), (1, 20000, 4096, 1024)]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "norm"])
@pytest.mark.parametrize("B,N,n_fft,hop", CUDA_SHAPES)
def test_cuda_matches_reference(B, N, n_fft, hop, normalize, dtype, cuda_device, check_close):
    x64 = torch.randn(B, N, dtype=torch.float64)
    ref = reference.stft_magnitude(x64, n_fft, hop, normalize)
    out = op(x64.to(cuda_device, dtype), n_fft, hop, normalize)
    assert out.device == cuda_device and out.dtype == dtype
    check_close(out, ref, atol=_tolerance(x64, ref, n_fft, hop, normalize, dtype),
                what=f"cuda stft_magnitude B={B} N={N} n_fft={n_fft} hop={hop} normalize={normalize} {dtype}")


@pytest.mark.cuda
@pytest.mark.parametrize("cluster", ["0", "1"], ids=["two-pass", "cluster"])
def test_cuda_normalize_paths(cluster, cuda_device):
    # sm_90 normalizes inside a thread-block cluster; FASTASD_STFT_CLUSTER=0 forces the two-pass
    # path. The op reads the variable once per process, hence a fresh process per setting.
    code = (
        "import torch, fastasd.ops\n"
        "from fastasd import reference\n"
        "x = torch.randn(5, 60000, dtype=torch.float64)\n"
        "ref = reference.stft_magnitude(x, 1024, 512, True)\n"
        f"out = torch.ops.fastasd.stft_magnitude.default(x.to('{cuda_device}', torch.float32), 1024, 512, True)\n"
        "err = (out.double().cpu() - ref).abs().max().item()\n"
        "e32 = (reference.stft_magnitude(x.float(), 1024, 512, True).double() - ref).abs().max().item()\n"
        "assert err <= max(2 * e32, 2e-6 * max(1.0, ref.abs().max().item())), err\n")
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, FASTASD_STFT_CLUSTER=cluster),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.cuda
def test_cuda_opcheck_and_errors(cuda_device):
    x = torch.randn(3, 2000, device=cuda_device)
    torch.library.opcheck(op, (x, 256, 128, True))
    assert op(torch.empty(0, 2000, device=cuda_device), 1024, 512, True).shape == (0, 3, 513)
    with pytest.raises(ValueError, match=r"^fastasd::stft_magnitude: waveforms "):
        op(torch.randn(100, 2, device=cuda_device).t(), 16, 4, False)
    with pytest.raises(ValueError, match=r"^fastasd::stft_magnitude: n_fft "):
        op(torch.randn(1, 40000, device=cuda_device), 16384, 4, False)
    with torch.cuda.device(cuda_device):  # the op runs on the current stream
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            y = op(x, 256, 128, False)
        s.synchronize()
    torch.testing.assert_close(y.cpu(), op(x.cpu(), 256, 128, False), rtol=0, atol=1e-4)


def test_info_reports_build():
    info = _backend.info()
    assert info["extension_loaded"], info["extension_error"]
    assert info["build"]["with_cpu"] is True
    assert info["kernels"]["stft_magnitude"]["cpu"] and info["kernels"]["min_cosine_distance"]["cpu"]
    text = _backend.format_info(info)
    for word in ("active backend", "CUDA", "torch", "stft_magnitude"):
        assert word in text
