"""min_cosine_distance: native kernels (C++ CPU, CUDA) against the float64 PyTorch reference.

Tolerances (absolute; distances lie in [0, 2]): float64 kernels 1e-12; float32 kernels 1e-5
(float32 dot products of length D <= 256 carry ~sqrt(D) * 6e-8 ~ 1e-6 relative error, and
PyTorch's own float32 computation is off by the same order). With a per-reference scale and
shift (``ref_scale``, ``ref_shift``) the tolerance is multiplied by ``1 + max|scale| + max|shift|``
(the error of ``1 - cos`` is scaled, and the shift adds its rounding).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fastasd import _backend, ops, reference

op = torch.ops.fastasd.min_cosine_distance.default
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def make(N, D, sizes, dtype=torch.float64, device="cpu"):
    """Random queries/refs and a random (unsorted) group for each query."""
    q = torch.randn(N, D, dtype=dtype, device=device)
    r = torch.randn(sum(sizes), D, dtype=dtype, device=device)
    g = torch.randint(0, len(sizes), (N,), device=device)
    off = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()], device=device)
    return q, r, g, off


# (N, D, group sizes): tiny and odd sizes, D not a multiple of any vector width, one group,
# a group larger than one tile, an empty batch, and the paper's sizes (16 k-means means + 10
# target clips per section, 42 sections, 256-d embeddings).
SHAPES = [
    (7, 5, [1, 3, 2]),
    (33, 17, [5]),
    (50, 1, [3, 4]),
    (100, 64, [70, 3]),
    (0, 8, [2, 2]),
    (257, 256, [16, 10, 26, 1]),
    (2000, 256, [26] * 42),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("N,D,sizes", SHAPES)
def test_cpu_matches_reference(N, D, sizes, dtype, check_close):
    q, r, g, off = make(N, D, sizes)
    ref = reference.min_cosine_distance(q, r, g, off)
    out = op(q.to(dtype), r.to(dtype), g, off)
    assert out.dtype == dtype and out.shape == (N,)
    check_close(out, ref, atol=TOL[dtype], what=f"min_cosine_distance N={N} D={D} G={len(sizes)} {dtype}")


def make_scale_shift(M, dtype=torch.float64, device="cpu"):
    """A positive scale in [0.25, 4.25) and a shift in [-1, 1) per reference."""
    return (torch.rand(M, dtype=dtype, device=device) * 4 + 0.25,
            torch.rand(M, dtype=dtype, device=device) * 2 - 1)


def scaled_tol(dtype, scale, shift):
    bound = 1.0 + (scale.abs().max().item() if scale is not None and scale.numel() else 0.0) + (
        shift.abs().max().item() if shift is not None and shift.numel() else 0.0)
    return TOL[dtype] * bound


@pytest.mark.parametrize("which", ["both", "scale", "shift"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("N,D,sizes", SHAPES)
def test_cpu_scaled_matches_reference(N, D, sizes, dtype, which, check_close):
    q, r, g, off = make(N, D, sizes)
    sc, sh = make_scale_shift(r.shape[0])
    sc = sc if which in ("both", "scale") else None
    sh = sh if which in ("both", "shift") else None
    ref = reference.min_cosine_distance(q, r, g, off, sc, sh)
    out = op(q.to(dtype), r.to(dtype), g, off, None if sc is None else sc.to(dtype),
             None if sh is None else sh.to(dtype))
    assert out.dtype == dtype and out.shape == (N,)
    check_close(out, ref, atol=scaled_tol(dtype, sc, sh),
                what=f"scaled ({which}) min_cosine_distance N={N} D={D} G={len(sizes)} {dtype}")


def test_reference_scaled_is_the_formula():
    # the float64 reference against the formula spelled out with the full matrix (small sizes)
    q, r, g, off = make(30, 7, [4, 1, 6])
    sc, sh = make_scale_shift(r.shape[0])
    cos = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(r, dim=1).T
    full = sc * (1 - cos) + sh
    owner = torch.repeat_interleave(torch.arange(3), off.diff())
    expected = torch.where(owner[None, :] == g[:, None], full, torch.inf).min(dim=1).values
    torch.testing.assert_close(reference.min_cosine_distance(q, r, g, off, sc, sh), expected,
                               rtol=0, atol=1e-14)
    # ones and zeros give the plain distance; the plain call is exactly 1 - max cos
    torch.testing.assert_close(reference.min_cosine_distance(q, r, g, off, torch.ones(11, dtype=q.dtype),
                                                             torch.zeros(11, dtype=q.dtype)),
                               reference.min_cosine_distance(q, r, g, off), rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_scale_one_shift_zero_equals_plain(dtype):
    q, r, g, off = make(300, 64, [16, 10, 26, 1], dtype=dtype)
    ones, zeros = torch.ones(r.shape[0], dtype=dtype), torch.zeros(r.shape[0], dtype=dtype)
    plain = op(q, r, g, off)
    torch.testing.assert_close(op(q, r, g, off, ones, zeros), plain, rtol=0, atol=TOL[dtype])
    # both None is the plain path itself (bit for bit), positionally and by keyword
    torch.testing.assert_close(op(q, r, g, off, None, None), plain, rtol=0, atol=0)
    torch.testing.assert_close(ops.min_cosine_distance(q, r, g, off, ref_scale=None, ref_shift=None),
                               plain, rtol=0, atol=0)


def nan_cases(scaled: bool):
    """(name, args, expected NaN mask) for the NaN contract: NaN in a query row -> NaN for it; NaN
    in a reference row, its scale or its shift -> NaN for every query of that group."""
    cases = []
    for what in ["query", "ref", "ref_inf"] + (["scale", "shift"] if scaled else []):
        q, r, g, off = make(90, 24, [3, 40, 5])  # group 1 spans several SIMD chunks
        sc, sh = make_scale_shift(r.shape[0]) if scaled else (None, None)
        expect = torch.zeros(90, dtype=torch.bool)
        if what == "query":
            q[7, 3] = float("nan")
            expect[7] = True
        else:
            j = int(off[1]) + 37  # late in group 1
            if what == "ref":
                r[j, 5] = float("nan")
            elif what == "ref_inf":
                r[j, 2] = float("inf")  # normalizes to NaN, as in torch.nn.functional.normalize
            elif what == "scale":
                sc[j] = float("nan")
            else:
                sh[j] = float("nan")
            expect = g == 1
        cases.append((what, (q, r, g, off, sc, sh), expect))
    return cases


def check_nan_contract(fn, scaled: bool, dtypes=(torch.float32, torch.float64), where="native"):
    """The NaN contract of every implementation: the NaN mask is exactly :func:`nan_cases`' one
    (on the reference too), and every other result is finite and matches the float64 reference
    (the scaled tolerance when ``scaled``). ``fn(queries, refs, query_group, ref_offsets,
    ref_scale, ref_shift)`` is the implementation under test (also used by tests/emulated and the
    CUDA tests); it gets inputs converted to each of ``dtypes``."""
    for what, args, expect in nan_cases(scaled):
        ref = reference.min_cosine_distance(*args)
        assert torch.equal(ref.isnan(), expect), f"reference, NaN in {what}"
        finite = [t if t is None else t.nan_to_num(0.0) for t in args[4:]]  # the tolerance's scale / shift
        for dtype in dtypes:
            conv = [t.to(dtype) if t is not None and t.is_floating_point() else t for t in args]
            out = fn(*conv).cpu()
            assert torch.equal(out.isnan(), expect), \
                f"{where} {dtype}, NaN in {what}: {out.isnan().nonzero().flatten().tolist()}"
            assert torch.isfinite(out[~expect]).all(), f"{where} {dtype}, NaN in {what}"
            torch.testing.assert_close(out[~expect].double(), ref[~expect], rtol=0, atol=scaled_tol(dtype, *finite),
                                       msg=lambda m: f"{where} {dtype}, NaN in {what}: {m}")


@pytest.mark.parametrize("scaled", [False, True], ids=["plain", "scaled"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_nan_propagates(scaled, dtype):
    check_nan_contract(op, scaled, dtypes=(dtype,))


def test_exact_match_and_zero_query():
    q, r, g, off = make(6, 32, [3, 3])
    q[0] = 3.0 * r[off[g[0]]]  # a scaled copy of one of its references: distance 0
    q[1] = 0.0                 # zero query: normalized to 0 (eps), cosine 0, distance 1
    out = op(q, r, g, off)
    assert abs(out[0].item()) < 1e-12
    assert out[1].item() == pytest.approx(1.0, abs=1e-15)
    assert ((out >= -1e-12) & (out <= 2 + 1e-12)).all()


def test_public_wrapper_dispatches_to_native():
    q, r, g, off = make(20, 16, [2, 5], dtype=torch.float32)
    assert _backend.use_native("min_cosine_distance", "cpu")
    torch.testing.assert_close(ops.min_cosine_distance(q, r, g, off), op(q, r, g, off), rtol=0, atol=0)


def test_opcheck():
    torch.library.opcheck(op, make(40, 24, [3, 5, 1], dtype=torch.float32))
    torch.library.opcheck(op, make(0, 8, [2], dtype=torch.float64))
    q, r, g, off = make(40, 24, [3, 5, 1], dtype=torch.float32)
    sc, sh = make_scale_shift(9, dtype=torch.float32)
    torch.library.opcheck(op, (q, r, g, off, sc, sh))
    torch.library.opcheck(op, (q, r, g, off, None, sh))


def _args(**change):
    q, r, g, off = make(10, 8, [2, 3], dtype=torch.float32)
    args = dict(queries=q, refs=r, query_group=g, ref_offsets=off, ref_scale=None, ref_shift=None)
    args.update({k: v(args) for k, v in change.items()})
    return args


@pytest.mark.parametrize("change,argument", [
    (dict(queries=lambda a: a["queries"].half(), refs=lambda a: a["refs"].half()), "queries"),
    (dict(refs=lambda a: a["refs"].double()), "refs"),
    (dict(queries=lambda a: a["queries"][:, 0].contiguous()), "queries"),
    (dict(refs=lambda a: torch.randn(5, 7)), "refs"),
    (dict(queries=lambda a: torch.randn(8, 10).t()), "queries"),          # not contiguous
    (dict(query_group=lambda a: a["query_group"].int()), "query_group"),
    (dict(query_group=lambda a: a["query_group"][:9]), "query_group"),
    (dict(query_group=lambda a: a["query_group"] + 2), "query_group"),   # out of range
    (dict(query_group=lambda a: a["query_group"] - 1), "query_group"),   # negative
    (dict(ref_offsets=lambda a: torch.tensor([0, 2, 2, 5])), "ref_offsets"),  # empty group
    (dict(ref_offsets=lambda a: torch.tensor([0, 2, 4])), "ref_offsets"),     # does not end at M
    (dict(ref_offsets=lambda a: torch.tensor([1, 2, 5])), "ref_offsets"),     # does not start at 0
    (dict(ref_offsets=lambda a: torch.tensor([0])), "ref_offsets"),           # no group
    (dict(ref_offsets=lambda a: torch.tensor([0, 2, 5]).int()), "ref_offsets"),
    (dict(ref_scale=lambda a: torch.ones(4)), "ref_scale"),                   # not [M]
    (dict(ref_scale=lambda a: torch.ones(5, 1)), "ref_scale"),                # not 1-D
    (dict(ref_scale=lambda a: torch.ones(5, dtype=torch.float64)), "ref_scale"),  # not the refs' dtype
    (dict(ref_shift=lambda a: torch.zeros(10)[::2]), "ref_shift"),            # not contiguous
    (dict(ref_shift=lambda a: torch.zeros(6)), "ref_shift"),
])
def test_bad_input_names_op_and_argument(change, argument):
    with pytest.raises(ValueError, match=rf"^fastasd::min_cosine_distance: {argument} "):
        ops.min_cosine_distance(**_args(**change))


def test_backend_switch(monkeypatch):
    calls = []
    real = reference.min_cosine_distance

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(reference, "min_cosine_distance", spy)
    args = make(10, 8, [2, 3], dtype=torch.float32)
    monkeypatch.setenv("FASTASD_BACKEND", "native")
    native = ops.min_cosine_distance(*args)
    assert calls == []
    monkeypatch.setenv("FASTASD_BACKEND", "reference")
    torch.testing.assert_close(ops.min_cosine_distance(*args), native, rtol=0, atol=1e-6)
    assert len(calls) == 1


# --- CUDA (skipped without a GPU; FASTASD_REQUIRE_CUDA=1 turns the skips into failures) --------

CUDA_SHAPES = SHAPES + [
    (5000, 256, [16 + 10] * 42),  # the paper's search
    (300, 6, [40, 1, 90]),        # groups over several 32-row chunks; D=6 takes the scalar path
    (3000, 2048, [5, 7]),         # wide rows: fewer references per shared-memory chunk
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("N,D,sizes", CUDA_SHAPES)
def test_cuda_matches_reference(N, D, sizes, dtype, cuda_device, check_close):
    q, r, g, off = make(N, D, sizes)
    ref = reference.min_cosine_distance(q, r, g, off)
    out = op(q.to(cuda_device, dtype), r.to(cuda_device, dtype), g.to(cuda_device), off.to(cuda_device))
    assert out.device == cuda_device and out.dtype == dtype
    check_close(out, ref, atol=TOL[dtype] * (10 if D > 1024 else 1),
                what=f"cuda min_cosine_distance N={N} D={D} G={len(sizes)} {dtype}")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("N,D,sizes", CUDA_SHAPES)
def test_cuda_scaled_matches_reference(N, D, sizes, dtype, cuda_device, check_close):
    q, r, g, off = make(N, D, sizes)
    sc, sh = make_scale_shift(r.shape[0])
    ref = reference.min_cosine_distance(q, r, g, off, sc, sh)
    dev = [t.to(cuda_device) for t in (g, off)]
    out = op(q.to(cuda_device, dtype), r.to(cuda_device, dtype), *dev, sc.to(cuda_device, dtype),
             sh.to(cuda_device, dtype))
    check_close(out, ref, atol=scaled_tol(dtype, sc, sh) * (10 if D > 1024 else 1),
                what=f"cuda scaled min_cosine_distance N={N} D={D} G={len(sizes)} {dtype}")
    only = op(q.to(cuda_device, dtype), r.to(cuda_device, dtype), *dev, sc.to(cuda_device, dtype), None)
    check_close(only, reference.min_cosine_distance(q, r, g, off, sc, None), atol=scaled_tol(dtype, sc, None),
                what=f"cuda scale-only N={N} D={D}")


@pytest.mark.cuda
@pytest.mark.parametrize("scaled", [False, True], ids=["plain", "scaled"])
def test_cuda_nan_propagates(cuda_device, scaled):
    check_nan_contract(lambda *a: op(*[t if t is None else t.to(cuda_device) for t in a]), scaled, where="cuda")


@pytest.mark.cuda
def test_cuda_misaligned_rows(cuda_device, check_close):
    # Queries starting 4 bytes into an allocation cannot use 16-byte loads.
    q, r, g, off = make(65, 16, [3, 4])
    qd = torch.randn(65 * 16 + 1, device=cuda_device)[1:].view(65, 16)
    qd.copy_(q.to(cuda_device, torch.float32))
    check_close(op(qd, r.float().to(cuda_device), g.to(cuda_device), off.to(cuda_device)),
                reference.min_cosine_distance(q, r, g, off), atol=1e-5, what="misaligned")


@pytest.mark.cuda
def test_cuda_opcheck_and_errors(cuda_device):
    args = [t.to(cuda_device) for t in make(40, 24, [3, 5, 1], dtype=torch.float32)]
    torch.library.opcheck(op, tuple(args))
    q, r, g, off = args
    # Bad values are found on the device without a host sync: the faulty call gives NaN for the
    # affected queries, and a later call on the device, once the GPU is done, raises.
    for bad, argument in (((g, torch.tensor([0, 3, 3, 9], device=cuda_device)), "ref_offsets"),
                          ((g + 3, off), "query_group"),
                          ((g[:0], torch.tensor([0, 3, 3, 9], device=cuda_device)), "ref_offsets")):
        out = op(q[:len(bad[0])], r, *bad)
        assert out.numel() == 0 or torch.isnan(out).any()
        torch.cuda.synchronize(cuda_device)
        with pytest.raises(ValueError, match=rf"^fastasd::min_cosine_distance: {argument} .*earlier call"):
            op(q, r, g, off)
        assert not torch.isnan(op(q, r, g, off)).any()  # reported once
    with pytest.raises(ValueError, match=r"^fastasd::min_cosine_distance: ref_offsets "):
        op(q, r, g, off.cpu())  # index tensors must be on the device of the queries
    assert op(q[:0], r, g[:0], off).shape == (0,)
    torch.cuda.synchronize(cuda_device)
    op(q, r, g, off)  # the empty batch's offsets were fine: nothing to report


@pytest.mark.cuda
def test_cuda_bad_values_sync_mode(cuda_device):
    # FASTASD_CUDA_CHECK_VALUES=sync (read once per process): the faulty call raises the exact message.
    code = (
        "import torch, fastasd.ops, pytest\n"
        f"q, r = torch.randn(10, 8, device='{cuda_device}'), torch.randn(5, 8, device='{cuda_device}')\n"
        f"g, off = torch.zeros(10, dtype=torch.long, device='{cuda_device}'), torch.tensor([0, 2, 5], device='{cuda_device}')\n"
        "op = torch.ops.fastasd.min_cosine_distance.default\n"
        "with pytest.raises(ValueError, match=r'^fastasd::min_cosine_distance: query_group values must lie in \\[0, 2\\), got 7 at index 0'):\n"
        "    op(q, r, g + 7, off)\n")
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, FASTASD_CUDA_CHECK_VALUES="sync"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
