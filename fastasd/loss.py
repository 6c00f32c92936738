"""Sub-cluster AdaCos loss (with its adaptive scale) and waveform mixup.

The loss itself is :func:`fastasd.ops.subcluster_adacos` (see ``fastasd.reference`` for the math);
this module holds its state: the centers (fixed random Glorot-uniform by default, trainable as an
ablation) and the adaptive scale ``s`` (a buffer, never trained by gradient).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastasd import ops, reference

__all__ = ["SubclusterAdaCos", "global_updated_scale", "mixup"]

ANGLE_MODES = ("sum", "nearest")
LABEL_RULES = ("max", "sum")


class SubclusterAdaCos(nn.Module):
    """Sub-cluster AdaCos: ``n_classes`` classes with ``n_subclusters`` centers each.

    Args:
        embedding_dim: D, size of the embeddings.
        n_classes: C, classes of the auxiliary task.
        n_subclusters: K, centers per class (column ``j`` of ``centers`` belongs to class ``j // K``).
        trainable_centers: centers are an ``nn.Parameter`` (ablation) instead of a fixed buffer.
        angle_mode: the "angle to the own class" of the scale update: ``"sum"`` (author's code,
            implemented by the native op) or ``"nearest"`` (computed here with
            :func:`fastasd.reference.adacos_updated_scale`, then the op runs with that scale and
            ``update_scale=False``).
        generator: optional ``torch.Generator`` for the center initialization.

    State: ``centers`` ``[D, C*K]`` (buffer or Parameter, saved in the state dict either way) and
    ``scale`` (0-dim float32 buffer, initially ``sqrt(2) * ln(C*K - 1)``).
    """

    def __init__(self, embedding_dim: int, n_classes: int, n_subclusters: int = 16,
                 trainable_centers: bool = False, angle_mode: str = "sum",
                 generator: torch.Generator | None = None):
        super().__init__()
        if embedding_dim < 1 or n_classes < 1 or n_subclusters < 1:
            raise ValueError(f"SubclusterAdaCos: embedding_dim, n_classes and n_subclusters must be "
                             f">= 1, got {embedding_dim}, {n_classes}, {n_subclusters}")
        if angle_mode not in ANGLE_MODES:
            raise ValueError(f"SubclusterAdaCos: angle_mode {angle_mode!r} is not one of {list(ANGLE_MODES)}")
        self.embedding_dim, self.n_classes, self.n_subclusters = embedding_dim, n_classes, n_subclusters
        self.angle_mode = angle_mode
        self.trainable_centers = trainable_centers
        n = n_classes * n_subclusters
        limit = math.sqrt(6.0 / (embedding_dim + n))  # Keras glorot_uniform for a [D, C*K] weight
        centers = (torch.rand(embedding_dim, n, generator=generator) * 2.0 - 1.0) * limit
        if trainable_centers:
            self.centers = nn.Parameter(centers)
        else:
            self.register_buffer("centers", centers)
        self.register_buffer("scale", torch.tensor(reference.adacos_initial_scale(n), dtype=torch.float32))
        #: data-parallel training: update the scale from the batches of all ranks together
        self.global_batch = False

    def forward(self, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss (scalar) of ``embeddings [B, D]`` against label vectors ``targets [B, C]``.

        In training mode the scale is first updated from this batch and the loss uses the new
        value, which is stored in ``self.scale``; in eval mode the stored scale is used as is.
        With ``global_batch = True`` (data-parallel training) "this batch" is the global batch
        of all ranks (:func:`global_updated_scale`) and the loss is the mean over this rank's rows.
        Computed in float32 (autocast disabled).
        """
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            # The native operator takes contiguous float32 tensors only.
            emb = embeddings.float().contiguous()
            centers = self.centers.float().contiguous()
            t = targets.float().contiguous()
            K = self.n_subclusters
            if self.training and self.global_batch:
                cos = reference.adacos_cosines(emb.detach(), centers.detach())
                s = global_updated_scale(cos, t, self.scale, K, angle_mode=self.angle_mode)
                loss, s_used = ops.subcluster_adacos(emb, centers, t, float(s), K, False)
            elif self.training and self.angle_mode == "nearest":
                cos = reference.adacos_cosines(emb.detach(), centers.detach())
                s = reference.adacos_updated_scale(cos, t, self.scale, K, angle_mode="nearest")
                loss, s_used = ops.subcluster_adacos(emb, centers, t, float(s), K, False)
            else:
                loss, s_used = ops.subcluster_adacos(emb, centers, t, float(self.scale), K, self.training)
            if self.training:
                with torch.no_grad():
                    self.scale.copy_(s_used.detach().to(self.scale))
        return loss

    @torch.no_grad()
    def predict_proba(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[B, C]`` with the current scale (softmax over all C*K logits,
        summed over each class's K sub-clusters); for diagnostics."""
        x = F.normalize(embeddings.float(), dim=1)
        w = F.normalize(self.centers.float(), dim=0)
        p = torch.softmax(self.scale * (x @ w), dim=1)
        return p.view(p.shape[0], self.n_classes, self.n_subclusters).sum(dim=2)

    def extra_repr(self) -> str:
        return (f"embedding_dim={self.embedding_dim}, n_classes={self.n_classes}, "
                f"n_subclusters={self.n_subclusters}, trainable_centers={self.trainable_centers}, "
                f"angle_mode={self.angle_mode!r}")


@torch.no_grad()
def global_updated_scale(cos: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor | float,
                         n_subclusters: int, angle_mode: str = "sum") -> torch.Tensor:
    """:func:`fastasd.reference.adacos_updated_scale` of the GLOBAL batch of a data-parallel step:
    every rank passes the cosines ``[B_r, C*K]`` and labels of its rows and gets the same scale.

    The update needs three batch statistics, which are reduced over the default process group:
    ``M`` = the max logit (all-reduce MAX), ``B_avg`` = the mean over all rows of
    ``sum_j exp(s*cos - M)`` (all-reduce SUM of the per-rank sums, in float64, and of the row
    counts), and ``theta_med`` = the lower median of the per-row class angles (all-gather of
    the angles; an exact median). The result equals the one-process update of the concatenated
    batch up to the order of the float sums in ``B_avg``. Without an initialized process group
    it is the one-process update.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return reference.adacos_updated_scale(cos, targets, scale, n_subclusters, angle_mode=angle_mode)
    cos = cos.detach()
    s = torch.as_tensor(scale, dtype=cos.dtype, device=cos.device)
    B = cos.shape[0]
    logits = s * cos
    m = logits.max() if B else torch.tensor(-math.inf, dtype=cos.dtype, device=cos.device)
    dist.all_reduce(m, op=dist.ReduceOp.MAX)
    part = torch.stack([torch.exp(logits - m).sum(dim=1).double().sum(),
                        torch.tensor(float(B), dtype=torch.float64, device=cos.device)])
    dist.all_reduce(part)
    b_avg = (part[0] / part[1]).to(cos.dtype)
    theta_class = reference.adacos_class_angles(cos, targets, n_subclusters, angle_mode)
    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.int64, device=cos.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([B], dtype=torch.int64, device=cos.device))
    width = max(int(n) for n in sizes)
    padded = torch.zeros(width, dtype=cos.dtype, device=cos.device)
    padded[:B] = theta_class
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    theta_med = torch.cat([p[:int(n)] for p, n in zip(parts, sizes)]).median()
    return (m + torch.log(b_avg)) / torch.cos(torch.clamp(theta_med, max=math.pi / 4))


def mixup(waveforms: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None = None,
          label_rule: str = "max", *, positions: list[int] | None = None,
          batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each sample with its partner in the reversed batch.

    ``lam = torch.rand(B, generator=generator)`` (drawn on the generator's device, float32) is one
    coefficient per sample, shared by waveform and label:
    ``x = lam * x_b + (1 - lam) * x_{B-1-b}``; the label is ``max(lam * y_b, (1 - lam) * y_{B-1-b})``
    element-wise (``label_rule="max"``, author's code, not renormalized) or the sum (``"sum"``).

    Data-parallel training passes one rank's share of a global batch: row ``i`` is position
    ``positions[i]`` of a batch of ``batch_size`` clips, ``lam`` is drawn for the whole batch (the
    same generator state on every rank) and each row's partner ``batch_size - 1 - p`` must be
    among the rows (:func:`fastasd.training.distributed.mirrored_positions`). The rows are then exactly
    the corresponding rows of the one-process mixup of the global batch.

    Args:
        waveforms: ``[B, N]``; targets: ``[B, C]`` (one-hot).
        positions, batch_size: see above (default: the rows are the whole batch).
    Returns:
        ``(mixed_waveforms, mixed_targets)`` in the dtypes/devices of the inputs.
    """
    if label_rule not in LABEL_RULES:
        raise ValueError(f"mixup: label_rule {label_rule!r} is not one of {list(LABEL_RULES)}")
    if waveforms.shape[0] != targets.shape[0]:
        raise ValueError(f"mixup: waveforms has {waveforms.shape[0]} rows, targets {targets.shape[0]}")
    B = waveforms.shape[0]
    device = generator.device if generator is not None else waveforms.device
    if positions is None:
        lam = torch.rand(B, generator=generator, device=device, dtype=torch.float32)
        partner = torch.arange(B - 1, -1, -1, device=waveforms.device)
    else:
        if len(positions) != B or batch_size is None:
            raise ValueError(f"mixup: {len(positions)} positions for {B} rows (and batch_size needed)")
        row = {p: i for i, p in enumerate(positions)}
        missing = [p for p in positions if batch_size - 1 - p not in row]
        if missing:
            raise ValueError(f"mixup: the partners of positions {missing[:5]} are not among the rows")
        lam = torch.rand(batch_size, generator=generator, device=device, dtype=torch.float32)
        lam = lam[torch.as_tensor(positions, device=device)]
        partner = torch.as_tensor([row[batch_size - 1 - p] for p in positions], device=waveforms.device)
    lw = lam.to(device=waveforms.device, dtype=waveforms.dtype).view(B, *([1] * (waveforms.dim() - 1)))
    x = lw * waveforms + (1 - lw) * waveforms[partner]
    t = targets.to(torch.float32) if not targets.is_floating_point() else targets
    lt = lam.to(device=t.device, dtype=t.dtype).view(B, 1)
    a, b = lt * t, (1 - lt) * t[partner.to(t.device)]
    y = torch.maximum(a, b) if label_rule == "max" else a + b
    return x, y
