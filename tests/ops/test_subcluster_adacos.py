"""subcluster_adacos: native kernels (C++ CPU, CUDA), forward and backward, against the reference.

Every test draws fresh random inputs and compares the native operator with
``fastasd.reference.subcluster_adacos`` evaluated in float64 (loss, returned scale, gradients of
embeddings and centers through autograd).

Tolerances (max absolute error per tensor against the float64 reference, ``m = max |reference|``):
- float64 kernels: ``1e-9 * (1 + m)``;
- float32 kernels: ``2 * e_torch + eps32 * (1 + |s|) * (1 + m)``, where ``e_torch`` is the
  error of the reference itself run in float32 on the same inputs (flash-attention's rule: at most
  about twice PyTorch's own float32 error) and the floor is one float32 ulp of the logits
  ``s * cos`` (``s`` the larger of the given and the returned scale), which every result inherits;
  without it, small tensors where PyTorch happens to be nearly exact fail by chance.
"""
from __future__ import annotations

import math

import pytest
import torch

from fastasd import ops, reference

OP = "subcluster_adacos"
EPS32 = 1.1920928955078125e-07

pytestmark = pytest.mark.skipif(
    not (hasattr(torch.ops, "fastasd") and hasattr(torch.ops.fastasd, OP)),
    reason="fastasd._C (the compiled operators) is not built")

NAMES = ("loss", "scale", "grad embeddings", "grad centers")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _native(emb, centers, targets, scale, K, update_scale):
    """(loss, scale) from the native op, with autograd (registered by fastasd.ops)."""
    loss, s, *_ = torch.ops.fastasd.subcluster_adacos(emb, centers, targets, scale, K, update_scale)
    return loss, s


def _targets(B, C, kind, gen):
    """One-hot labels, or mixup labels with the author's max rule (partner = reversed batch)."""
    y = torch.nn.functional.one_hot(torch.randint(0, C, (B,), generator=gen), C).to(torch.float64)
    if kind == "mixup" and B > 0:
        lam = torch.rand(B, 1, generator=gen, dtype=torch.float64)
        y = torch.maximum(lam * y, (1 - lam) * y.flip(0))
    return y


def _inputs(B, D, C, K, dtype, device, kind="onehot", seed=None):
    """Random embeddings, Glorot-uniform centers (as in the model: not unit length, so the
    normalization matters), targets, and a scale around AdaCos's initial one."""
    gen = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(0, 2**31 - 1, ())))
    emb = torch.randn(B, D, generator=gen, dtype=torch.float64)
    bound = math.sqrt(6.0 / (D + C * K))
    centers = (torch.rand(D, C * K, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    targets = _targets(B, C, kind, gen)
    scale = reference.adacos_initial_scale(C * K) * (0.5 + torch.rand((), generator=gen).item())
    cast = lambda t: t.to(dtype=dtype, device=device)
    return cast(emb), cast(centers), cast(targets), scale


def _run(fn, emb, centers, targets, scale, K, update, centers_grad):
    """(loss, scale, d/d embeddings, d/d centers or None) of 1.7 * loss (a grad_output other than 1)."""
    e = emb.detach().clone().requires_grad_(True)
    w = centers.detach().clone().requires_grad_(centers_grad)
    loss, s = fn(e, w, targets, scale, K, update)
    (loss * 1.7).backward()
    return loss.detach(), s.detach(), e.grad, (w.grad if centers_grad else None)


def _err(a, b) -> float:
    return 0.0 if a.numel() == 0 else (a.detach().double().cpu() - b.detach().double().cpu()).abs().max().item()


def _compare(check_close, emb, centers, targets, scale, K, update, centers_grad=True, what="", run=None):
    """The native op (or ``run``, a function like :func:`_run`'s ``fn`` argument bound in) vs the
    float64 reference (and the float32 reference for the tolerance)."""
    dtype, device = emb.dtype, emb.device
    ours = (run or (lambda *a: _run(_native, *a)))(emb, centers, targets, scale, K, update, centers_grad)
    d64 = lambda t: t.to(dtype=torch.float64, device="cpu")
    ref64 = _run(reference.subcluster_adacos, d64(emb), d64(centers), d64(targets), scale, K, update, centers_grad)
    ref32 = (_run(reference.subcluster_adacos, emb, centers, targets, scale, K, update, centers_grad)
             if dtype == torch.float32 else None)
    for i, name in enumerate(NAMES):
        if ref64[i] is None:
            assert ours[i] is None
            continue
        assert ours[i].dtype == dtype and ours[i].device == device, name
        assert torch.isfinite(ours[i]).all(), f"{name}: non-finite values"
        m = ref64[i].abs().max().item() if ref64[i].numel() else 0.0
        if ref32 is None:
            tol = 1e-9 * (1 + m)
        else:  # 2x PyTorch's float32 error, floor: one float32 ulp of the logits s*cos
            s_max = max(abs(scale), abs(ref64[1].item()))
            tol = 2 * _err(ref32[i], ref64[i]) + EPS32 * (1 + s_max) * (1 + m)
        B, D = emb.shape
        check_close(ours[i], ref64[i], atol=tol,
                    what=f"{name} B={B} D={D} C*K={centers.shape[1]} K={K} {dtype} {device} update={update} {what}")


def _compare_random(check_close, B, D, C, K, dtype, device, update, kind, centers_grad=True):
    emb, centers, targets, scale = _inputs(B, D, C, K, dtype, device, kind)
    _compare(check_close, emb, centers, targets, scale, K, update, centers_grad, what=kind)


def _aligned_inputs(B, D, C, K, seed, mixup=False):
    """Embeddings close to their class's (nearly identical) sub-cluster centers: the angle to the
    own class is small, theta_med < pi/4, so the median of the scale update matters. With mixup,
    classes 0 and 1 are almost the same and every sample is mixed with the other one, so theta
    (with its factor n_mixed = 2) is still small."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(D, C, generator=gen, dtype=torch.float64)
    if mixup:
        base[:, 1] = base[:, 0] + 0.01 * torch.randn(D, generator=gen, dtype=torch.float64)
        labels = torch.tensor([0] * (B // 2) + [1] * (B - B // 2))
    else:
        labels = torch.randint(0, C, (B,), generator=gen)
    centers = base.repeat_interleave(K, dim=1) + 0.01 * torch.randn(D, C * K, generator=gen, dtype=torch.float64)
    noise = 0.05 * torch.rand(B, 1, generator=gen, dtype=torch.float64)
    emb = (base[:, labels].T + noise * torch.randn(B, D, generator=gen, dtype=torch.float64)).contiguous()
    y = torch.nn.functional.one_hot(labels, C).to(torch.float64)
    if mixup:
        lam = torch.rand(B, 1, generator=gen, dtype=torch.float64)
        y = torch.maximum(lam * y, (1 - lam) * y.flip(0))
    # The test must exercise what it claims: theta_med below pi/4.
    theta = torch.acos(reference.adacos_cosines(emb, centers).clamp(-1 + EPS32, 1 - EPS32)).view(B, C, K)
    theta_class = (y.unsqueeze(2) * theta).sum(dim=(1, 2)) * (y != 0).sum(1)
    assert theta_class.median() < math.pi / 4
    return emb, centers, y


# Shapes (B, D, C, K): odd sizes, tiny ones, and the paper's (342 classes x 16 sub-clusters).
SHAPES = [
    (1, 7, 1, 1), (3, 7, 5, 3), (3, 128, 2, 16), (64, 7, 5, 1), (1, 256, 5, 16), (64, 128, 2, 3),
    (3, 256, 1, 16), (64, 256, 5, 16), (64, 7, 342, 1), (3, 128, 342, 3), (64, 256, 342, 16),
]
# (update_scale, targets, centers_grad) per shape
MODES = [(True, "mixup", True), (False, "onehot", False), (True, "onehot", False), (False, "mixup", True)]


# --------------------------------------------------------------------------------------------
# CPU
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("B,D,C,K", SHAPES)
def test_cpu_matches_reference(B, D, C, K, dtype, check_close):
    for i, (update, kind, centers_grad) in enumerate(MODES):
        if (B, C) == (64, 342) and i >= 2:
            continue  # the paper's size: two modes suffice
        _compare_random(check_close, B, D, C, K, dtype, "cpu", update, kind, centers_grad)


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_cpu_every_simd_path(isa, monkeypatch, check_close):
    """The float32 row loops exist per ISA, picked at run time; FASTASD_CPU_ISA caps the choice
    (on a CPU without the ISA the next lower one runs and is tested again)."""
    monkeypatch.setenv("FASTASD_CPU_ISA", isa)
    # K = 16 and 8: one vector per class; K = 3, 5: the generic path; odd C*K: vector tails.
    for B, D, C, K in ((5, 33, 7, 16), (4, 20, 9, 8), (3, 17, 13, 3), (6, 9, 11, 5)):
        for update in (False, True):
            _compare_random(check_close, B, D, C, K, torch.float32, "cpu", update, "mixup")
    # |scale| above the fixed-shift limit (40) takes the row-maximum path.
    emb, centers, targets, _ = _inputs(7, 12, 5, 16, torch.float32, "cpu", kind="mixup")
    for scale in (55.0, -55.0):
        _compare(check_close, emb, centers, targets, scale, 16, False, what=f"scale={scale} isa={isa}")


@pytest.mark.parametrize("B,K", [(6, 1), (7, 2), (64, 1)])
def test_cpu_scale_update_with_small_angles(B, K, check_close):
    """theta_med < pi/4: the lower median of theta enters the new scale."""
    emb, centers, targets = _aligned_inputs(B, 24, 5, K, seed=B + K)
    for dtype in (torch.float64, torch.float32):
        _compare(check_close, emb.to(dtype), centers.to(dtype), targets.to(dtype), 9.0, K, True)


def test_cpu_scale_update_with_small_angles_mixup(check_close):
    emb, centers, targets = _aligned_inputs(8, 24, 3, 2, seed=11, mixup=True)
    for dtype in (torch.float64, torch.float32):
        _compare(check_close, emb.to(dtype), centers.to(dtype), targets.to(dtype), 9.0, 2, True)


@pytest.mark.parametrize("update", [False, True])
def test_cpu_empty_batch(update):
    emb, centers, targets, _ = _inputs(0, 7, 5, 3, torch.float32, "cpu")
    emb.requires_grad_(True)
    centers.requires_grad_(True)
    loss, s = ops.subcluster_adacos(emb, centers, targets, 3.5, 3, update)
    assert loss.shape == () and loss.item() == 0.0 and s.item() == pytest.approx(3.5)
    loss.backward()
    assert emb.grad.shape == (0, 7) and torch.equal(centers.grad, torch.zeros_like(centers))


def test_cpu_extreme_scales():
    """A large |scale| puts the target class far below the row maximum (the float class sums
    underflow); scale 0 gives uniform probabilities."""
    emb, centers, targets, _ = _inputs(8, 16, 6, 4, torch.float64, "cpu", seed=1)
    for dtype in (torch.float32, torch.float64):
        args = (emb.to(dtype), centers.to(dtype), targets.to(dtype))
        for scale in (200.0, 60.0, -25.0, 0.0):
            loss, _ = _native(*args, scale, 4, False)
            ref, _ = reference.subcluster_adacos(emb, centers, targets, scale, 4, False)
            assert torch.isfinite(loss), (dtype, scale)
            assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-4), (dtype, scale)


def check_nan_contract(run, where, update):
    """NaN contract: a NaN in an embedding row or a center column gives a NaN loss (and scale, when
    it is updated), and NaN gradients exactly where the reference's autograd has them. run is
    :func:`_run`'s fn bound in (the implementation under test; also used by tests/emulated)."""
    emb, centers, targets, scale = _inputs(5, 8, 3, 2, torch.float64, "cpu", kind="mixup", seed=4)
    if where == "embedding":
        emb[1, 3] = float("nan")
    else:
        centers[2, 5] = float("nan")
    ref = _run(reference.subcluster_adacos, emb, centers, targets, scale, 2, update, True)
    assert torch.isnan(ref[0])
    for dtype in (torch.float32, torch.float64):
        cast = lambda t: t.to(dtype)
        ours = run(cast(emb), cast(centers), cast(targets), scale, 2, update, True)
        for name, a, b in zip(NAMES, ours, ref):
            assert torch.equal(torch.isnan(a), torch.isnan(b)), (name, dtype, torch.isnan(a), torch.isnan(b))


@pytest.mark.parametrize("where", ["embedding", "center"])
@pytest.mark.parametrize("update", [False, True], ids=["fixed", "update"])
def test_cpu_nan_propagates(where, update):
    check_nan_contract(lambda *a: _run(_native, *a), where, update)


def test_cpu_zero_rows_and_columns(check_close):
    """All-zero embeddings / centers hit the eps clamp of the normalization (gradient g / eps)."""
    emb, centers, targets, scale = _inputs(5, 6, 3, 2, torch.float64, "cpu", seed=3)
    emb[2] = 0.0
    centers[:, 4] = 0.0
    for update in (False, True):
        _compare(check_close, emb, centers, targets, scale, 2, update)


@pytest.mark.parametrize("centers_grad", [False, True])
def test_cpu_gradcheck(centers_grad):
    emb, centers, targets, scale = _inputs(4, 5, 3, 2, torch.float64, "cpu", kind="mixup")
    emb.requires_grad_(True)
    centers.requires_grad_(centers_grad)
    # update_scale=False: the scale is a constant, as in the reference (no gradient through it);
    # test_cpu_matches_reference covers the gradient with update_scale=True.
    fn = lambda e, w: _native(e, w, targets, scale, 2, False)[0]
    assert torch.autograd.gradcheck(fn, (emb, centers), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_cpu_opcheck():
    for update, centers_grad in ((False, True), (True, False)):
        emb, centers, targets, scale = _inputs(5, 9, 4, 3, torch.float32, "cpu", kind="mixup")
        emb.requires_grad_(True)
        centers.requires_grad_(centers_grad)
        torch.library.opcheck(torch.ops.fastasd.subcluster_adacos.default, (emb, centers, targets, scale, 3, update))
    emb, centers, targets, scale = _inputs(5, 9, 4, 3, torch.float32, "cpu")
    _, s, lt, lc, cs, rw = torch.ops.fastasd.subcluster_adacos(emb, centers, targets, scale, 3, False)
    for centers_grad in (False, True):
        torch.library.opcheck(torch.ops.fastasd.subcluster_adacos_backward.default,
                              (torch.tensor(0.5), emb, centers, targets, s, lt, lc, cs, rw, 3, centers_grad))


@pytest.mark.parametrize("update", [False, True])
@pytest.mark.parametrize("B,D,C,K", [(6, 10, 7, 3), (64, 256, 342, 16), (1, 1, 1, 1), (0, 5, 4, 2)])
def test_cpu_saved_outputs_are_cosines_and_inverse_column_norms(B, D, C, K, update):
    """The outputs kept for the backward: cos [B, C*K] = normalize(x) @ normalize(W) and
    col_inv_norms [C*K] = 1 / max(|W_j|, 1e-12), float32 within 2e-6 absolute (|cos| <= 1) and
    1e-6 relative against float64."""
    emb, centers, targets, scale = _inputs(B, D, C, K, torch.float32, "cpu", kind="mixup")
    centers[:, 0] = 0.0  # a zero column: its inverse norm is the clamp 1e12, its cosines 0
    _, _, _, _, cs, rw = torch.ops.fastasd.subcluster_adacos(emb, centers, targets, scale, K, update)
    ref_cos = reference.adacos_cosines(emb.double(), centers.double())
    ref_rw = 1.0 / centers.double().norm(dim=0).clamp_min(1e-12)
    assert cs.shape == (B, C * K) and rw.shape == (C * K,)
    torch.testing.assert_close(cs.double(), ref_cos, rtol=0, atol=2e-6)
    torch.testing.assert_close(rw.double(), ref_rw, rtol=1e-6, atol=0)


@pytest.mark.parametrize("update", [False, True])
def test_cuda_saved_outputs_are_cosines_and_inverse_column_norms(cuda_device, update):
    """As the CPU test above, on CUDA at the paper's size (same tolerances)."""
    B, D, C, K = 64, 256, 342, 16
    emb, centers, targets, scale = _inputs(B, D, C, K, torch.float32, cuda_device, kind="mixup")
    _, _, _, _, cs, rw = torch.ops.fastasd.subcluster_adacos(emb, centers, targets, scale, K, update)
    ref_cos = reference.adacos_cosines(emb.double(), centers.double())
    ref_rw = 1.0 / centers.double().norm(dim=0).clamp_min(1e-12)
    torch.testing.assert_close(cs.double(), ref_cos, rtol=0, atol=2e-6)
    torch.testing.assert_close(rw.double(), ref_rw, rtol=1e-6, atol=0)


def test_cpu_backward_keeps_no_exponentials():
    """Fusion: the only [B, C*K] tensor saved for the backward is the cosines (no exponentials,
    no logits, no probabilities)."""
    B, D, C, K = 6, 10, 7, 3
    emb, centers, targets, scale = _inputs(B, D, C, K, torch.float32, "cpu")
    emb.requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        loss, s = ops.subcluster_adacos(emb, centers, targets, scale, K, True)
    assert not s.requires_grad
    loss.backward()
    big = [t for t in saved if tuple(t.shape) == (B, C * K)]
    assert len(big) == 1, [tuple(t.shape) for t in saved]
    ref_cos = reference.adacos_cosines(emb.detach().double(), centers.double())
    torch.testing.assert_close(big[0].double(), ref_cos, rtol=0, atol=2e-6)


def test_cpu_torch_compile_fullgraph():
    emb, centers, targets, scale = _inputs(8, 16, 5, 4, torch.float32, "cpu", kind="mixup")

    def step(e, w, t):
        loss, s = ops.subcluster_adacos(e, w, t, scale, 4, False)
        return loss * 2.0 + 0.0 * s

    compiled = torch.compile(step, fullgraph=True)
    e1, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    out_c, out_e = compiled(e1, centers, targets), step(e2, centers, targets)
    torch.testing.assert_close(out_c, out_e, rtol=1e-6, atol=1e-6)
    out_c.backward()
    out_e.backward()
    torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-6, atol=1e-7)


def test_public_wrapper_follows_the_backend_switch(monkeypatch):
    emb, centers, targets, scale = _inputs(5, 12, 4, 3, torch.float64, "cpu", kind="mixup")
    ref = reference.subcluster_adacos(emb, centers, targets, scale, 3, True)
    strided = emb.t().contiguous().t()  # the native op refuses it, the reference takes it
    monkeypatch.setenv("FASTASD_BACKEND", "native")
    for a, b in zip(ops.subcluster_adacos(emb, centers, targets, scale, 3, True), ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="embeddings must be contiguous"):
        ops.subcluster_adacos(strided, centers, targets, scale, 3, True)
    monkeypatch.setenv("FASTASD_BACKEND", "reference")
    for a, b in zip(ops.subcluster_adacos(strided, centers, targets, scale, 3, True), ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# Bad input: (case, how to spoil the arguments [emb, centers, targets, scale, K, update], the
# argument the message must name)
def _spoil(i, fn):
    def make():
        a = list(_inputs(4, 6, 3, 2, torch.float32, "cpu", seed=0)) + [2, False]
        a[i] = fn(a[i])
        return a
    return make


BAD = [
    ("int embeddings", _spoil(0, lambda e: e.to(torch.int32)), "embeddings"),
    ("half embeddings", _spoil(0, lambda e: e.half()), "embeddings"),
    ("float64 centers", _spoil(1, lambda w: w.double()), "centers"),
    ("float64 targets", _spoil(2, lambda t: t.double()), "targets"),
    ("1-D embeddings", _spoil(0, lambda e: e.reshape(-1)), "embeddings"),
    ("3-D centers", _spoil(1, lambda w: w.unsqueeze(0)), "centers"),
    ("centers rows != D", _spoil(1, lambda w: w[:5].contiguous()), "centers"),
    ("columns not a multiple of K", _spoil(1, lambda w: w[:, :5].contiguous()), "centers"),
    ("targets [B, C+1]", _spoil(2, lambda t: torch.cat([t, t[:, :1]], 1)), "targets"),
    ("targets [B-1, C]", _spoil(2, lambda t: t[:3].contiguous()), "targets"),
    ("non-contiguous embeddings", _spoil(0, lambda e: e.t().contiguous().t()), "embeddings"),
    ("non-contiguous centers", _spoil(1, lambda w: w.t().contiguous().t()), "centers"),
    ("non-contiguous targets", _spoil(2, lambda t: t.t().contiguous().t()), "targets"),
    ("n_subclusters 0", _spoil(4, lambda k: 0), "n_subclusters"),
    ("embedding dimension 0", _spoil(0, lambda e: e[:, :0]), "embeddings"),
]


@pytest.mark.parametrize("case,make,arg", BAD, ids=[c[0] for c in BAD])
def test_bad_input_names_op_and_argument(case, make, arg):
    with pytest.raises(ValueError) as info:
        torch.ops.fastasd.subcluster_adacos(*make())
    msg = str(info.value)
    assert f"fastasd::{OP}: {arg}" in msg, msg


def test_backward_bad_input_names_op_and_argument():
    emb, centers, targets, scale = _inputs(4, 6, 3, 2, torch.float32, "cpu", seed=0)
    _, s, lt, lc, cs, rw = torch.ops.fastasd.subcluster_adacos(emb, centers, targets, scale, 2, False)
    g = torch.tensor(1.0)
    cases = [
        ((g, emb, centers, targets, s, lt[:3], lc, cs, rw, 2, False), "lse_total"),
        ((g, emb, centers, targets, s, lt, lc[:, :2].contiguous(), cs, rw, 2, False), "lse_class"),
        ((g, emb, centers, targets, s.reshape(1), lt, lc, cs, rw, 2, False), "scale"),
        ((g.double(), emb, centers, targets, s, lt, lc, cs, rw, 2, False), "grad_loss"),
        ((g, emb, centers, targets, s, lt, lc.t().contiguous().t(), cs, rw, 2, False), "lse_class"),
        ((g, emb, centers[:, :4].contiguous(), targets, s, lt, lc, cs, rw, 2, False), "targets"),
        ((g, emb, centers, targets, s, lt, lc, cs[:, :4].contiguous(), rw, 2, False), "cos"),
        ((g, emb, centers, targets, s, lt, lc, cs.t().contiguous().t(), rw, 2, False), "cos"),
        ((g, emb, centers, targets, s, lt, lc, cs.double(), rw, 2, False), "cos"),
        ((g, emb, centers, targets, s, lt, lc, cs, rw[:5], 2, False), "col_inv_norms"),
        ((g, emb, centers, targets, s, lt, lc, cs, rw.reshape(1, -1), 2, False), "col_inv_norms"),
    ]
    for args, arg in cases:
        with pytest.raises(ValueError) as info:
            torch.ops.fastasd.subcluster_adacos_backward(*args)
        msg = str(info.value)
        assert f"fastasd::subcluster_adacos_backward: {arg}" in msg, msg


# --------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU; FASTASD_REQUIRE_CUDA=1 turns the skips into failures)
# --------------------------------------------------------------------------------------------
CUDA_SHAPES = SHAPES + [(130, 33, 7, 5), (64, 1000, 3, 40), (257, 64, 300, 2), (65, 256, 342, 16)]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("B,D,C,K", CUDA_SHAPES)
def test_cuda_matches_reference(B, D, C, K, dtype, cuda_device, check_close):
    for update, kind, centers_grad in MODES:
        _compare_random(check_close, B, D, C, K, dtype, cuda_device, update, kind, centers_grad)


@pytest.mark.cuda
def test_cuda_scale_update_with_small_angles(cuda_device, check_close):
    for B, K, mixup in ((6, 1, False), (7, 2, False), (64, 1, False), (8, 2, True)):
        emb, centers, targets = _aligned_inputs(B, 24, 5 if not mixup else 3, K, seed=B + K, mixup=mixup)
        for dtype in (torch.float64, torch.float32):
            cast = lambda t: t.to(cuda_device, dtype)
            _compare(check_close, cast(emb), cast(centers), cast(targets), 9.0, K, True, what=f"mixup={mixup}")


@pytest.mark.cuda
def test_cuda_extreme_scales_and_special_values(cuda_device, check_close):
    emb, centers, targets, _ = _inputs(8, 16, 6, 4, torch.float64, "cpu", seed=1)
    for dtype in (torch.float32, torch.float64):
        args = (emb.to(cuda_device, dtype), centers.to(cuda_device, dtype), targets.to(cuda_device, dtype))
        for scale in (200.0, 60.0, -25.0, 0.0):
            loss, _ = _native(*args, scale, 4, False)
            ref, _ = reference.subcluster_adacos(emb, centers, targets, scale, 4, False)
            assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-4), (dtype, scale)
        bad = args[0].clone()
        bad[1, 3] = float("nan")
        assert torch.isnan(_native(bad, args[1], args[2], 10.0, 4, False)[0])
    emb[2] = 0.0
    centers[:, 5] = 0.0
    _compare(check_close, emb.to(cuda_device), centers.to(cuda_device), targets.to(cuda_device), 7.0, 4, True)


@pytest.mark.cuda
def test_cuda_matches_cpu(cuda_device, check_close):
    emb, centers, targets, scale = _inputs(64, 256, 342, 16, torch.float32, "cpu", kind="mixup")
    for update in (False, True):
        cpu = _run(_native, emb, centers, targets, scale, 16, update, True)
        gpu = _run(_native, emb.to(cuda_device), centers.to(cuda_device), targets.to(cuda_device), scale, 16,
                   update, True)
        for name, a, b in zip(NAMES, cpu, gpu):
            check_close(b, a, atol=2e-6 * (1 + a.abs().max().item()), rtol=1e-4, what=f"cuda vs cpu {name}")


@pytest.mark.cuda
@pytest.mark.parametrize("update", [False, True])
def test_cuda_empty_batch(update, cuda_device):
    emb, centers, targets, _ = _inputs(0, 7, 5, 3, torch.float32, cuda_device)
    emb.requires_grad_(True)
    centers.requires_grad_(True)
    loss, s = _native(emb, centers, targets, 3.5, 3, update)
    assert loss.item() == 0.0 and s.item() == pytest.approx(3.5)
    loss.backward()
    assert emb.grad.shape == (0, 7) and torch.equal(centers.grad, torch.zeros_like(centers))


@pytest.mark.cuda
def test_cuda_gradcheck_and_opcheck(cuda_device):
    emb, centers, targets, scale = _inputs(4, 5, 3, 2, torch.float64, cuda_device, kind="mixup")
    emb.requires_grad_(True)
    centers.requires_grad_(True)
    fn = lambda e, w: _native(e, w, targets, scale, 2, False)[0]
    assert torch.autograd.gradcheck(fn, (emb, centers), eps=1e-6, atol=1e-7, rtol=1e-5)
    for update in (False, True):
        torch.library.opcheck(torch.ops.fastasd.subcluster_adacos.default,
                              (emb.float(), centers.float(), targets.float(), scale, 2, update))
    _, s, lt, lc, cs, rw = torch.ops.fastasd.subcluster_adacos(emb.detach(), centers.detach(), targets, scale, 2,
                                                               False)
    torch.library.opcheck(torch.ops.fastasd.subcluster_adacos_backward.default,
                          (torch.tensor(0.5, dtype=torch.float64, device=cuda_device), emb.detach(),
                           centers.detach(), targets, s, lt, lc, cs, rw, 2, True))


@pytest.mark.cuda
def test_cuda_mixed_devices_name_the_argument(cuda_device):
    emb, centers, targets, scale = _inputs(4, 6, 3, 2, torch.float32, "cpu")
    with pytest.raises(ValueError, match="fastasd::subcluster_adacos: centers"):
        torch.ops.fastasd.subcluster_adacos(emb.to(cuda_device), centers, targets.to(cuda_device), scale, 2, False)


@pytest.mark.cuda
def test_cuda_torch_compile_fullgraph(cuda_device):
    emb, centers, targets, scale = _inputs(64, 256, 342, 16, torch.float32, cuda_device, kind="mixup")

    def step(e, w, t):
        return ops.subcluster_adacos(e, w, t, scale, 16, False)[0]

    compiled = torch.compile(step, fullgraph=True)
    e1, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    out_c, out_e = compiled(e1, centers, targets), step(e2, centers, targets)
    torch.testing.assert_close(out_c, out_e)
    out_c.backward()
    out_e.backward()
    torch.testing.assert_close(e1.grad, e2.grad)
