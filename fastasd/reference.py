"""Pure-PyTorch definitions of fastasd's three operators.

These are the ground truth for the tests, the baseline of the benchmarks and the fallback when
the compiled extension is missing (``FASTASD_BACKEND=reference``). The native operators in
``csrc/`` implement exactly these contracts; the system calls them through ``fastasd.ops``.

All three work in the dtype of their inputs (tests call them in float64 as the reference).

NaN contract (every implementation, CPU and CUDA, holds it): NaN propagates, it is never dropped
by a maximum or a clamp. See each function's docstring for where it goes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_NORM_EPS = 1e-12  # as torch.nn.functional.normalize: x / max(||x||, eps)


def _check(cond: bool, op: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"fastasd::{op}: {msg}")


def num_frames(num_samples: int, n_fft: int, hop: int) -> int:
    """Frames of an unpadded, uncentered STFT: ``1 + (num_samples - n_fft) // hop``."""
    return 1 + (num_samples - n_fft) // hop


def stft_magnitude(waveforms: torch.Tensor, n_fft: int, hop: int, normalize: bool) -> torch.Tensor:
    """Magnitude STFT with optional temporal mean normalization.

    Args:
        waveforms: ``[B, N]`` real signals.
        n_fft: frame length = DFT length (periodic Hann window of this length).
        hop: hop size in samples.
        normalize: subtract, per clip and frequency bin, the mean over all frames.

    Returns:
        ``[B, T, F]`` with ``T = 1 + (N - n_fft) // hop`` frames (no centering, no padding) and
        ``F = n_fft // 2 + 1`` bins: ``|sum_n w[n] x[t*hop + n] exp(-2 pi i k n / n_fft)|``.
        A NaN sample gives NaN in every bin of the frames that contain it and, with
        ``normalize``, in every bin of its clip (the mean is NaN).
    """
    op = "stft_magnitude"
    _check(waveforms.dim() == 2, op, f"waveforms must be [B, N], got shape {tuple(waveforms.shape)}")
    _check(waveforms.is_floating_point(), op, f"waveforms must be floating point, got {waveforms.dtype}")
    _check(n_fft >= 2 and hop >= 1, op, f"need n_fft >= 2 and hop >= 1, got n_fft={n_fft}, hop={hop}")
    B, N = waveforms.shape
    _check(N >= n_fft, op, f"waveforms has {N} samples, fewer than n_fft={n_fft}")
    T, nbins = num_frames(N, n_fft, hop), n_fft // 2 + 1
    if B == 0:
        return waveforms.new_zeros((0, T, nbins))
    window = torch.hann_window(n_fft, periodic=True, dtype=waveforms.dtype, device=waveforms.device)
    frames = waveforms.unfold(1, n_fft, hop)  # [B, T, n_fft]
    mag = torch.fft.rfft(frames * window, n=n_fft, dim=-1).abs()  # [B, T, F]
    if normalize:
        mag = mag - mag.mean(dim=1, keepdim=True)
    return mag


def adacos_initial_scale(num_logits: int) -> float:
    """AdaCos's fixed initial scale ``sqrt(2) * ln(num_logits - 1)`` (num_logits = C*K)."""
    return math.sqrt(2.0) * math.log(max(num_logits - 1, 2))


def adacos_cosines(embeddings: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Cosine of each embedding row ``[B, D]`` with each center column ``[D, C*K]``."""
    x = F.normalize(embeddings, dim=1, eps=_NORM_EPS)
    w = F.normalize(centers, dim=0, eps=_NORM_EPS)
    return x @ w


def adacos_class_angles(cos: torch.Tensor, targets: torch.Tensor, n_subclusters: int,
                        angle_mode: str = "sum") -> torch.Tensor:
    """The angle ``[B]`` of each row to its own class, as the scale update defines it (see
    :func:`adacos_updated_scale` for the two ``angle_mode`` values); no gradient."""
    with torch.no_grad():
        B = cos.shape[0]
        eps = torch.finfo(torch.float32).eps  # Keras K.epsilon()-style clip, float32 eps
        theta = torch.acos(cos.detach().clamp(-1.0 + eps, 1.0 - eps)).view(B, -1, n_subclusters)  # [B,C,K]
        t = targets.detach().to(cos.dtype)
        if angle_mode == "sum":
            n_mixed = (t != 0).sum(dim=1).to(cos.dtype)
            return (t.unsqueeze(2) * theta).sum(dim=(1, 2)) * n_mixed
        if angle_mode == "nearest":
            return (t * theta.min(dim=2).values).sum(dim=1) / t.sum(dim=1).clamp_min(eps)
        raise ValueError(f"fastasd::subcluster_adacos: unknown angle_mode {angle_mode!r}")


def adacos_updated_scale(
    cos: torch.Tensor, targets: torch.Tensor, scale: float | torch.Tensor, n_subclusters: int,
    angle_mode: str = "sum",
) -> torch.Tensor:
    """One AdaCos scale update from a batch (no gradient flows through it).

    ``B_avg`` = mean over the batch of ``sum_j exp(s*cos[b,j] - M)`` with ``M = max_{b,j} s*cos``;
    ``theta_med`` = lower median over the batch of the angle to the sample's own class;
    ``s_new = (M + ln B_avg) / cos(min(pi/4, theta_med))``.

    ``angle_mode="sum"`` (default, the author's code): the angle to the own class is the
    label-weighted sum over the class's K sub-cluster angles times the number of classes mixed
    into the label. ``angle_mode="nearest"``: the label-weighted angle to the nearest sub-cluster
    of each class, divided by the label mass.
    """
    with torch.no_grad():
        cos = cos.detach()
        s = torch.as_tensor(scale, dtype=cos.dtype, device=cos.device)
        logits = s * cos
        M = logits.max()
        b_avg = torch.exp(logits - M).sum(dim=1).mean()
        theta_med = adacos_class_angles(cos, targets, n_subclusters, angle_mode).median()
        s_new = (M + torch.log(b_avg)) / torch.cos(torch.clamp(theta_med, max=math.pi / 4))
    return s_new


def subcluster_adacos(
    embeddings: torch.Tensor, centers: torch.Tensor, targets: torch.Tensor, scale: float,
    n_subclusters: int, update_scale: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-cluster AdaCos loss with an adaptive scale.

    Args:
        embeddings: ``[B, D]``.
        centers: ``[D, C*K]``; column j belongs to class ``j // K``.
        targets: ``[B, C]`` label vectors (one-hot or mixup).
        scale: the current scale s.
        n_subclusters: K.
        update_scale: first update s from this batch (see :func:`adacos_updated_scale`) and use
            the new value in the loss.

    Returns:
        ``(loss, s)``: ``loss = mean_b -sum_c targets[b,c] * log p[b,c]`` with
        ``p[b,c] = sum_{j in class c} softmax_j(s * cos[b, j])``, and the scale used (0-dim).
        Gradients flow to embeddings (and centers); none to the scale. A NaN in an embedding
        or a center gives a NaN loss (and scale, when updated) and NaN gradients where it flows.
    """
    op = "subcluster_adacos"
    _check(embeddings.dim() == 2, op, f"embeddings must be [B, D], got {tuple(embeddings.shape)}")
    _check(centers.dim() == 2, op, f"centers must be [D, C*K], got {tuple(centers.shape)}")
    _check(targets.dim() == 2, op, f"targets must be [B, C], got {tuple(targets.shape)}")
    B, D = embeddings.shape
    _check(centers.shape[0] == D, op, f"centers has {centers.shape[0]} rows, embeddings has D={D}")
    _check(n_subclusters >= 1, op, f"n_subclusters must be >= 1, got {n_subclusters}")
    CK = centers.shape[1]
    _check(CK % n_subclusters == 0, op, f"centers has {CK} columns, not a multiple of K={n_subclusters}")
    C = CK // n_subclusters
    _check(tuple(targets.shape) == (B, C), op, f"targets must be [{B}, {C}], got {tuple(targets.shape)}")
    if B == 0:
        s = torch.as_tensor(float(scale), dtype=embeddings.dtype, device=embeddings.device)
        return (embeddings.sum() * 0.0 + centers.sum() * 0.0), s
    cos = adacos_cosines(embeddings, centers)  # [B, C*K]
    if update_scale:
        s = adacos_updated_scale(cos, targets, scale, n_subclusters)
    else:
        s = torch.as_tensor(float(scale), dtype=cos.dtype, device=cos.device)
    logits = s * cos
    log_total = torch.logsumexp(logits, dim=1, keepdim=True)  # [B, 1]
    log_class = torch.logsumexp(logits.view(B, C, n_subclusters), dim=2)  # [B, C]
    log_p = log_class - log_total
    loss = -(targets.to(log_p.dtype) * log_p).sum(dim=1).mean()
    return loss, s.detach()


def min_cosine_distance(
    queries: torch.Tensor, refs: torch.Tensor, query_group: torch.Tensor, ref_offsets: torch.Tensor,
    ref_scale: torch.Tensor | None = None, ref_shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """For each query, the minimum cosine distance ``1 - cos`` over the references of its group,
    optionally scaled and shifted per reference.

    Args:
        queries: ``[N, D]``.
        refs: ``[M, D]``, grouped contiguously: group g owns rows ``ref_offsets[g]:ref_offsets[g+1]``.
        query_group: ``[N]`` int64 group index of each query.
        ref_offsets: ``[G+1]`` int64, non-decreasing, ``ref_offsets[0] == 0``, ``ref_offsets[G] == M``.
        ref_scale, ref_shift: optional ``[M]`` (dtype and device of ``refs``); a missing one
            counts as ones (scale) or zeros (shift).

    Returns:
        ``[N]``: ``d[i] = min_{j in group(i)} ref_scale[j] * (1 - cos_ij) + ref_shift[j]``; without
        scale and shift ``1 - max_j cos_ij`` in ``[0, 2]`` (higher = farther = more anomalous).
        NaN propagates: a NaN in a query row gives NaN for that query, a NaN in a reference row
        or in its scale or shift gives NaN for every query of the group.
    """
    op = "min_cosine_distance"
    _check(queries.dim() == 2 and refs.dim() == 2, op,
           f"queries [N, D] and refs [M, D] expected, got {tuple(queries.shape)} and {tuple(refs.shape)}")
    _check(queries.shape[1] == refs.shape[1], op,
           f"queries have D={queries.shape[1]} but refs have D={refs.shape[1]}")
    _check(query_group.dim() == 1 and query_group.shape[0] == queries.shape[0], op,
           f"query_group must be [{queries.shape[0]}], got {tuple(query_group.shape)}")
    _check(ref_offsets.dim() == 1 and ref_offsets.shape[0] >= 2, op,
           f"ref_offsets must be [G+1] with G >= 1, got {tuple(ref_offsets.shape)}")
    for name, t in (("ref_scale", ref_scale), ("ref_shift", ref_shift)):
        _check(t is None or (t.dim() == 1 and t.shape[0] == refs.shape[0]), op,
               f"{name} must be [M={refs.shape[0]}] (one value per reference), got {None if t is None else tuple(t.shape)}")
    offsets = ref_offsets.tolist()
    G = len(offsets) - 1
    _check(offsets[0] == 0 and offsets[-1] == refs.shape[0], op,
           f"ref_offsets must start at 0 and end at M={refs.shape[0]}, got {offsets[0]}..{offsets[-1]}")
    _check(all(a < b for a, b in zip(offsets[:-1], offsets[1:])), op,
           "ref_offsets must be strictly increasing (every group needs at least one reference)")
    out = queries.new_empty(queries.shape[0])
    if queries.shape[0] == 0:
        return out
    groups = query_group.tolist()
    _check(min(groups) >= 0 and max(groups) < G, op, f"query_group values must lie in [0, {G})")
    qn = F.normalize(queries, dim=1, eps=_NORM_EPS)
    rn = F.normalize(refs, dim=1, eps=_NORM_EPS)
    scaled = ref_scale is not None or ref_shift is not None
    for g in torch.unique(query_group).tolist():
        idx = (query_group == g).nonzero(as_tuple=True)[0]
        lo, hi = offsets[g], offsets[g + 1]
        sims = qn[idx] @ rn[lo:hi].T
        if not scaled:
            out[idx] = 1.0 - sims.max(dim=1).values
            continue
        dist = 1.0 - sims
        if ref_scale is not None:
            dist = ref_scale[lo:hi].to(dist.dtype) * dist
        if ref_shift is not None:
            dist = dist + ref_shift[lo:hi].to(dist.dtype)
        out[idx] = dist.min(dim=1).values
    return out
    groups = query_group.tolist()
    _check(min(groups) >= 0 and max(groups) < G, op, f"query_group values must lie in [0, {G})")
    qn = F.normalize(queries, dim=1, eps=_NORM_EPS)
    rn = F.normalize(refs, dim=1, eps=_NORM_EPS)
    for g in torch.unique(query_group).tolist():
        idx = (query_group == g).nonzero(as_tuple=True)[0]
        sims = qn[idx] @ rn[offsets[g]:offsets[g + 1]].T
        out[idx] = 1.0 - sims.max(dim=1).values
    return out
