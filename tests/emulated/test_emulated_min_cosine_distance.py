"""min_cosine_distance: the CUDA kernel (csrc/cuda/min_cosine_distance.cu) run by the SIMT
emulator against the float64 reference, on the cases and tolerances of
tests/ops/test_min_cosine_distance.py.

Cut for time (one host thread per CUDA thread): the paper's search (2000 queries, 42 sections of
16 + 10 references, D=256) keeps D and the group sizes but has 6 sections and 400 queries (the
same per-block path: several slices per group, 16-byte loads, two reference chunks in float64);
the wide-row case (D=2048) has 600 queries instead of 3000.

Each case is a dict of the op's arguments, so new optional arguments only need a new key in
``_reference`` / ``_emulated`` and in the cases.
"""
from __future__ import annotations

import pytest
import torch

import simt
from fastasd import reference

cpu_tests = simt.load_ops_module("test_min_cosine_distance")
TOL = cpu_tests.TOL

# (N, D, group sizes): those of the CPU tests (with the cuts above), plus the CUDA tests' groups
# over several 32-row chunks with D=6 (scalar loads) and the wide rows.
CASES = [s for s in cpu_tests.SHAPES if s[0] < 1000] + [
    (400, 256, [26] * 6),   # the paper's search, cut (see above)
    (300, 6, [40, 1, 90]),
    (600, 2048, [5, 7]),
]


def _case(N, D, sizes, seed=0):
    torch.manual_seed(seed)
    q, r, g, off = cpu_tests.make(N, D, sizes)
    return dict(queries=q, refs=r, query_group=g, ref_offsets=off)


def _reference(args):
    return reference.min_cosine_distance(args["queries"], args["refs"], args["query_group"], args["ref_offsets"],
                                         args.get("ref_scale"), args.get("ref_shift"))


def _emulated(kernels, args, dtype, device=simt.H100):
    per_ref = [None if args.get(k) is None else args[k].to(dtype) for k in ("ref_scale", "ref_shift")]
    return kernels.min_cosine_distance(args["queries"].to(dtype), args["refs"].to(dtype), args["query_group"],
                                       args["ref_offsets"], *per_ref, device=device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("N,D,sizes", CASES)
def test_matches_reference(N, D, sizes, dtype, kernels, check_close):
    args = _case(N, D, sizes)
    out, flags, info = _emulated(kernels, args, dtype)
    assert flags == 0, info
    check_close(out, _reference(args), atol=TOL[dtype] * (10 if D > 1024 else 1),
                what=f"emulated min_cosine_distance N={N} D={D} G={len(sizes)} {dtype} [{info}]")


@pytest.mark.parametrize("which", ["both", "scale", "shift"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("N,D,sizes", CASES)
def test_scaled_matches_reference(N, D, sizes, dtype, which, kernels, check_close):
    """The scaled path (per-reference ref_scale / ref_shift of the local-density backend), with the
    CPU tests' scaled tolerance."""
    args = _case(N, D, sizes)
    sc, sh = cpu_tests.make_scale_shift(args["refs"].shape[0])
    args["ref_scale"] = sc if which in ("both", "scale") else None
    args["ref_shift"] = sh if which in ("both", "shift") else None
    out, flags, info = _emulated(kernels, args, dtype)
    assert flags == 0, info
    tol = cpu_tests.scaled_tol(dtype, args["ref_scale"], args["ref_shift"]) * (10 if D > 1024 else 1)
    check_close(out, _reference(args), atol=tol,
                what=f"emulated scaled ({which}) min_cosine_distance N={N} D={D} G={len(sizes)} {dtype} [{info}]")


@pytest.mark.parametrize("scaled", [False, True], ids=["plain", "scaled"])
def test_nan_propagates(scaled, kernels):
    """NaN in a query, a reference (or an inf), a scale or a shift reaches the result, exactly as
    the CPU tests' contract says; the other results match the reference."""
    def fn(q, r, g, off, sc, sh):
        out, flags, _ = kernels.min_cosine_distance(q, r, g, off, sc, sh)
        assert flags == 0
        return out
    cpu_tests.check_nan_contract(fn, scaled, where="emulated")


def test_paths_are_covered(kernels):
    """The cases above take the vectorized and the scalar loads, several slices and chunks."""
    infos = {}
    for N, D, sizes in [(400, 256, [26] * 6), (300, 6, [40, 1, 90])]:
        for dtype in (torch.float32, torch.float64):
            infos[(D, dtype)] = _emulated(kernels, _case(N, D, sizes), dtype)[2]
    assert "vec=1" in infos[(256, torch.float32)] and "vec=0" in infos[(6, torch.float32)]
    assert "slices=6" in infos[(256, torch.float32)]
    assert "rc=16" in infos[(256, torch.float64)]  # 26 references: two chunks


def test_misaligned_queries_take_scalar_loads(kernels, check_close):
    args = _case(65, 16, [3, 4])
    buf = torch.empty(65 * 16 + 1, dtype=torch.float32)
    q = buf[1:].view(65, 16)  # 4 bytes into the allocation: no 16-byte loads
    q.copy_(args["queries"])
    out, flags, info = kernels.min_cosine_distance(q, args["refs"].float(), args["query_group"], args["ref_offsets"])
    assert "vec=0" in info and flags == 0
    check_close(out, _reference(args), atol=TOL[torch.float32], what="misaligned")


@pytest.mark.parametrize("change,flag", [
    (dict(query_group=lambda a: a["query_group"] + 2), 4),            # out of range
    (dict(query_group=lambda a: a["query_group"] - 1), 4),            # negative
    (dict(ref_offsets=lambda a: torch.tensor([0, 2, 2, 5])), 2),      # empty group
    (dict(ref_offsets=lambda a: torch.tensor([0, 2, 4])), 1),         # does not end at M
    (dict(ref_offsets=lambda a: torch.tensor([1, 2, 5])), 1),         # does not start at 0
])
def test_bad_values_set_the_error_flag(change, flag, kernels):
    """The kernel's value checks (the CUDA op raises from these flags): the flag is set and the
    affected queries are NaN; N=0 still checks ref_offsets."""
    args = _case(10, 8, [2, 3])
    args.update({k: v(args) for k, v in change.items()})
    out, flags, _ = _emulated(kernels, args, torch.float32)
    assert flags & flag, flags
    assert torch.isnan(out).any()
    if "ref_offsets" in change:
        empty = dict(args, queries=args["queries"][:0], query_group=args["query_group"][:0])
        assert _emulated(kernels, empty, torch.float32)[1] & flag


def test_exact_match_and_zero_query(kernels):
    args = _case(6, 32, [3, 3])
    q, r, g, off = args["queries"], args["refs"], args["query_group"], args["ref_offsets"]
    q[0] = 3.0 * r[off[g[0]]]
    q[1] = 0.0
    out, _, _ = _emulated(kernels, args, torch.float64)
    assert abs(out[0].item()) < 1e-12
    assert out[1].item() == pytest.approx(1.0, abs=1e-15)
