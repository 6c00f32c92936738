"""Fitting the backends of trained networks: embed the training clips once with every ensemble
member, fit one backend per member per section, and set the per-section decision thresholds on
the summed training scores. :func:`fastasd.api.fit_detector` wraps the result in a ``Detector``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from fastasd.config import Config

__all__ = ["section_key", "backend_domain", "embed_clips", "fit_backends"]


def section_key(machine_type: str, section: str) -> str:
    """The backend's section key: ``"<machine_type>/<section>"`` (``/`` never occurs in a name)."""
    return f"{machine_type}/{section}"


def backend_domain(domain: str) -> str:
    """The backend's domain of a clip: layouts without domains (DCASE 2020) have only
    source-like data."""
    return "target" if domain == "target" else "source"


def embed_clips(detector_models: Sequence[torch.nn.Module], clips: Sequence, config: Config,
                device: torch.device, batch_size: int = 64, progress: bool | None = None,
                errors: list | None = None) -> tuple[list[int], list[np.ndarray]]:
    """Embed clips with every model (audio read once): ``(kept clip indices, [member -> [n, D]])``.

    The models are put in eval mode and run fused for inference (as
    :meth:`fastasd.api.Detector.inference_model`: not with ``FASTASD_BACKEND=reference`` or
    ``FASTASD_FUSED_INFERENCE=0``)."""
    from fastasd.data.dataset import iter_audio_batches
    from fastasd.inference import fused_enabled, inference_module

    kept: list[int] = []
    parts: list[list[np.ndarray]] = [[] for _ in detector_models]
    for m in detector_models:
        m.eval()
    if fused_enabled():
        detector_models = [inference_module(m) for m in detector_models]
    with torch.inference_mode():
        for idx, waves in iter_audio_batches(clips, batch_size, config.num_samples,
                                             sample_rate=config.sample_rate, channel=config.channel,
                                             errors=errors, progress=bool(progress)):
            x = torch.from_numpy(waves).to(device)
            for i, m in enumerate(detector_models):
                parts[i].append(m(x).float().cpu().numpy())
            kept.extend(idx)
    dim = [getattr(m, "embedding_dim", 0) for m in detector_models]
    return kept, [np.concatenate(p, axis=0) if p else np.zeros((0, d), np.float32)
                  for p, d in zip(parts, dim)]


def fit_backends(config: Config, models: Sequence[torch.nn.Module], train_clips: Sequence,
                 device: torch.device, progress: bool | None = None
                 ) -> tuple[list, dict[str, float], list[str]]:
    """Embed the training clips with every member (eval mode), fit one backend per member on
    them (sections ``"machine_type/section"``, domains source/target) and set the per-section
    thresholds on the summed training scores.

    Returns:
        ``(backends, thresholds, unreadable)``: one fitted backend per member,
        ``{section key: threshold}``, and the paths of the training clips that could not be read.
    """
    from fastasd.backend import make_backend

    errors: list = []
    kept, embs = embed_clips(models, train_clips, config, device, progress=progress, errors=errors)
    if not kept:
        raise ValueError("fit_detector: none of the training clips could be read")
    clips = [train_clips[i] for i in kept]
    keys = [section_key(c.machine_type, c.section) for c in clips]
    domains = [backend_domain(c.domain) for c in clips]
    backends, total = [], np.zeros(len(clips), dtype=np.float64)
    for emb in embs:
        b = make_backend(config).fit(emb, keys, domains)
        backends.append(b)
        total += b.train_scores_  # = its scores of the training clips (leave-one-out where they are references)
    keys_arr = np.asarray(keys)
    thresholds = {k: float(np.percentile(total[keys_arr == k], config.threshold_percentile))
                  for k in dict.fromkeys(keys)}
    return backends, thresholds, [p for p, _ in errors]
