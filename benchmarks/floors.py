"""Floors of fastasd's operators: bytes and FLOPs per call as functions of the sizes, and the
machine's measured ceilings (memory bandwidth, float32 matmul rate).

The floor of a call is ``max(bytes / bandwidth, flops / matmul_rate)``: no implementation can
run much faster. Bytes count every input read once and every output written once (what a fused
kernel must move through memory); FLOPs count the arithmetic the op must do (a real FFT is
``2.5 n log2 n``; exp/acos/sqrt count one each). The derivations are in ``benchmarks/NOTES.md``;
``python benchmarks/sizes.py`` prints the table of bytes and FLOPs at every benchmark size
(``sizes.py`` imports this module, never the reverse).

The ceilings are measured, not taken from datasheets (see ``/work/.library/device/METHOD.md``):
``measure_ceilings(device)`` times a large tensor copy (bytes read + bytes written) and a large
float32 matmul (``2 n^3`` FLOPs) with the default float32 matmul precision, i.e. what the ops get.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

F32 = 4  # bytes of a float32
I64 = 8  # bytes of an int64


@dataclass(frozen=True)
class Cost:
    """Work of one call: ``bytes`` moved through memory (minimum) and ``flops``."""

    bytes: float
    flops: float

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.bytes + other.bytes, self.flops + other.flops)

    def floor_s(self, bandwidth_Bps: float, flops_per_s: float) -> tuple[float, str]:
        """``(floor seconds, "memory" | "compute")`` on a machine with these ceilings."""
        t_mem = self.bytes / bandwidth_Bps
        t_cmp = self.flops / flops_per_s
        return (t_mem, "memory") if t_mem >= t_cmp else (t_cmp, "compute")


# ---- stft_magnitude ----------------------------------------------------------------------------

def stft_magnitude_cost(B: int, N: int, n_fft: int = 1024, hop: int = 512, normalize: bool = True) -> Cost:
    """``stft_magnitude`` of ``[B, N]`` float32 waveforms -> ``[B, T, F]``.

    Bytes: ``4 * (B*N + B*T*F)`` (waveforms read once, magnitudes written once; the overlap of
    frames is a re-read a kernel serves from cache; the window is negligible).
    FLOPs per frame: window ``n_fft`` + real FFT ``2.5 n_fft log2 n_fft`` + magnitude ``4 F``
    (two squares, an add, a sqrt) + normalization ``2 F`` (mean accumulation and subtraction).
    """
    T = 1 + (N - n_fft) // hop
    F = n_fft // 2 + 1
    per_frame = n_fft + 2.5 * n_fft * math.log2(n_fft) + 4 * F + (2 * F if normalize else 0)
    return Cost(bytes=F32 * (B * N + B * T * F), flops=B * T * per_frame)


# ---- subcluster_adacos -------------------------------------------------------------------------

def subcluster_adacos_cost(B: int, D: int, C: int, K: int, backward: bool) -> Cost:
    """``subcluster_adacos`` forward (``backward=False``) or forward + backward, training mode
    (scale update on), centers fixed (no centers gradient).

    Forward bytes: embeddings ``B*D``, centers ``D*C*K``, targets ``B*C`` read once, loss and
    scale written: ``4 * (B*D + D*CK + B*C + 2)``.
    Forward FLOPs: cosines ``2*B*D*CK`` (matmul) + normalizing the centers ``3*D*CK`` and the
    embeddings ``3*B*D`` + per logit ``12`` (scale, exp and sum of the scale update, acos and the
    label-weighted angle sum, two logsumexps).
    Backward (a second pass: autograd runs it as its own call): reads the same inputs again and
    the saved per-row/per-class statistics (``B*(C+1)`` floats), writes ``grad_embeddings``
    ``B*D``; FLOPs ``2*B*D*CK`` (``dlogits @ W_n^T``) + ``3*D*CK`` (centers normalized again) +
    ``4`` per logit (softmax gradient) + ``6*B*D`` (normalization backward).
    """
    CK = C * K
    fwd = Cost(bytes=F32 * (B * D + D * CK + B * C + 2),
               flops=2 * B * D * CK + 3 * D * CK + 3 * B * D + 12 * B * CK)
    if not backward:
        return fwd
    bwd = Cost(bytes=F32 * (B * D + D * CK + B * C + B * (C + 1) + 1 + B * D),
               flops=2 * B * D * CK + 3 * D * CK + 4 * B * CK + 6 * B * D)
    return fwd + bwd


# ---- min_cosine_distance -----------------------------------------------------------------------

def min_cosine_distance_cost(N: int, D: int, G: int, R: int, scaled: bool = False) -> Cost:
    """``min_cosine_distance`` of ``N`` queries against ``G`` groups of ``R`` references each
    (``M = G*R``), dimension ``D``; ``scaled``: with a per-reference scale and shift (``8*M``
    more bytes read, ``3*N*R`` more FLOPs: ``scale * (1 - dot * inv_norm) + shift``).

    Bytes: queries ``4*N*D``, references ``4*M*D``, query groups ``8*N``, offsets ``8*(G+1)``,
    distances written ``4*N``.
    FLOPs: each query against its own group's ``R`` references ``2*N*R*D`` (dot products) +
    normalizing queries and references ``3*(N+M)*D`` + the max ``N*R``. A full ``[N, M]`` matmul
    (the "matmul+max" provider) does ``G`` times the dot-product work; its achieved rate is
    reported on this useful-work count.
    """
    M = G * R
    return Cost(bytes=F32 * (N * D + M * D + N + (2 * M if scaled else 0)) + I64 * (N + G + 1),
                flops=2 * N * R * D + 3 * (N + M) * D + N * R + (3 * N * R if scaled else 0))


# ---- machine ceilings --------------------------------------------------------------------------

def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, device, reps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_ceilings(device: str = "cpu", quick: bool = False) -> dict:
    """Measure memory bandwidth and float32 matmul rate on ``device`` (``"cpu"`` or ``"cuda"``).

    Bandwidth: ``dst.copy_(src)`` of a float32 tensor far larger than the caches (CPU 512 MiB,
    CUDA 2 GiB; quick: a quarter), counting bytes read + bytes written, median of repeats.
    Matmul: ``a @ b`` of ``n x n`` float32 (CPU n=2048, CUDA n=8192), ``2 n^3`` FLOPs, with
    torch's default float32 matmul precision (recorded: it decides whether TF32 is used); and
    the same matmul in bfloat16 (the ceiling of the bfloat16 providers: AMX or AVX512-BF16 on
    CPUs that have them, emulated and slower on others).

    Returns a JSON-able dict: ``memory_GBps``, ``matmul_GFLOPps``, ``matmul_bf16_GFLOPps``, and
    how each was measured.
    """
    import torch

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    copy_bytes = (2 << 30) if cuda else (512 << 20)
    n = 8192 if cuda else 2048
    if quick:
        copy_bytes //= 4
        n //= 2
    reps = 20 if cuda else 5
    gen = torch.Generator(device=dev).manual_seed(0)
    src = torch.rand(copy_bytes // F32, generator=gen, device=dev)
    dst = torch.empty_like(src)
    t_copy = _median_time(lambda: dst.copy_(src), dev, reps, 2)
    del src, dst
    a = torch.rand(n, n, generator=gen, device=dev) - 0.5  # random, never zeros (METHOD.md)
    b = torch.rand(n, n, generator=gen, device=dev) - 0.5
    t_mm = _median_time(lambda: a @ b, dev, reps, 2)
    a, b = a.bfloat16(), b.bfloat16()
    t_bf = _median_time(lambda: a @ b, dev, reps, 2)
    del a, b
    if cuda:
        torch.cuda.empty_cache()
    return {
        "memory_GBps": 2 * copy_bytes / t_copy / 1e9,
        "matmul_GFLOPps": 2 * n**3 / t_mm / 1e9,
        "matmul_bf16_GFLOPps": 2 * n**3 / t_bf / 1e9,
        "memory_method": f"median of {reps} copies of {copy_bytes >> 20} MiB float32 (read + write counted)",
        "matmul_method": f"median of {reps} float32 matmuls {n}x{n}x{n} (2n^3 FLOPs)",
        "matmul_bf16_method": f"median of {reps} bfloat16 matmuls {n}x{n}x{n} (2n^3 FLOPs)",
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32) if cuda else None,
        "threads": torch.get_num_threads(),
    }


def floor_entry(cost: Cost, ceilings: dict, median_s: float | None, bf16: bool = False) -> dict:
    """Floor numbers of one measured case: achieved GB/s and GFLOP/s, the floor time, which
    ceiling bounds it, ``x_floor`` (median / floor, 1 = at the floor) and ``floor_fraction``
    (floor / median). ``bf16``: the compute floor from the bfloat16 matmul ceiling."""
    out = {"bytes": cost.bytes, "flops": cost.flops}
    if not ceilings:
        return out
    rate = ceilings["matmul_bf16_GFLOPps"] if bf16 and "matmul_bf16_GFLOPps" in ceilings else ceilings["matmul_GFLOPps"]
    floor, bound = cost.floor_s(ceilings["memory_GBps"] * 1e9, rate * 1e9)
    out.update(floor_s=floor, bound=bound)
    if median_s:
        out.update(achieved_GBps=cost.bytes / median_s / 1e9, achieved_GFLOPps=cost.flops / median_s / 1e9,
                   x_floor=median_s / floor, floor_fraction=floor / median_s)
    return out
