"""Frontend: the two input representations of a batch of mono waveforms.

- Spectrogram: magnitude STFT (``n_fft`` frames, ``hop``, periodic Hann, no centering or padding)
  via :func:`fastasd.ops.stft_magnitude`, with temporal mean normalization (per clip and frequency
  bin, the mean over frames is subtracted) when ``config.temporal_normalization``.
  ``spectrogram_type="logmel"`` (ablation) instead maps the power spectrogram ``|X|^2`` through an
  HTK-formula triangular mel filterbank (``n_mels`` bins, 0 Hz .. sample_rate/2, unnormalized
  triangles as ``tf.signal.linear_to_mel_weight_matrix``), takes ``10 * log10(max(mel, 1e-10))``
  (dB) and then, when enabled, subtracts the temporal mean of the log-mel values.
- Spectrum: ``|FFT|`` of the whole clip, the first ``N // 2`` bins.

The frontend has no trainable parameters and always computes in float32 (autocast disabled).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from fastasd import ops
from fastasd.config import Config

__all__ = ["Frontend", "mel_filterbank", "spectrogram_size", "spectrum_size"]

_LOGMEL_FLOOR = 1e-10  # power floor before the dB conversion (librosa/TF power_to_db amin)


def _hz_to_mel(f: torch.Tensor | float) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_filterbank(n_bins: int, n_mels: int, sample_rate: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """Triangular HTK-mel filterbank ``[n_bins, n_mels]`` (float32) mapping a linear spectrum
    with ``n_bins`` bins spanning 0 .. sample_rate/2 to ``n_mels`` bands.

    Triangles are defined on the mel axis with peak 1 (no area normalization); the DC bin gets
    weight 0, as in ``tf.signal.linear_to_mel_weight_matrix``.
    """
    f_max = sample_rate / 2.0 if f_max is None else f_max
    bin_mel = _hz_to_mel(torch.linspace(0.0, sample_rate / 2.0, n_bins, dtype=torch.float64))
    edges = torch.linspace(float(_hz_to_mel(f_min)), float(_hz_to_mel(f_max)), n_mels + 2,
                           dtype=torch.float64)
    left, center, right = edges[:-2], edges[1:-1], edges[2:]  # [n_mels] each
    up = (bin_mel[:, None] - left) / (center - left)
    down = (right - bin_mel[:, None]) / (right - center)
    weights = torch.clamp(torch.minimum(up, down), min=0.0)
    weights[0] = 0.0
    return weights.to(torch.float32)


def spectrogram_size(config: Config, num_samples: int) -> tuple[int, int]:
    """``(frames, bins)`` of the spectrogram for clips of ``num_samples`` samples."""
    frames = 1 + (num_samples - config.n_fft) // config.hop
    bins = config.n_mels if config.spectrogram_type == "logmel" else config.n_fft // 2 + 1
    return frames, bins


def spectrum_size(num_samples: int) -> int:
    """Bins of the magnitude spectrum: ``num_samples // 2``."""
    return num_samples // 2


class Frontend(nn.Module):
    """Waveforms ``[B, N]`` -> ``(spectrogram [B, 1, T, F] | None, spectrum [B, N // 2] | None)``.

    Which outputs are computed follows ``config.representation`` (``both``, ``spectrogram``,
    ``spectrum``); the other one is ``None``.
    """

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.use_spectrogram = config.representation in ("both", "spectrogram")
        self.use_spectrum = config.representation in ("both", "spectrum")
        self.logmel = config.spectrogram_type == "logmel"
        if self.logmel:
            fb = mel_filterbank(config.n_fft // 2 + 1, config.n_mels, config.sample_rate)
            self.register_buffer("mel_weights", fb, persistent=False)

    def forward(self, waveforms: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """See the class docstring; ``waveforms`` are float samples in [-1, 1] (any scale works)."""
        if waveforms.dim() != 2:
            raise ValueError(f"Frontend: waveforms must be [B, N], got {tuple(waveforms.shape)}")
        cfg = self.config
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            w = waveforms.float()
            spec = spectrum = None
            if self.use_spectrogram:
                if self.logmel:
                    mag = self.stft_magnitude(w, False)
                    mel = (mag * mag) @ self.mel_weights
                    spec = 10.0 * torch.log10(torch.clamp(mel, min=_LOGMEL_FLOOR))
                    if cfg.temporal_normalization:
                        spec = spec - spec.mean(dim=1, keepdim=True)
                else:
                    spec = self.stft_magnitude(w, cfg.temporal_normalization)
                spec = spec.unsqueeze(1)  # [B, 1, T, F]
            if self.use_spectrum:
                spectrum = self.full_spectrum(w)
        return spec, spectrum

    def stft_magnitude(self, w: torch.Tensor, normalize: bool) -> torch.Tensor:
        """``[B, T, n_fft // 2 + 1]`` magnitude STFT of ``w`` (:func:`fastasd.ops.stft_magnitude`).
        Subclasses may compute it otherwise (the ONNX export: :mod:`fastasd.export`)."""
        return ops.stft_magnitude(w, self.config.n_fft, self.config.hop, normalize)

    def full_spectrum(self, w: torch.Tensor) -> torch.Tensor:
        """``[B, N // 2]`` magnitude spectrum of the whole clip (the first ``N // 2`` rfft bins)."""
        return torch.fft.rfft(w, dim=1).abs()[:, : w.shape[1] // 2]

    def extra_repr(self) -> str:
        c = self.config
        return (f"representation={c.representation}, spectrogram_type={c.spectrogram_type}, "
                f"n_fft={c.n_fft}, hop={c.hop}, temporal_normalization={c.temporal_normalization}")

