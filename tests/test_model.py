"""EmbeddingNet / Frontend: SPEC shapes, clip lengths, ablation switches, bias, init, L2 penalty."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from fastasd import ops
from fastasd.config import Config
from fastasd.frontend import Frontend, mel_filterbank
from fastasd.model import EmbeddingNet, l2_penalty, same_padding

SHORT = Config(clip_seconds=2.0)  # fast clips for everything but the 10-s shape test


def _wave(cfg: Config, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.num_samples, generator=g) * 0.1


def test_spec_shapes_10s():
    cfg = Config()
    torch.manual_seed(0)
    net = EmbeddingNet(cfg, cfg.num_samples)
    with torch.no_grad():
        f = net.forward_features(_wave(cfg))
    # [B, C, T, F] in PyTorch layout; SPEC lists T x F x C
    expected = {
        "spectrogram.input": (2, 1, 311, 513),
        "spectrogram.conv": (2, 16, 156, 257),
        "spectrogram.pool": (2, 16, 77, 128),
        "spectrogram.stage1": (2, 16, 77, 128),
        "spectrogram.stage2": (2, 32, 39, 64),
        "spectrogram.stage3": (2, 64, 20, 32),
        "spectrogram.stage4": (2, 128, 10, 16),
        "spectrogram.flat": (2, 2048),
        "spectrum.input": (2, 80000),
        "spectrum.conv1": (2, 128, 1250),
        "spectrum.conv2": (2, 128, 40),
        "spectrum.conv3": (2, 128, 10),
        "spectrum.flat": (2, 1280),
        "embedding": (2, 256),
    }
    assert {k: tuple(v.shape) for k, v in f.items()} == expected
    assert net.embedding_dim == 256
    assert torch.isfinite(f["embedding"]).all()


@pytest.mark.parametrize("seconds, spectrum_sizes", [(2.0, [16000, 250, 8, 2]), (6.0, [48000, 750, 24, 6])])
def test_other_clip_lengths(seconds, spectrum_sizes):
    cfg = Config(clip_seconds=seconds)
    net = EmbeddingNet(cfg, cfg.num_samples)
    assert net.spectrum_branch.sizes == spectrum_sizes
    assert net.spectrogram_branch.flat_dim == 2048  # max over all remaining frames
    out = net(_wave(cfg))
    assert out.shape == (2, 256) and torch.isfinite(out).all()
    out.sum().backward()  # trainable end to end
    assert net.spectrogram_branch.conv.conv.weight.grad is not None
    assert net.spectrum_branch.convs[0].conv.weight.grad is not None


def test_too_short_clip_is_a_clear_error():
    cfg = Config(clip_seconds=0.1, n_fft=512, hop=512)  # 1600 samples -> 3 frames -> pool size 0
    with pytest.raises(ValueError, match="too small"):
        EmbeddingNet(cfg, cfg.num_samples)
    net = EmbeddingNet(cfg.replace(representation="spectrum"), cfg.num_samples)  # fine alone
    assert net(_wave(cfg)).shape == (2, 128)
    with pytest.raises(ValueError, match=r"\[B, 1600\]"):
        net(torch.zeros(2, 1000))


def _kernels_and_biases(net: nn.Module):
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    return layers, [m.bias for m in layers if m.bias is not None]


def test_no_bias_by_default_bias_with_use_bias():
    layers, biases = _kernels_and_biases(EmbeddingNet(SHORT))
    assert len(layers) == 3 + 5 + 1 + 8 * 2 + 3 + 1  # spectrum convs+dense, conv, blocks, shortcuts, emb
    assert biases == []
    layers, biases = _kernels_and_biases(EmbeddingNet(SHORT.replace(use_bias=True)))
    assert len(biases) == len(layers)
    assert all(torch.count_nonzero(b) == 0 for b in biases)  # Keras: zero-initialized biases


@pytest.mark.parametrize("overrides, dim", [
    ({"combine": "add"}, 128),
    ({"representation": "spectrogram"}, 128),
    ({"representation": "spectrum"}, 128),
    ({"embedding_dim": 32}, 64),
])
def test_embedding_dims(overrides, dim):
    cfg = SHORT.replace(**overrides)
    net = EmbeddingNet(cfg)
    assert net.embedding_dim == dim
    assert net(_wave(cfg)).shape == (2, dim)
    if cfg.representation == "spectrum":
        assert net.spectrogram_branch is None
    if cfg.representation == "spectrogram":
        assert net.spectrum_branch is None


def test_add_is_sum_of_branch_embeddings():
    cfg = SHORT.replace(combine="add")
    net = EmbeddingNet(cfg).eval()
    w = _wave(cfg)
    with torch.no_grad():
        spec, spectrum = net.frontend(w)
        expected = net.spectrum_branch(spectrum) + net.spectrogram_branch(spec)
        torch.testing.assert_close(net(w), expected, rtol=0, atol=0)


def test_frontend_matches_definitions():
    cfg = SHORT
    w = _wave(cfg, seed=1)
    spec, spectrum = Frontend(cfg)(w)
    torch.testing.assert_close(spec[:, 0], ops.stft_magnitude(w, 1024, 512, True))
    ref = np.abs(np.fft.fft(w.double().numpy(), axis=1))[:, : cfg.num_samples // 2]
    np.testing.assert_allclose(spectrum.double().numpy(), ref, rtol=1e-4, atol=1e-3)  # float32 FFT
    spec_nn, _ = Frontend(cfg.replace(temporal_normalization=False))(w)
    torch.testing.assert_close(spec_nn[:, 0], ops.stft_magnitude(w, 1024, 512, False))
    spec_only, none = Frontend(cfg.replace(representation="spectrogram"))(w)
    assert none is None and spec_only.shape == (2, 1, 61, 513)


def test_logmel_frontend_and_model():
    cfg = SHORT.replace(spectrogram_type="logmel")
    w = _wave(cfg)
    spec, _ = Frontend(cfg)(w)
    assert spec.shape == (2, 1, 61, 128)
    # temporal normalization: zero mean over frames per clip and mel bin (tolerance float32)
    assert spec.mean(dim=2).abs().max() < 1e-3
    # the same computation by hand
    mag = ops.stft_magnitude(w, 1024, 512, False)
    mel = 10 * torch.log10(torch.clamp(mag**2 @ mel_filterbank(513, 128, 16000), min=1e-10))
    torch.testing.assert_close(spec[:, 0], mel - mel.mean(dim=1, keepdim=True), rtol=1e-4, atol=1e-3)
    net = EmbeddingNet(cfg)
    assert net.spectrogram_branch.flat_dim == 4 * 128  # 128 mel bins -> 64 -> 31 -> 16 -> 8 -> 4
    assert net(w).shape == (2, 256)


def test_mel_filterbank_triangles():
    fb = mel_filterbank(513, 128, 16000)
    assert fb.shape == (513, 128)
    assert fb.min() >= 0 and fb.max() <= 1 + 1e-6
    assert (fb.sum(dim=0) > 0).all()  # no empty band at 1024-point resolution
    peaks = fb.argmax(dim=0)
    assert (peaks[1:] >= peaks[:-1]).all()  # bands ordered by frequency


@pytest.mark.parametrize("size, kernel, stride, expected", [
    (311, 7, 2, (3, 3)), (513, 7, 2, (3, 3)), (156, 3, 2, (0, 1)), (77, 3, 2, (1, 1)),
    (80000, 256, 64, (96, 96)), (1250, 64, 32, (31, 31)), (40, 16, 4, (6, 6)), (10, 3, 1, (1, 1)),
])
def test_keras_same_padding(size, kernel, stride, expected):
    before, after = same_padding(size, kernel, stride)
    assert (before, after) == expected
    assert (size + before + after - kernel) // stride + 1 == math.ceil(size / stride)


def test_keras_initialization_and_bn_settings():
    torch.manual_seed(0)
    net = EmbeddingNet(SHORT)
    for m in net.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            w = m.weight
            rf = w[0, 0].numel() if w.dim() > 2 else 1
            limit = math.sqrt(6.0 / (w.shape[1] * rf + w.shape[0] * rf))
            assert w.abs().max() <= limit
            if w.numel() > 10000:  # uniform(-a, a) has std a / sqrt(3); 5 % tolerance
                assert abs(w.std().item() - limit / math.sqrt(3)) < 0.05 * limit / math.sqrt(3)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert (m.eps, m.momentum) == (1e-3, 0.01)
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_l2_penalty_is_sum_of_kernel_squares():
    net = EmbeddingNet(SHORT.replace(use_bias=True))
    for m in net.modules():  # make BN and bias values non-zero so that including them would show
        if isinstance(m, nn.modules.batchnorm._BatchNorm) or getattr(m, "bias", None) is not None:
            nn.init.constant_(m.bias, 3.0)
    expected = sum(float((m.weight.detach().double() ** 2).sum()) for m in net.modules()
                   if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)))
    got = l2_penalty(net)
    assert got.requires_grad
    assert abs(float(got.detach()) - expected) <= 1e-5 * expected
