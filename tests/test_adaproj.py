"""AdaProj (Wilkinghoff, DCASE Workshop 2024) against the paper's formulas written out here in
float64 numpy: the projection on each class's subspace by the pseudo-inverse (no Cholesky), the
softmax cross-entropy, and the adaptive scale update of the author's code."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastasd.loss import AdaProj, adaproj_updated_scale

EPS32 = float(np.finfo(np.float32).eps)


def formula(emb, centers, targets, scale, K, update):
    """(loss, scale used): float64 numpy, explicit loops."""
    x = np.asarray(emb, np.float64)
    w = np.asarray(centers, np.float64)
    t = np.asarray(targets, np.float64)
    B, C = t.shape
    cos = np.zeros((B, C))
    for j in range(C):
        Wj = w[:, j * K:(j + 1) * K]
        P = Wj @ np.linalg.pinv(Wj)  # orthogonal projector on span(W_j)
        for b in range(B):
            xb = x[b] / np.linalg.norm(x[b])
            p = P @ xb
            cos[b, j] = xb @ p / np.linalg.norm(p)
    s = float(scale)
    if update:
        logits = s * cos
        M = logits.max()
        b_avg = np.mean([sum(math.exp(logits[b, j] - M) if t[b, j] < 1 else math.exp(-M)
                             for j in range(C)) for b in range(B)])
        theta = [sum(t[b, j] * math.acos(min(max(cos[b, j], -1 + EPS32), 1 - EPS32)) for j in range(C))
                 for b in range(B)]
        med = sorted(theta)[(B - 1) // 2]  # lower median
        s = (M + math.log(b_avg)) / math.cos(min(math.pi / 4, med))
    loss = 0.0
    for b in range(B):
        z = np.exp(s * cos[b] - (s * cos[b]).max())
        loss -= sum(t[b, j] * math.log(z[j] / z.sum()) for j in range(C))
    return loss / B, s, cos


def _data(B=7, D=12, C=4, seed=0, mixed=False):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, D, generator=g, dtype=torch.float64)
    t = torch.nn.functional.one_hot(torch.arange(B) % C, C).double()
    if mixed:  # mixup-style labels: max(lam*y, (1-lam)*y_rev)
        lam = torch.rand(B, 1, generator=g, dtype=torch.float64)
        t = torch.maximum(lam * t, (1 - lam) * t.flip(0))
    return emb, t


@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_training_loss_and_scale_update_match_formula(mixed, dtype, rel):
    emb, t = _data(mixed=mixed)
    K = 3
    m = AdaProj(12, 4, K, generator=torch.Generator().manual_seed(1))
    s0 = float(m.scale)
    assert s0 == pytest.approx(math.sqrt(2) * math.log(4 * K - 1), rel=1e-7)
    loss_ref, s_ref, cos_ref = formula(emb, m.centers, t, s0, K, update=True)
    loss = m(emb.to(dtype), t.to(dtype))
    assert float(loss) == pytest.approx(loss_ref, rel=rel)
    assert float(m.scale) == pytest.approx(s_ref, rel=max(rel, 1e-7))  # the buffer is float32
    assert float(m.scale) != pytest.approx(s0, rel=1e-3)  # the update did something
    np.testing.assert_allclose(m.cosines(emb).numpy(), cos_ref, rtol=1e-10)


def test_eval_mode_uses_stored_scale_without_update():
    emb, t = _data()
    m = AdaProj(12, 4, 3).eval()
    m.scale.fill_(6.5)
    loss_ref, _s, _c = formula(emb, m.centers, t, 6.5, 3, update=False)
    assert float(m(emb, t)) == pytest.approx(loss_ref, rel=1e-10)
    assert float(m.scale) == 6.5


def test_cosine_is_the_norm_of_the_projection_and_full_subspace_gives_one():
    emb, _t = _data()
    m = AdaProj(12, 4, 3)
    cos = m.cosines(emb)
    assert bool(((cos >= 0) & (cos <= 1 + 1e-12)).all())
    full = AdaProj(12, 2, 12)  # each subspace is the whole space: every cosine is 1
    np.testing.assert_allclose(full.cosines(emb).numpy(), 1.0, rtol=1e-12)
    # a vector inside class 0's subspace has cosine 1 to it
    x = (m.centers[:, :3].double() @ torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)).view(1, -1)
    assert float(m.cosines(x)[0, 0]) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("trainable", [False, True])
def test_gradients(trainable):
    """Analytic gradients (through the Cholesky solve) equal numeric ones, to the embeddings and, when
    trainable, to the subspace bases; the scale never gets one."""
    emb, t = _data(B=5, D=6, C=3)
    m = AdaProj(6, 3, 2, trainable_centers=trainable, generator=torch.Generator().manual_seed(2)).eval()
    m.double()
    x = emb.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: m(e, t), (x,))
    if trainable:
        w = m.centers.detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda w_: AdaProj.forward(_with_centers(m, w_), emb, t), (w,))
        loss = m(x, t)
        loss.backward()
        assert m.centers.grad is not None and m.scale.grad is None
    else:
        assert m.centers.grad is None and not m.centers.requires_grad


def _with_centers(m, w):
    """``m`` with its centers replaced by the tensor ``w`` (for gradcheck)."""
    clone = AdaProj(m.embedding_dim, m.n_classes, m.subspace_dim).double().eval()
    del clone.centers
    clone.centers = w
    clone.scale.copy_(m.scale)
    return clone


def test_scale_update_function_and_nan_propagation():
    emb, t = _data(mixed=True)
    m = AdaProj(12, 4, 3)
    cos = m.cosines(emb)
    _l, s_ref, _c = formula(emb, m.centers, t, 4.0, 3, update=True)
    assert float(adaproj_updated_scale(cos, t, 4.0)) == pytest.approx(s_ref, rel=1e-10)
    bad = emb.clone()
    bad[2, 5] = float("nan")
    assert math.isnan(float(m(bad, t)))


def test_predict_proba_and_bad_arguments():
    emb, _t = _data()
    m = AdaProj(12, 4, 3)
    p = m.predict_proba(emb)
    assert p.shape == (7, 4)
    np.testing.assert_allclose(p.sum(1).numpy(), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="adaproj_dim"):
        AdaProj(8, 3, 9)
    with pytest.raises(ValueError, match=">= 1"):
        AdaProj(8, 0, 2)
