"""subcluster_adacos: the CUDA kernels (csrc/cuda/subcluster_adacos.cu), forward and backward,
run by the SIMT emulator against the float64 reference, with the inputs, modes and tolerances of
tests/ops/test_subcluster_adacos.py (its ``_compare``, given the emulated op).

Cut for time (one host thread per CUDA thread, a block of 256 per row in the row passes): the
CPU tests' 64-row batches have 9 rows here (the same kernels and geometry but fewer row blocks),
the paper's size (B=64, D=256, C=342, K=16) has 4 rows and runs two of the four modes (as the
CPU tests do at that size), and the CUDA tests' 130- and 257-row cases are represented by one
65-row case (two row tiles of the GEMM, the second partial) in the first mode (scale update,
mixup targets, centers' gradient). The
empty batch launches nothing on CUDA (the op returns first), so it has no emulated case.
"""
from __future__ import annotations

import pytest
import torch

import simt

from fastasd import reference

cpu_tests = simt.load_ops_module("test_subcluster_adacos")
MODES = cpu_tests.MODES

# (B, D, C, K)
CASES = [
    (1, 7, 1, 1), (3, 7, 5, 3), (3, 128, 2, 16), (9, 7, 5, 1), (1, 256, 5, 16), (9, 128, 2, 3),
    (3, 256, 1, 16), (9, 256, 5, 16), (9, 7, 342, 1), (3, 128, 342, 3), (4, 1000, 3, 40), (5, 64, 300, 2),
    (4, 256, 342, 16), (65, 33, 7, 5),
]
MODES_RUN = {(4, 256, 342, 16): 2, (65, 33, 7, 5): 1}  # modes run (default: all 4)


def emulated(kernels):
    """The emulated op as tests/ops' ``_run``: (loss, scale, d/d embeddings, d/d centers) of 1.7 * loss."""
    def run(emb, centers, targets, scale, K, update, centers_grad):
        (loss, s, lt, lc, cs, rw), _ = kernels.subcluster_adacos(emb, centers, targets, scale, K, update)
        grad = torch.tensor(1.7, dtype=emb.dtype)
        (gx, gw), _ = kernels.subcluster_adacos_backward(grad, emb, centers, targets, s, lt, lc, cs, rw, K,
                                                         centers_grad)
        return loss, s, gx, gw
    return run


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("B,D,C,K", CASES)
def test_matches_reference(B, D, C, K, dtype, kernels, check_close):
    torch.manual_seed(B * 1000 + D + C + K)
    for i, (update, kind, centers_grad) in enumerate(MODES):
        if i >= MODES_RUN.get((B, D, C, K), len(MODES)):
            continue
        emb, centers, targets, scale = cpu_tests._inputs(B, D, C, K, dtype, "cpu", kind)
        cpu_tests._compare(check_close, emb, centers, targets, scale, K, update, centers_grad, what=f"emulated {kind}",
                           run=emulated(kernels))


def test_saved_outputs_are_cosines_and_inverse_column_norms(kernels):
    """cos and col_inv_norms (kept for the backward), with a zero column, as in the CPU test."""
    emb, centers, targets, scale = cpu_tests._inputs(6, 10, 7, 3, torch.float32, "cpu", kind="mixup", seed=2)
    centers[:, 0] = 0.0
    for update in (False, True):
        (_, _, _, _, cs, rw), _ = kernels.subcluster_adacos(emb, centers, targets, scale, 3, update)
        torch.testing.assert_close(cs.double(), reference.adacos_cosines(emb.double(), centers.double()),
                                   rtol=0, atol=2e-6)
        torch.testing.assert_close(rw.double(), 1.0 / centers.double().norm(dim=0).clamp_min(1e-12), rtol=1e-6, atol=0)


def test_scale_update_with_small_angles(kernels, check_close):
    """theta_med < pi/4: the radix-select median enters the new scale."""
    for B, K, mixup in ((6, 1, False), (7, 2, False), (8, 2, True)):
        emb, centers, targets = cpu_tests._aligned_inputs(B, 24, 3 if mixup else 5, K, seed=B + K, mixup=mixup)
        for dtype in (torch.float64, torch.float32):
            cast = lambda t: t.to(dtype)
            cpu_tests._compare(check_close, cast(emb), cast(centers), cast(targets), 9.0, K, True,
                               what=f"emulated mixup={mixup}", run=emulated(kernels))


def test_extreme_scales_and_zero_rows(kernels, check_close):
    emb, centers, targets, _ = cpu_tests._inputs(8, 16, 6, 4, torch.float64, "cpu", seed=1)
    for dtype in (torch.float32, torch.float64):
        for scale in (200.0, 60.0, -25.0, 0.0):
            (loss, *_), _ = kernels.subcluster_adacos(emb.to(dtype), centers.to(dtype), targets.to(dtype), scale, 4,
                                                      False)
            ref, _ = reference.subcluster_adacos(emb, centers, targets, scale, 4, False)
            assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-4), (dtype, scale)
    emb[2] = 0.0
    centers[:, 5] = 0.0
    for update in (False, True):
        cpu_tests._compare(check_close, emb, centers, targets, 7.0, 4, update, what="emulated zero rows",
                           run=emulated(kernels))


@pytest.mark.parametrize("where", ["embedding", "center"])
@pytest.mark.parametrize("update", [False, True], ids=["fixed", "update"])
def test_nan_propagates(where, update, kernels):
    cpu_tests.check_nan_contract(emulated(kernels), where, update)
