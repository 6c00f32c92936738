"""Sub-cluster AdaCos module and mixup against formulas written out here in float64."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastasd import ops
from fastasd.loss import SubclusterAdaCos, mixup

EPS32 = float(np.finfo(np.float32).eps)


def formula(emb, centers, targets, scale, K, update, angle_mode="sum"):
    """(loss, scale used) by the SPEC's formulas, float64 numpy, explicit sums."""
    x = np.asarray(emb, np.float64)
    w = np.asarray(centers, np.float64)
    t = np.asarray(targets, np.float64)
    B, C = t.shape
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    wn = w / np.linalg.norm(w, axis=0, keepdims=True)
    cos = xn @ wn  # [B, C*K]
    s = float(scale)
    if update:
        logits = s * cos
        M = logits.max()
        b_avg = np.mean([np.sum(np.exp(logits[b] - M)) for b in range(B)])
        theta = np.arccos(np.clip(cos, -1 + EPS32, 1 - EPS32))
        per_sample = []
        for b in range(B):
            if angle_mode == "sum":
                n_mixed = np.count_nonzero(t[b])
                a = sum(t[b, c] * theta[b, c * K + k] for c in range(C) for k in range(K)) * n_mixed
            else:
                a = sum(t[b, c] * min(theta[b, c * K:(c + 1) * K]) for c in range(C)) / t[b].sum()
            per_sample.append(a)
        med = sorted(per_sample)[(B - 1) // 2]  # lower median
        s = (M + math.log(b_avg)) / math.cos(min(math.pi / 4, med))
    loss = 0.0
    for b in range(B):
        z = np.exp(s * cos[b])
        for c in range(C):
            p = z[c * K:(c + 1) * K].sum() / z.sum()
            loss -= t[b, c] * math.log(p)
    return loss / B, s


def _data(B=6, D=8, C=3, K=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, D, generator=g, dtype=torch.float64)
    labels = torch.arange(B) % C
    onehot = torch.nn.functional.one_hot(labels, C).double()
    return emb, onehot, g


def test_initial_scale_and_state():
    m = SubclusterAdaCos(8, 5, 16)
    assert float(m.scale) == pytest.approx(math.sqrt(2) * math.log(5 * 16 - 1), rel=1e-7)
    assert m.centers.shape == (8, 80)
    assert set(m.state_dict()) == {"centers", "scale"}
    assert list(m.parameters()) == []  # fixed centers and the scale are buffers
    limit = math.sqrt(6 / (8 + 80))  # Glorot uniform bound
    assert m.centers.abs().max() <= limit
    t = SubclusterAdaCos(8, 5, 16, trainable_centers=True)
    assert [n for n, _ in t.named_parameters()] == ["centers"]
    assert set(t.state_dict()) == {"centers", "scale"}


@pytest.mark.parametrize("use_mixup", [False, True])
def test_training_loss_and_scale_update_match_formula(use_mixup):
    emb, targets, g = _data()
    if use_mixup:
        _, targets = mixup(torch.zeros(6, 4, dtype=torch.float64), targets, g, "max")
        assert (targets > 0).sum(dim=1).max() == 2  # really mixed labels
    m = SubclusterAdaCos(8, 3, 4, generator=torch.Generator().manual_seed(1)).train()
    s0 = float(m.scale)
    loss_ref, s_ref = formula(emb, m.centers, targets, s0, 4, update=True)
    loss = m(emb.float(), targets.float())
    # module computes in float32: relative tolerance 1e-4
    assert float(loss) == pytest.approx(loss_ref, rel=1e-4)
    assert float(m.scale) == pytest.approx(s_ref, rel=1e-4)
    assert float(m.scale) != pytest.approx(s0, rel=1e-3)  # the update did something
    # the op in float64 matches the formula tightly (1e-10)
    loss64, s64 = ops.subcluster_adacos(emb, m.centers.double(), targets, s0, 4, True)
    assert float(loss64) == pytest.approx(loss_ref, rel=1e-10)
    assert float(s64) == pytest.approx(s_ref, rel=1e-10)


def test_eval_mode_uses_stored_scale_without_update():
    emb, targets, _ = _data(seed=3)
    m = SubclusterAdaCos(8, 3, 4).eval()
    m.scale.fill_(7.5)
    loss_ref, _ = formula(emb, m.centers, targets, 7.5, 4, update=False)
    loss = m(emb.float(), targets.float())
    assert float(m.scale) == 7.5
    assert float(loss) == pytest.approx(loss_ref, rel=1e-4)


def test_nearest_angle_mode():
    # embeddings close to a sub-cluster of their own class so that theta_med < pi/4 and the two
    # angle rules give different scales
    B, D, C, K = 6, 16, 3, 4
    m_sum = SubclusterAdaCos(D, C, K, angle_mode="sum", generator=torch.Generator().manual_seed(2))
    m_near = SubclusterAdaCos(D, C, K, angle_mode="nearest", generator=torch.Generator().manual_seed(2))
    labels = torch.arange(B) % C
    targets = torch.nn.functional.one_hot(labels, C).float()
    g = torch.Generator().manual_seed(5)
    emb = m_sum.centers[:, labels * K + 1].T + 0.01 * torch.randn(B, D, generator=g)
    s0 = float(m_near.scale)
    loss_ref, s_ref = formula(emb, m_near.centers, targets, s0, K, update=True, angle_mode="nearest")
    loss = m_near(emb, targets)
    assert float(m_near.scale) == pytest.approx(s_ref, rel=1e-4)
    assert float(loss) == pytest.approx(loss_ref, rel=1e-4)
    _, s_sum_ref = formula(emb, m_sum.centers, targets, s0, K, update=True, angle_mode="sum")
    m_sum(emb, targets)
    assert float(m_sum.scale) == pytest.approx(s_sum_ref, rel=1e-4)
    assert abs(s_ref - s_sum_ref) > 1e-2 * abs(s_sum_ref)


def test_gradients_scale_and_centers():
    emb, targets, _ = _data()
    emb = emb.float().requires_grad_(True)
    fixed = SubclusterAdaCos(8, 3, 4).train()
    fixed(emb, targets.float()).backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0
    assert not fixed.centers.requires_grad and fixed.centers.grad is None
    assert not fixed.scale.requires_grad and fixed.scale.grad is None
    trainable = SubclusterAdaCos(8, 3, 4, trainable_centers=True).train()
    trainable(emb.detach(), targets.float()).backward()
    assert trainable.centers.grad is not None and trainable.centers.grad.abs().sum() > 0
    assert trainable.scale.grad is None


def test_predict_proba():
    emb, targets, _ = _data()
    m = SubclusterAdaCos(8, 3, 4)
    p = m.predict_proba(emb)
    assert p.shape == (6, 3)
    torch.testing.assert_close(p.sum(dim=1), torch.ones(6), rtol=0, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="angle_mode"):
        SubclusterAdaCos(8, 3, 4, angle_mode="mean")
    with pytest.raises(ValueError, match="label_rule"):
        mixup(torch.zeros(2, 3), torch.zeros(2, 2), None, "min")


@pytest.mark.parametrize("rule", ["max", "sum"])
def test_mixup_partner_lambda_and_label_rule(rule):
    B = 5
    eye = torch.eye(B)
    # waveforms and labels are identity rows: every mixed row reveals its lambda and partner
    x, y = mixup(eye * 2.0, eye, torch.Generator().manual_seed(11), label_rule=rule)
    lam = torch.rand(B, generator=torch.Generator().manual_seed(11))  # the documented draw
    assert ((lam >= 0) & (lam < 1)).all()
    for b in range(B):
        p = B - 1 - b  # partner = the batch reversed
        if p == b:  # the middle sample is mixed with itself
            assert float(x[b, b]) == pytest.approx(2.0, abs=1e-6)
            expected = max(lam[b], 1 - lam[b]) if rule == "max" else 1.0
            assert float(y[b, b]) == pytest.approx(float(expected), abs=1e-6)
            continue
        # the same lambda in waveform and label
        assert float(x[b, b]) == pytest.approx(2 * float(lam[b]), abs=1e-6)
        assert float(x[b, p]) == pytest.approx(2 * (1 - float(lam[b])), abs=1e-6)
        assert float(y[b, b]) == pytest.approx(float(lam[b]), abs=1e-6)
        assert float(y[b, p]) == pytest.approx(1 - float(lam[b]), abs=1e-6)
        assert torch.count_nonzero(x[b]) <= 2
    # overlapping labels (same class) distinguish the rules: max keeps max(lam, 1-lam), sum gives 1
    same = torch.ones(4, 1)
    _, ys = mixup(torch.zeros(4, 3), same, torch.Generator().manual_seed(3), label_rule=rule)
    lam4 = torch.rand(4, generator=torch.Generator().manual_seed(3))
    expected = torch.maximum(lam4, 1 - lam4) if rule == "max" else torch.ones(4)
    torch.testing.assert_close(ys[:, 0], expected, rtol=0, atol=1e-6)


def test_mixup_without_generator_keeps_dtype():
    x, y = mixup(torch.randn(4, 10, dtype=torch.float64), torch.eye(4)[:, :3], None)
    assert x.dtype == torch.float64 and y.shape == (4, 3)
    assert (y.sum(dim=1) <= 1 + 1e-6).all()  # max rule never exceeds the one-hot mass
