"""Benchmark of ``min_cosine_distance`` (per query: 1 - max cosine similarity over the references
of its section), the batched search of the cosine backend.

Providers: reference eager (a loop over sections), reference under ``torch.compile``, ours
(``fastasd.ops``) and, on CUDA, ``matmul+max-compiled``: one full masked ``[N, M]`` similarity
matmul then a max, under ``torch.compile`` (queries in chunks of at most 2^28 similarities).
Queries are ordered by section, as ``discover`` lists test clips; every section has the same
number of queries and ``R`` references (paper: 8,400 queries = 42 sections x 200 test clips,
R = 26 = 16 k-means means + 10 target clips; target: 20,000 queries; large: 100,000 queries
with R = 1,000). D = 256. The ``scaled`` cases add a per-reference scale and shift (the
local-density normalized backend: ``min_j scale_j (1 - cos) + shift_j``), with the paper's 26
references per section and with every training clip (R = 1,000) as a reference.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness import (MATMUL_MAX, OURS, REF_COMPILED, REF_EAGER, compiled, describe_case,
                     make_generator, n_input_sets, op_callable, op_policy, rel_error, require_native)
from sizes import SEARCH_CASES

OP = "min_cosine_distance"
CASES = SEARCH_CASES
CHECK_TOL = 1e-4  # ours (float32) vs the float64 reference, relative
CHUNK_SIMS = 1 << 28  # matmul+max: similarities per chunk (1 GiB float32)


def providers(device: str) -> list[str]:
    return [REF_EAGER, REF_COMPILED, OURS] + ([MATMUL_MAX] if device == "cuda" else [])


def make_inputs(N: int, D: int, G: int, R: int, gen: torch.Generator, device, scaled: bool = False):
    """``(queries [N, D], refs [G*R, D], query_group [N] sorted, ref_offsets [G+1])``, and with
    ``scaled`` also ``ref_scale [G*R]`` in [1, 20) and ``ref_shift [G*R]`` in [-0.5, 0)."""
    q = torch.randn(N, D, generator=gen, device=device)
    r = torch.randn(G * R, D, generator=gen, device=device)
    group = (torch.arange(N, device=device) * G) // N  # contiguous, equal-sized sections
    offsets = torch.arange(G + 1, device=device, dtype=torch.int64) * R
    if not scaled:
        return q, r, group, offsets
    scale = 1 + 19 * torch.rand(G * R, generator=gen, device=device)
    shift = -0.5 * torch.rand(G * R, generator=gen, device=device)
    return q, r, group, offsets, scale, shift


def _masked_matmul_max(q, r, query_group, ref_offsets, ref_scale=None, ref_shift=None):
    ref_group = torch.searchsorted(ref_offsets[1:].contiguous(),
                                   torch.arange(r.shape[0], device=r.device), right=True)
    sims = F.normalize(q, dim=1) @ F.normalize(r, dim=1).T
    if ref_scale is None:
        sims = sims.masked_fill(query_group[:, None] != ref_group[None, :], float("-inf"))
        return 1.0 - sims.amax(dim=1)
    dist = ref_scale * (1.0 - sims) + ref_shift
    return dist.masked_fill(query_group[:, None] != ref_group[None, :], float("inf")).amin(dim=1)


def matmul_max_provider():
    """Full masked matmul + max under torch.compile, over query chunks."""
    cf = compiled(_masked_matmul_max, "matmul+max", dynamic=False)

    def search(q, r, query_group, ref_offsets, *per_ref):
        chunk = max(1, CHUNK_SIMS // max(r.shape[0], 1))
        if q.shape[0] <= chunk:
            return cf(q, r, query_group, ref_offsets, *per_ref)
        return torch.cat([cf(q[i:i + chunk], r, query_group[i:i + chunk], ref_offsets, *per_ref)
                          for i in range(0, q.shape[0], chunk)])
    return search


def test_min_cosine_distance(case, provider, device, quick, runner, benchmark):
    from fastasd import reference

    p = case.params
    N, D, G, R, scaled = p["N"], p["D"], p["G"], p["R"], p.get("scaled", False)
    describe_case(benchmark, case, provider, query_order="grouped by section")
    fn = matmul_max_provider() if provider == MATMUL_MAX else op_callable(OP, provider, device)
    if provider == OURS:
        small = make_inputs(301, 32, 5, 7, make_generator(device, 1), device, scaled)
        native = require_native(OP, lambda: fn(*small), device)
        err = rel_error(fn(*small), reference.min_cosine_distance(
            *[t.double() if t.is_floating_point() else t for t in small]))
        if err > CHECK_TOL:
            pytest.fail(f"ours differs from the reference: relative error {err:.3g} > {CHECK_TOL}")
        benchmark.extra_info.update(native_ops=native, check_rel_error=err)
    gen = make_generator(device, 0)
    n_sets = 2 if quick else n_input_sets(4 * (N + G * R) * D + 8 * N)
    sets = [make_inputs(N, D, G, R, gen, device, scaled) for _ in range(n_sets)]
    # the reference loops over groups with .tolist(): no CUDA-graph capture (host syncs)
    runner.run(fn, sets, op_policy(device, quick), compile_skip=provider in (REF_COMPILED, MATMUL_MAX),
               cuda_graph=provider not in (REF_EAGER, REF_COMPILED))
