"""The embedding network of the paper: a spectrogram ResNet branch and a spectrum CNN branch.

Shapes for 10-s clips at 16 kHz (PyTorch layout ``[B, C, T, F]``; the paper's tables list T x F x C):

Spectrogram branch (input 311 x 513 x 1):
  per-frequency BatchNorm (statistics over batch and time)
  conv 7x7/2, 16 ch, Keras "same" -> 156 x 257 x 16; BN; ReLU; max-pool 3x3/2 "valid" -> 77 x 128 x 16
  stage 1 (16 ch)  -> 77 x 128 x 16     stage 2 (32 ch, stride 2) -> 39 x 64 x 32
  stage 3 (64 ch)  -> 20 x 32 x 64      stage 4 (128 ch)          -> 10 x 16 x 128
  max over time -> 16 x 128; flatten 2048; BN; linear -> 128
Spectrum branch (input 80,000 x 1), all convs Keras "same" padding (the sizes need it):
  conv1d k256/64 -> 1250 x 128; ReLU; conv1d k64/32 -> 40 x 128; ReLU; conv1d k16/4 -> 10 x 128; ReLU
  flatten 1280; [dense 128 -> BN -> ReLU] x spectrum_dense_layers; linear -> 128

Residual block (pre-activation, as in the author's code the shortcut branches off after the
block's first BN): ``h = BN(x)``; ``r = conv3x3(ReLU(BN(conv3x3_s(ReLU(h)))))``; output
``shortcut(h) + r`` with ``shortcut = identity`` or, for the first block of stages 2-4,
``conv1x1(maxpool2x2_same(h))``. This is exactly the author's code for stages 2-4; inside
stage 1 the author's code has two quirks we do not copy (SPEC's uniform block is used): its first
block feeds ``ReLU(x)`` (not ``ReLU(BN(x))``) to the residual path and has no BN between the two
convs, and its second block applies ReLU before (not after) the middle BN.

Other clip lengths: every size is computed from ``num_samples``; the spectrogram branch takes the
max over the whole remaining time axis (= the author's 10 x 1 pooling for 10-s clips), so its
flatten size depends only on the frequency axis; the spectrum branch's flatten size scales with
the clip length ("same" convolutions never shrink below 1). A clip too short for the spectrogram
branch raises ``ValueError`` at construction.

Initialization follows Keras defaults (the author trained with Keras): Glorot-uniform kernels,
zero biases, BN gamma 1 / beta 0; BN epsilon and momentum from the config.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastasd.config import Config
from fastasd.frontend import Frontend, spectrogram_size, spectrum_size

__all__ = ["EmbeddingNet", "SpectrogramBranch", "SpectrumBranch", "combine_embeddings", "l2_penalty", "same_padding"]

_HIDDEN = 128  # width of the spectrum branch's dense layers (paper, Tab. 2)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Keras/TF "same" padding ``(before, after)`` along one axis: output ``ceil(size/stride)``,
    the odd extra padding goes after (right/bottom)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _SameConv(nn.Module):
    """Conv1d/Conv2d with Keras "same" padding applied by ``F.pad`` before an unpadded conv."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, kernel: int, stride: int, bias: bool):
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.conv = conv(in_ch, out_ch, kernel, stride=stride, padding=0, bias=bias)
        self.kernel, self.stride, self.dims = kernel, stride, dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad: list[int] = []
        for size in reversed(x.shape[2:]):  # F.pad wants the last axis first
            pad.extend(same_padding(size, self.kernel, self.stride))
        if any(pad):
            x = F.pad(x, pad)
        return self.conv(x)


def _bn2d(ch: int, cfg: Config) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=cfg.bn_eps, momentum=cfg.bn_momentum)


def _bn1d(ch: int, cfg: Config) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(ch, eps=cfg.bn_eps, momentum=cfg.bn_momentum)


class _ResBlock(nn.Module):
    """Pre-activation residual block (see the module docstring)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, cfg: Config):
        super().__init__()
        b = cfg.use_bias
        self.bn1 = _bn2d(in_ch, cfg)
        self.conv1 = _SameConv(2, in_ch, out_ch, 3, stride, b)
        self.bn2 = _bn2d(out_ch, cfg)
        self.conv2 = _SameConv(2, out_ch, out_ch, 3, 1, b)
        self.downsample = stride != 1 or in_ch != out_ch
        if self.downsample:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, bias=b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn1(x)
        r = self.conv1(F.relu(h))
        r = self.conv2(F.relu(self.bn2(r)))
        if self.downsample:
            # 2x2 max-pool with Keras "same" padding == ceil_mode (a partial last window)
            h = self.shortcut(F.max_pool2d(h, 2, 2, ceil_mode=True))
        return h + r


class SpectrogramBranch(nn.Module):
    """Spectrogram ResNet: ``[B, 1, T, F]`` -> ``[B, embedding_dim]``."""

    CHANNELS = (16, 32, 64, 128)

    def __init__(self, cfg: Config, frames: int, bins: int):
        super().__init__()
        self.input_bn = _bn1d(bins, cfg)  # per frequency bin, statistics over batch and time
        self.conv = _SameConv(2, 1, 16, 7, 2, cfg.use_bias)
        self.bn = _bn2d(16, cfg)
        blocks, in_ch = [], 16
        for i, ch in enumerate(self.CHANNELS):
            blocks.append(_ResBlock(in_ch, ch, 1 if i == 0 else 2, cfg))
            blocks.append(_ResBlock(ch, ch, 1, cfg))
            in_ch = ch
        self.blocks = nn.ModuleList(blocks)
        # sizes, checked now so that a too-short clip fails at construction with a clear message
        t, f = frames, bins
        sizes = {"input": (t, f)}
        t, f = -(-t // 2), -(-f // 2)
        sizes["conv"] = (t, f)
        t, f = (t - 3) // 2 + 1, (f - 3) // 2 + 1
        sizes["pool"] = (t, f)
        for i in range(1, 4):
            t, f = -(-t // 2), -(-f // 2)
            sizes[f"stage{i + 1}"] = (t, f)
        bad = [k for k, (a, b) in sizes.items() if a < 1 or b < 1]
        if bad:
            raise ValueError(f"SpectrogramBranch: input {frames} frames x {bins} bins is too small "
                             f"(size < 1 after {bad[0]}); use longer clips (clip_seconds) or "
                             f"representation='spectrum'")
        self.sizes = sizes
        self.flat_dim = f * self.CHANNELS[-1]
        self.flat_bn = _bn1d(self.flat_dim, cfg)
        self.embed = nn.Linear(self.flat_dim, cfg.embedding_dim, bias=cfg.use_bias)

    def forward(self, x: torch.Tensor, feats: dict | None = None) -> torch.Tensor:
        """``x``: ``[B, 1, T, F]``; ``feats`` (optional) collects intermediate tensors by name."""
        x = self.input_bn(x.squeeze(1).transpose(1, 2)).transpose(1, 2).unsqueeze(1)
        x = self.conv(x)
        _put(feats, "spectrogram.conv", x)
        x = F.max_pool2d(F.relu(self.bn(x)), 3, 2)  # Keras "valid" pooling: 156x257 -> 77x128
        _put(feats, "spectrogram.pool", x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i % 2 == 1:
                _put(feats, f"spectrogram.stage{i // 2 + 1}", x)
        x = x.amax(dim=2)  # max over time -> [B, C, F]
        x = x.transpose(1, 2).flatten(1)  # Keras order (F, C) -> [B, F*C]
        _put(feats, "spectrogram.flat", x)
        return self.embed(self.flat_bn(x))


class SpectrumBranch(nn.Module):
    """Spectrum CNN: ``[B, L]`` magnitude spectrum -> ``[B, embedding_dim]``."""

    CONVS = ((256, 64), (64, 32), (16, 4))  # (kernel, stride); the paper's 16 -> 32 (see SPEC)

    def __init__(self, cfg: Config, length: int):
        super().__init__()
        if length < 1:
            raise ValueError(f"SpectrumBranch: spectrum length must be >= 1, got {length}")
        convs, in_ch, sizes = [], 1, [length]
        for k, s in self.CONVS:
            convs.append(_SameConv(1, in_ch, 128, k, s, cfg.use_bias))
            in_ch = 128
            sizes.append(-(-sizes[-1] // s))
        self.convs = nn.ModuleList(convs)
        self.sizes = sizes
        self.flat_dim = sizes[-1] * 128
        dense, width = [], self.flat_dim
        for _ in range(cfg.spectrum_dense_layers):
            dense += [nn.Linear(width, _HIDDEN, bias=cfg.use_bias), _bn1d(_HIDDEN, cfg), nn.ReLU()]
            width = _HIDDEN
        self.dense = nn.Sequential(*dense)
        self.embed = nn.Linear(width, cfg.embedding_dim, bias=cfg.use_bias)

    def forward(self, x: torch.Tensor, feats: dict | None = None) -> torch.Tensor:
        """``x``: ``[B, L]``; ``feats`` (optional) collects intermediate tensors by name."""
        x = x.unsqueeze(1)
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            _put(feats, f"spectrum.conv{i + 1}", x)
        x = x.transpose(1, 2).flatten(1)  # Keras order (L, C)
        _put(feats, "spectrum.flat", x)
        return self.embed(self.dense(x))


def _put(feats: dict | None, name: str, x: torch.Tensor) -> None:
    if feats is not None:
        feats[name] = x


def combine_embeddings(embs: list[torch.Tensor], combine: str) -> torch.Tensor:
    """The file's embedding from the branch embeddings (spectrum first, then spectrogram): the one
    branch's alone, their sum (``combine="add"``) or their concatenation."""
    if len(embs) == 1:
        return embs[0]
    if combine == "add":
        return embs[0] + embs[1]
    return torch.cat(embs, dim=1)


class EmbeddingNet(nn.Module):
    """Frontend + branches: waveforms ``[B, num_samples]`` -> embeddings ``[B, embedding_dim]``.

    ``embedding_dim`` = 2 * ``config.embedding_dim`` for both branches concatenated (spectrum
    branch first, then spectrogram, as in the author's code), else ``config.embedding_dim``
    (``combine="add"`` or a single branch).
    """

    def __init__(self, config: Config, num_samples: int | None = None):
        super().__init__()
        self.config = config
        self.num_samples = int(config.num_samples if num_samples is None else num_samples)
        self.frontend = Frontend(config)
        self.spectrogram_branch = self.spectrum_branch = None
        if self.frontend.use_spectrogram:
            if self.num_samples < config.n_fft:
                raise ValueError(f"EmbeddingNet: num_samples={self.num_samples} < n_fft={config.n_fft}")
            frames, bins = spectrogram_size(config, self.num_samples)
            self.spectrogram_branch = SpectrogramBranch(config, frames, bins)
        if self.frontend.use_spectrum:
            self.spectrum_branch = SpectrumBranch(config, spectrum_size(self.num_samples))
        both = config.representation == "both"
        self.embedding_dim = config.embedding_dim * (2 if both and config.combine == "concatenate" else 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Keras default initialization: Glorot-uniform kernels, zero biases, BN gamma 1, beta 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_parameters()

    def _run(self, waveforms: torch.Tensor, feats: dict | None) -> torch.Tensor:
        if waveforms.dim() != 2 or waveforms.shape[1] != self.num_samples:
            raise ValueError(f"EmbeddingNet: waveforms must be [B, {self.num_samples}], "
                             f"got {tuple(waveforms.shape)}")
        spec, spectrum = self.frontend(waveforms)
        _put(feats, "spectrogram.input", spec)
        _put(feats, "spectrum.input", spectrum)
        embs = []
        if self.spectrum_branch is not None:
            embs.append(self.spectrum_branch(spectrum, feats))
        if self.spectrogram_branch is not None:
            embs.append(self.spectrogram_branch(spec, feats))
        return combine_embeddings(embs, self.config.combine)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """``waveforms [B, num_samples]`` (float) -> embeddings ``[B, embedding_dim]``."""
        return self._run(waveforms, None)

    def forward_features(self, waveforms: torch.Tensor) -> dict[str, torch.Tensor]:
        """Like :meth:`forward` but returns every intermediate tensor by name (for tests and
        inspection), with the embedding under ``"embedding"``."""
        feats: dict[str, torch.Tensor] = {}
        feats["embedding"] = self._run(waveforms, feats)
        return feats


def l2_penalty(model: nn.Module) -> torch.Tensor:
    """``sum(w**2)`` over the kernels of every Conv1d/Conv2d/Linear of ``model`` (not biases,
    not BatchNorm, not loss centers). Multiply by ``config.l2`` and add to the loss (Keras
    ``kernel_regularizer=l2(1e-5)``)."""
    total = None
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            sq = m.weight.pow(2).sum()
            total = sq if total is None else total + sq
    if total is None:
        return torch.zeros(())
    return total

