"""The auxiliary-task losses (sub-cluster AdaCos, AdaProj), FeatEx feature exchange and mixup.

Sub-cluster AdaCos is :func:`fastasd.ops.subcluster_adacos` (see ``fastasd.reference`` for the
math); :class:`SubclusterAdaCos` holds its state: the centers (fixed random Glorot-uniform by
default, trainable as an ablation) and the adaptive scale ``s`` (a buffer, never trained by
gradient). :class:`AdaProj` (Wilkinghoff, DCASE Workshop 2024) replaces the sub-clusters' soft
maximum by the cosine to each class's linear subspace, in plain PyTorch (its share of a training
step is small: see ``benchmarks/results/labels_cpu.md``). :func:`feature_exchange` and
:class:`FeatEx` are the self-supervised feature exchange of Wilkinghoff (ICASSP 2024).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastasd import ops, reference

__all__ = ["SubclusterAdaCos", "AdaProj", "FeatEx", "feature_exchange", "global_updated_scale",
           "adaproj_updated_scale", "mixup"]

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
        _init_centers_and_scale(self, embedding_dim, n_classes * n_subclusters, trainable_centers, generator)

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


def _init_centers_and_scale(m: nn.Module, embedding_dim: int, n: int, trainable: bool,
                            generator: torch.Generator | None) -> None:
    """The state of a classifier with ``n`` center columns: ``centers [D, n]`` drawn like Keras's
    glorot_uniform (a buffer, or an ``nn.Parameter`` when ``trainable``), the AdaCos scale
    ``sqrt(2) * ln(n - 1)`` (a float32 buffer) and ``global_batch = False``."""
    m.trainable_centers = trainable
    limit = math.sqrt(6.0 / (embedding_dim + n))
    centers = (torch.rand(embedding_dim, n, generator=generator) * 2.0 - 1.0) * limit
    if trainable:
        m.centers = nn.Parameter(centers)
    else:
        m.register_buffer("centers", centers)
    m.register_buffer("scale", torch.tensor(reference.adacos_initial_scale(n), dtype=torch.float32))
    #: data-parallel training: update the scale from the batches of all ranks together
    m.global_batch = False


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
    logits = torch.as_tensor(scale, dtype=cos.dtype, device=cos.device) * cos
    theta_class = reference.adacos_class_angles(cos, targets, n_subclusters, angle_mode)
    return _scale_update(logits, lambda m: torch.exp(logits - m), theta_class, distributed=True)


@torch.no_grad()
def _scale_update(logits: torch.Tensor, exp_terms, theta_class: torch.Tensor,
                  distributed: bool) -> torch.Tensor:
    """The AdaCos-style update ``(M + ln B_avg) / cos(min(pi/4, theta_med))`` from the batch's
    scaled cosines ``logits [B, N]``: ``M`` = their max, ``B_avg`` = the mean over the rows of
    ``exp_terms(M).sum(1)``, ``theta_med`` = the lower median of ``theta_class [B]``.

    ``distributed``: the statistics of the GLOBAL batch of the default process group (all-reduce
    MAX for ``M``; float64 all-reduce SUM of the row sums and row counts; all-gather of the
    angles for an exact median), the same value on every rank.
    """
    import torch.distributed as dist

    dev, dtype = logits.device, logits.dtype
    B = logits.shape[0]
    if not distributed:
        m = logits.max()
        return (m + torch.log(exp_terms(m).sum(dim=1).mean())) / torch.cos(
            torch.clamp(theta_class.median(), max=math.pi / 4))
    m = logits.max() if B else torch.tensor(-math.inf, dtype=dtype, device=dev)
    dist.all_reduce(m, op=dist.ReduceOp.MAX)
    part = torch.stack([exp_terms(m).sum(dim=1).double().sum(),
                        torch.tensor(float(B), dtype=torch.float64, device=dev)])
    dist.all_reduce(part)
    b_avg = (part[0] / part[1]).to(dtype)
    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([B], dtype=torch.int64, device=dev))
    width = max(int(n) for n in sizes)
    padded = torch.zeros(width, dtype=dtype, device=dev)
    padded[:B] = theta_class
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    theta_med = torch.cat([p[:int(n)] for p, n in zip(parts, sizes)]).median()
    return (m + torch.log(b_avg)) / torch.cos(torch.clamp(theta_med, max=math.pi / 4))


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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
    lam, partner, _ = _reversed_partners("mixup", B, waveforms.device, generator, positions, batch_size)
    lw = lam.to(device=waveforms.device, dtype=waveforms.dtype).view(B, *([1] * (waveforms.dim() - 1)))
    x = lw * waveforms + (1 - lw) * waveforms[partner]
    t = targets.to(torch.float32) if not targets.is_floating_point() else targets
    lt = lam.to(device=t.device, dtype=t.dtype).view(B, 1)
    a, b = lt * t, (1 - lt) * t[partner.to(t.device)]
    y = torch.maximum(a, b) if label_rule == "max" else a + b
    return x, y


def _reversed_partners(who: str, B: int, device: torch.device, generator: torch.Generator | None,
                       positions: list[int] | None, batch_size: int | None):
    """``(u, partner, is_self)`` for the ``B`` rows of a batch whose partners are the batch
    reversed: ``u`` = one ``torch.rand`` float32 draw per row (drawn for the whole global batch
    on the generator's device, so every rank of a data-parallel step sees the same numbers),
    ``partner`` = the row index of each row's partner (on ``device``), ``is_self`` = rows that are
    their own partner (the middle of an odd batch). ``positions``/``batch_size``: see :func:`mixup`."""
    gen_device = generator.device if generator is not None else device
    if positions is None:
        u = torch.rand(B, generator=generator, device=gen_device, dtype=torch.float32)
        partner = torch.arange(B - 1, -1, -1, device=device)
        return u, partner, partner == torch.arange(B, device=device)
    if len(positions) != B or batch_size is None:
        raise ValueError(f"{who}: {len(positions)} positions for {B} rows (and batch_size needed)")
    row = {p: i for i, p in enumerate(positions)}
    missing = [p for p in positions if batch_size - 1 - p not in row]
    if missing:
        raise ValueError(f"{who}: the partners of positions {missing[:5]} are not among the rows")
    u = torch.rand(batch_size, generator=generator, device=gen_device, dtype=torch.float32)
    u = u[torch.as_tensor(positions, device=gen_device)]
    partner = torch.as_tensor([row[batch_size - 1 - p] for p in positions], device=device)
    is_self = torch.as_tensor([2 * p == batch_size - 1 for p in positions], device=device)
    return u, partner, is_self


# --------------------------------------------------------------------------- AdaProj
class AdaProj(nn.Module):
    """AdaProj (K. Wilkinghoff, "AdaProj: Adaptively scaled angular margin subspace projections
    for anomalous sound detection with auxiliary classification tasks", DCASE Workshop 2024).

    Each of the C classes owns a K-dimensional linear subspace ``S_j`` of the embedding space,
    spanned by the K columns ``W_j`` of ``centers`` (column ``j*K + k`` belongs to class ``j``;
    fixed random Glorot-uniform values as the sub-cluster centers, trainable as an option). The
    cosine of an embedding ``x`` to class ``j`` is its cosine to its own projection on ``S_j``
    (``L_j``: the Cholesky factor of the Gram matrix ``W_j^T W_j`` of the unit-length columns)::

        x^ = x / ||x||,   P_j x^ = W_j (W_j^T W_j)^-1 W_j^T x^   (the orthogonal projection on S_j)
        cos_j(x) = <x^, P_j x^> / ||P_j x^|| = ||P_j x^|| = ||L_j^-1 W_j^T x^||     (in [0, 1])
        p_j(x) = softmax_j(s * cos_j(x)),   loss = mean_b -sum_j y_bj * log p_j(x_b)

    with label vectors ``y`` (one-hot or mixup). Where sub-cluster AdaCos pulls each embedding
    towards one of its class's centers, AdaProj only asks it to lie near its class's subspace,
    so the normal data of a class may spread over K dimensions.

    The scale ``s`` adapts as in AdaCos (a buffer, no gradient; :func:`adaproj_updated_scale`):
    in training mode it is first updated from the batch and the loss uses the new value; the
    initial value is ``sqrt(2) * ln(C*K - 1)`` as in the author's code. With ``global_batch``
    (data-parallel training) the update uses the global batch of all ranks and the loss is the
    mean over this rank's rows. Computed in float32, or float64 for float64 embeddings (tests).

    Args:
        embedding_dim: D.
        n_classes: C.
        subspace_dim: K (``Config.adaproj_dim``), at most D.
        trainable_centers: ``centers`` is an ``nn.Parameter`` instead of a fixed buffer.
        generator: optional ``torch.Generator`` for the initialization.
    """

    def __init__(self, embedding_dim: int, n_classes: int, subspace_dim: int = 32,
                 trainable_centers: bool = False, generator: torch.Generator | None = None):
        super().__init__()
        if embedding_dim < 1 or n_classes < 1 or subspace_dim < 1:
            raise ValueError(f"AdaProj: embedding_dim, n_classes and subspace_dim must be >= 1, got "
                             f"{embedding_dim}, {n_classes}, {subspace_dim}")
        if subspace_dim > embedding_dim:
            raise ValueError(f"AdaProj: the subspace dimension (Config.adaproj_dim) {subspace_dim} "
                             f"exceeds the embedding size {embedding_dim}")
        self.embedding_dim, self.n_classes, self.subspace_dim = embedding_dim, n_classes, subspace_dim
        _init_centers_and_scale(self, embedding_dim, n_classes * subspace_dim, trainable_centers, generator)

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``cos_j(x)`` ``[B, C]`` (see the class docstring), differentiable."""
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        x = F.normalize(embeddings.to(dtype), dim=1, eps=1e-12)
        D, C, K = self.embedding_dim, self.n_classes, self.subspace_dim
        wn = F.normalize(self.centers.to(dtype), dim=0, eps=1e-12)  # [D, C*K]
        w = wn.reshape(D, C, K).permute(1, 0, 2)  # [C, D, K]
        # ||P_j x||^2 = a^T G^-1 a with a = W_j^T x, G = W_j^T W_j = L L^T: ||L^-1 a||. Far
        # cheaper than a QR of every W_j (the FeatEx head has 3C of them, trainable).
        chol = torch.linalg.cholesky(w.transpose(1, 2) @ w)  # [C, K, K]
        a = (x @ wn).reshape(-1, C, K).permute(1, 2, 0)  # one GEMM -> [C, K, B]
        z = torch.linalg.solve_triangular(chol, a, upper=False)
        return torch.linalg.vector_norm(z, dim=1).T

    def forward(self, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss (scalar) of ``embeddings [B, D]`` against label vectors ``targets [B, C]``."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            cos = self.cosines(embeddings)
            t = targets.to(cos.dtype)
            if self.training:
                s = adaproj_updated_scale(cos, t, self.scale, distributed=self.global_batch and _distributed())
                with torch.no_grad():
                    self.scale.copy_(s.to(self.scale))
            else:
                s = self.scale.to(cos.dtype)
            return -(t * F.log_softmax(s * cos, dim=1)).sum(dim=1).mean()

    @torch.no_grad()
    def predict_proba(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[B, C]`` with the current scale; for diagnostics."""
        return torch.softmax(self.scale * self.cosines(embeddings).float(), dim=1)

    def extra_repr(self) -> str:
        return (f"embedding_dim={self.embedding_dim}, n_classes={self.n_classes}, "
                f"subspace_dim={self.subspace_dim}, trainable_centers={self.trainable_centers}")


@torch.no_grad()
def adaproj_updated_scale(cos: torch.Tensor, targets: torch.Tensor, scale: float | torch.Tensor,
                          distributed: bool = False) -> torch.Tensor:
    """AdaProj's scale update from the class cosines ``cos [B, C]`` of a batch (the author's code):
    ``M = max s*cos``; ``B_avg`` = the mean over the rows of ``sum_j e_bj`` with
    ``e_bj = exp(s*cos_bj - M)`` where ``y_bj < 1`` and ``exp(-M)`` where ``y_bj = 1`` (the own
    class of an unmixed label counts as a zero logit); ``theta_b = sum_j y_bj arccos(cos_bj)``;
    ``s_new = (M + ln B_avg) / cos(min(pi/4, lower median of theta_b))``. ``distributed``: the
    statistics of the global batch of all ranks (see :func:`global_updated_scale`)."""
    cos = cos.detach()
    t = targets.detach().to(cos.dtype)
    logits = torch.as_tensor(scale, dtype=cos.dtype, device=cos.device) * cos
    eps = torch.finfo(torch.float32).eps  # the clip of reference.adacos_class_angles
    theta_class = (t * torch.acos(cos.clamp(-1.0 + eps, 1.0 - eps))).sum(dim=1)

    def exp_terms(m):
        return torch.where(t < 1, torch.exp(logits - m), torch.exp(-m))

    return _scale_update(logits, exp_terms, theta_class, distributed)


# --------------------------------------------------------------------------- FeatEx
def feature_exchange(embeddings: torch.Tensor, targets: torch.Tensor, split: int, prob: float,
                     generator: torch.Generator | None = None, *, positions: list[int] | None = None,
                     batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """FeatEx (K. Wilkinghoff, "Self-supervised learning for anomalous sound detection", ICASSP
    2024): exchange the second sub-embedding between partner clips, for a random share of the batch.

    The embedding of clip ``b`` is ``[e1_b | e2_b]`` (``e1 = embeddings[:, :split]``: the
    spectrum branch; ``e2``: the spectrogram branch). With probability ``prob`` (one
    ``torch.rand`` draw per clip, on the generator's device) clip ``b`` becomes ``[e1_b | e2_p]``
    with its partner ``p`` in the reversed batch (as in mixup; a clip that is its own partner,
    the middle of an odd batch, is never exchanged). The labels live in a space three times as
    large, ``[original | exchanged, own part | exchanged, partner's part]``::

        kept:       y' = [ y_b,  0,        0        ]
        exchanged:  y' = [ 0,    y_b / 2,  y_p / 2  ]

    so a classifier over the 3C classes must tell original from exchanged embeddings and name
    the clips the parts came from. Data-parallel: ``positions``/``batch_size`` as in
    :func:`mixup`; the rows are then those of the one-process exchange of the global batch.

    Returns:
        ``(embeddings' [B, D], targets' [B, 3C])``.
    """
    B, D = embeddings.shape
    if targets.shape[0] != B:
        raise ValueError(f"feature_exchange: embeddings has {B} rows, targets {targets.shape[0]}")
    if not 0 < split < D:
        raise ValueError(f"feature_exchange: split {split} must lie inside the embedding (size {D})")
    u, partner, is_self = _reversed_partners("feature_exchange", B, embeddings.device, generator,
                                             positions, batch_size)
    ex = ((u.to(embeddings.device) < prob) & ~is_self).view(B, 1)
    swapped = torch.cat([embeddings[:, :split], embeddings[partner, split:]], dim=1)
    x = torch.where(ex, swapped, embeddings)
    t = targets.to(embeddings.dtype) if targets.is_floating_point() else targets.float()
    zeros = torch.zeros_like(t)
    ex_t = ex.to(t.device)
    y = torch.where(ex_t, torch.cat([zeros, 0.5 * t, 0.5 * t[partner.to(t.device)]], dim=1),
                    torch.cat([t, zeros, zeros], dim=1))
    return x, y


class FeatEx(nn.Module):
    """The FeatEx classifier: ``weight * head(feature_exchange(x, y))`` with its own head over
    3C classes (a :class:`SubclusterAdaCos` or :class:`AdaProj`, centers trainable as in the
    author's code), added to the main loss during training. The network, its embeddings and
    inference are unchanged; only training sees the exchanged embeddings.

    Args:
        head: the classifier over ``3 * C`` classes.
        split: size of the first sub-embedding (the spectrum branch's ``Config.embedding_dim``).
        prob: share of exchanged clips (``Config.featex_prob``).
        weight: weight of this loss (``Config.featex_weight``).
    """

    def __init__(self, head: nn.Module, split: int, prob: float, weight: float = 1.0):
        super().__init__()
        if head.n_classes % 3:
            raise ValueError(f"FeatEx: the head must have 3 * C classes, got {head.n_classes}")
        self.head, self.split, self.prob, self.weight = head, int(split), float(prob), float(weight)

    def forward(self, embeddings: torch.Tensor, targets: torch.Tensor,
                generator: torch.Generator | None = None, **where) -> torch.Tensor:
        """The weighted FeatEx loss of a batch; ``where``: ``positions``/``batch_size`` of a
        data-parallel rank (see :func:`feature_exchange`)."""
        if 3 * targets.shape[1] != self.head.n_classes:
            raise ValueError(f"FeatEx: {targets.shape[1]} classes, the head has {self.head.n_classes} = 3 x "
                             f"{self.head.n_classes // 3}")
        x, y = feature_exchange(embeddings, targets, self.split, self.prob, generator, **where)
        return self.weight * self.head(x, y)

    def extra_repr(self) -> str:
        return f"split={self.split}, prob={self.prob}, weight={self.weight}"
