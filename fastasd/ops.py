"""Public tensor operators of fastasd (one name per op: schema, ops, reference, tests, benchmarks).

Each function runs the native kernel (``torch.ops.fastasd.<op>``, C++ on CPU, CUDA on GPU;
built from ``csrc/``) or the pure-PyTorch definition in :mod:`fastasd.reference`, as
``FASTASD_BACKEND`` (auto | native | reference, see :mod:`fastasd._backend`) and the build
allow. The system calls only these functions, so the backend switch lives here.

Native kernels take contiguous float32/float64 tensors on one device and raise ``ValueError``
naming the operator and the argument for bad input; the reference accepts more (any float
dtype, strided tensors). Each op has a fake (meta) implementation, so both work under
``torch.compile(fullgraph=True)``.
"""
from __future__ import annotations

import torch

from fastasd import _backend, reference

__all__ = ["stft_magnitude", "subcluster_adacos", "min_cosine_distance"]

_NATIVE = _backend.load_extension()


@torch.compiler.assume_constant_result
def _native(op: str, device_type: str) -> bool:
    # A trace-time constant under torch.compile: the backend is fixed per compiled graph.
    return _backend.use_native(op, device_type)


def stft_magnitude(waveforms: torch.Tensor, n_fft: int, hop: int, normalize: bool) -> torch.Tensor:
    """Magnitude STFT with optional temporal mean normalization (fused kernel #1).

    Args:
        waveforms: ``[B, N]`` real signals (float32 or float64, contiguous for the native op).
        n_fft: frame length = DFT length; the window is the periodic Hann window
            ``w[n] = 0.5 - 0.5 cos(2 pi n / n_fft)``.
        hop: hop size in samples.
        normalize: subtract, per clip and frequency bin, the mean over all frames.

    Returns:
        ``[B, T, F]`` in the input dtype, ``T = 1 + (N - n_fft) // hop`` frames (no centering, no
        padding), ``F = n_fft // 2 + 1`` bins:
        ``S[b, t, k] = |sum_{n < n_fft} w[n] x[b, t*hop + n] exp(-2 pi i k n / n_fft)|``, and with
        ``normalize`` ``S[b, t, k] - (1/T) sum_t' S[b, t', k]``. No gradient (the frontend has no
        trainable parameters before it).
    """
    if _native("stft_magnitude", waveforms.device.type):
        return torch.ops.fastasd.stft_magnitude.default(waveforms, int(n_fft), int(hop), bool(normalize))
    return reference.stft_magnitude(waveforms, n_fft, hop, normalize)


def min_cosine_distance(
    queries: torch.Tensor, refs: torch.Tensor, query_group: torch.Tensor, ref_offsets: torch.Tensor,
    ref_scale: torch.Tensor | None = None, ref_shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batched ragged nearest-reference search by cosine distance (fused kernel #3).

    Args:
        queries: ``[N, D]`` embeddings to score (float32 or float64).
        refs: ``[M, D]`` reference embeddings, grouped contiguously: group ``g`` (a section) owns
            rows ``ref_offsets[g] : ref_offsets[g+1]``; same dtype and device as ``queries``.
        query_group: ``[N]`` int64, the group of each query, in ``[0, G)``.
        ref_offsets: ``[G+1]`` int64, ``0 = ref_offsets[0] < ref_offsets[1] < ... = M`` (every
            group has at least one reference).
        ref_scale, ref_shift: optional ``[M]`` per-reference scale and shift (dtype and device of
            ``refs``; finite values expected). A missing one counts as ones / zeros. The
            local-density normalization of :class:`fastasd.backend.CosineBackend` uses them:
            ratio form ``scale = 1 / (2 rho_j)``, shift 0; difference form scale 1/2,
            ``shift = -rho_j``.

    Returns:
        ``[N]``: ``d[i] = min_{j in group(i)} ref_scale[j] * (1 - cos_ij) + ref_shift[j]`` with
        ``cos_ij = <q_i, r_j> / (max(|q_i|, eps) max(|r_j|, eps))``, ``eps = 1e-12``; without
        scale and shift that is ``1 - max_j cos_ij``, in ``[0, 2]`` (higher = farther = more
        anomalous), computed exactly as before they existed. NaN propagates: NaN in a query row
        gives NaN for it; NaN in a reference row or in its scale/shift gives NaN for every query
        of that group. The ``N x M`` similarity matrix is never built. No gradient.
        On CUDA the values of ``query_group`` / ``ref_offsets`` are checked on the device
        without a host sync: bad ones give NaN, and the ``ValueError`` is raised by a later call
        on that device once the GPU has finished (``FASTASD_CUDA_CHECK_VALUES=sync``: by the
        faulty call itself; ``=0``: never).
    """
    if _native("min_cosine_distance", queries.device.type):
        return torch.ops.fastasd.min_cosine_distance.default(queries, refs, query_group, ref_offsets,
                                                             ref_scale, ref_shift)
    return reference.min_cosine_distance(queries, refs, query_group, ref_offsets, ref_scale, ref_shift)


# Fake (meta) implementations: output shapes and dtypes for torch.compile / FakeTensor tracing,
# with the same shape checks as the kernels (value checks need data and stay in the kernels).
if _NATIVE:

    def _fake_check(cond: bool, op: str, msg: str) -> None:
        if not cond:
            raise ValueError(f"fastasd::{op}: {msg}")

    @torch.library.register_fake("fastasd::stft_magnitude")
    def _stft_magnitude_fake(waveforms, n_fft, hop, normalize):
        op = "stft_magnitude"
        _fake_check(waveforms.dim() == 2, op, f"waveforms must be [B, N], got shape {tuple(waveforms.shape)}")
        _fake_check(waveforms.dtype in (torch.float32, torch.float64), op,
                    f"waveforms must be float32 or float64, got {waveforms.dtype}")
        _fake_check(n_fft >= 2, op, f"n_fft must be >= 2, got {n_fft}")
        _fake_check(hop >= 1, op, f"hop must be >= 1, got {hop}")
        B, N = waveforms.shape
        torch._check(N >= n_fft, lambda: f"fastasd::{op}: waveforms has {N} samples, fewer than n_fft={n_fft}")
        return waveforms.new_empty((B, 1 + (N - n_fft) // hop, n_fft // 2 + 1))

    @torch.library.register_fake("fastasd::min_cosine_distance")
    def _min_cosine_distance_fake(queries, refs, query_group, ref_offsets, ref_scale=None, ref_shift=None):
        op = "min_cosine_distance"
        _fake_check(queries.dim() == 2, op, f"queries must be [N, D], got shape {tuple(queries.shape)}")
        _fake_check(refs.dim() == 2, op, f"refs must be [M, D], got shape {tuple(refs.shape)}")
        _fake_check(query_group.dim() == 1 and ref_offsets.dim() == 1, op,
                    "query_group must be [N] and ref_offsets [G+1]")
        _fake_check(queries.dtype in (torch.float32, torch.float64), op,
                    f"queries must be float32 or float64, got {queries.dtype}")
        _fake_check(refs.dtype == queries.dtype, op, f"refs must have the dtype of queries, got {refs.dtype}")
        _fake_check(query_group.dtype == torch.int64 and ref_offsets.dtype == torch.int64, op,
                    "query_group and ref_offsets must be int64")
        torch._check(refs.shape[1] == queries.shape[1],
                     lambda: f"fastasd::{op}: refs must have D={queries.shape[1]} columns like queries")
        torch._check(query_group.shape[0] == queries.shape[0],
                     lambda: f"fastasd::{op}: query_group must have N={queries.shape[0]} entries")
        for name, t in (("ref_scale", ref_scale), ("ref_shift", ref_shift)):
            if t is not None:
                _fake_check(t.dim() == 1, op, f"{name} must be [M], got shape {tuple(t.shape)}")
                _fake_check(t.dtype == refs.dtype, op, f"{name} must have the dtype of refs, got {t.dtype}")
                torch._check(t.shape[0] == refs.shape[0],
                             lambda: f"fastasd::{op}: {name} must have M={refs.shape[0]} entries")
        return queries.new_empty((queries.shape[0],))


# --- subcluster_adacos (owned by the loss kernel) ---
def subcluster_adacos(
    embeddings: torch.Tensor, centers: torch.Tensor, targets: torch.Tensor, scale: float,
    n_subclusters: int, update_scale: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-cluster AdaCos loss with its adaptive scale (fused kernel #2).

    Args:
        embeddings: ``[B, D]`` (float32 or float64; contiguous for the native op).
        centers: ``[D, C*K]``, column ``j`` belongs to class ``j // K``; same dtype and device.
        targets: ``[B, C]`` label vectors (one-hot or mixup); same dtype and device.
        scale: the current scale ``s`` (a Python number; a 0-dim tensor is read with ``float``).
        n_subclusters: ``K``.
        update_scale: first update ``s`` from this batch, then use the new value in the loss.

    Returns:
        ``(loss, s)``, both 0-dim in the input dtype. With ``cos = normalize(x) @ normalize(W)``
        (rows / columns divided by ``max(norm, 1e-12)``): ``loss = -(1/B) sum_b sum_c t[b,c]
        (LSE_{j in c}(s cos[b,j]) - LSE_j(s cos[b,j]))``, i.e. the cross-entropy of the targets
        with ``p[b,c] = sum_{j in c} softmax_j(s cos[b,j])``. With ``update_scale``,
        ``s = (M + ln B_avg) / cos(min(pi/4, theta_med))`` as in
        :func:`fastasd.reference.adacos_updated_scale` (angle mode "sum"). An empty batch gives
        ``(0, scale)``. Gradients flow to ``embeddings`` and ``centers``; none to the scale (it
        is returned detached) or to ``targets``. For the backward the native op keeps the
        ``[B, C*K]`` cosines, the ``[C*K]`` inverse column norms and the ``[B]`` / ``[B, C]``
        log-sum-exps (no exponentials), so that its backward needs one GEMM, not two. NaN
        propagates: a NaN in an embedding or a center gives a NaN loss (and scale, when
        updated) and NaN gradients where it flows.
    """
    if _native("subcluster_adacos", embeddings.device.type):
        loss, s, *_ = torch.ops.fastasd.subcluster_adacos.default(
            embeddings, centers, targets, float(scale), int(n_subclusters), bool(update_scale))
        return loss, s
    return reference.subcluster_adacos(embeddings, centers, targets, scale, n_subclusters, update_scale)


if _NATIVE:

    def _subcluster_adacos_fake_checks(op, embeddings, centers, targets, n_subclusters) -> int:
        _fake_check(embeddings.dim() == 2, op, f"embeddings must be [B, D], got shape {tuple(embeddings.shape)}")
        _fake_check(centers.dim() == 2, op, f"centers must be [D, C*K], got shape {tuple(centers.shape)}")
        _fake_check(targets.dim() == 2, op, f"targets must be [B, C], got shape {tuple(targets.shape)}")
        _fake_check(embeddings.dtype in (torch.float32, torch.float64), op,
                    f"embeddings must be float32 or float64, got {embeddings.dtype}")
        _fake_check(centers.dtype == embeddings.dtype, op, f"centers must have the dtype of embeddings, got {centers.dtype}")
        _fake_check(targets.dtype == embeddings.dtype, op, f"targets must have the dtype of embeddings, got {targets.dtype}")
        _fake_check(n_subclusters >= 1, op, f"n_subclusters must be >= 1, got {n_subclusters}")
        B, D = embeddings.shape
        CK = centers.shape[1]
        torch._check(D >= 1, lambda: f"fastasd::{op}: embeddings must have at least one column (D >= 1)")
        torch._check(centers.shape[0] == D, lambda: f"fastasd::{op}: centers must have D={D} rows")
        torch._check(CK >= 1 and CK % n_subclusters == 0,
                     lambda: f"fastasd::{op}: centers has {CK} columns, not a positive multiple of K={n_subclusters}")
        C = CK // n_subclusters
        torch._check(targets.shape[0] == B and targets.shape[1] == C,
                     lambda: f"fastasd::{op}: targets must be [{B}, {C}], got {tuple(targets.shape)}")
        return C

    @torch.library.register_fake("fastasd::subcluster_adacos")
    def _subcluster_adacos_fake(embeddings, centers, targets, scale, n_subclusters, update_scale):
        C = _subcluster_adacos_fake_checks("subcluster_adacos", embeddings, centers, targets, n_subclusters)
        B = embeddings.shape[0]
        CK = centers.shape[1]
        return (embeddings.new_empty(()), embeddings.new_empty(()), embeddings.new_empty((B,)),
                embeddings.new_empty((B, C)), embeddings.new_empty((B, CK)), embeddings.new_empty((CK,)))

    @torch.library.register_fake("fastasd::subcluster_adacos_backward")
    def _subcluster_adacos_backward_fake(grad_loss, embeddings, centers, targets, scale, lse_total, lse_class,
                                         cos, col_inv_norms, n_subclusters, centers_grad):
        op = "subcluster_adacos_backward"
        C = _subcluster_adacos_fake_checks(op, embeddings, centers, targets, n_subclusters)
        B, CK = embeddings.shape[0], centers.shape[1]
        _fake_check(grad_loss.dim() == 0 and scale.dim() == 0, op, "grad_loss and scale must be 0-dim")
        torch._check(lse_total.shape == (B,) and lse_class.shape == (B, C),
                     lambda: f"fastasd::{op}: lse_total must be [{B}] and lse_class [{B}, {C}]")
        torch._check(cos.shape == (B, CK) and col_inv_norms.shape == (CK,),
                     lambda: f"fastasd::{op}: cos must be [{B}, {CK}] and col_inv_norms [{CK}]")
        grad_centers = centers.new_empty(centers.shape) if centers_grad else centers.new_empty((0,))
        return embeddings.new_empty(embeddings.shape), grad_centers

    def _subcluster_adacos_setup_context(ctx, inputs, output):
        embeddings, centers, targets, _scale, n_subclusters, _update_scale = inputs
        _loss, s, lse_total, lse_class, cos, col_inv_norms = output
        # The inputs, the row statistics, the cosines and the inverse column norms (no exponentials).
        ctx.save_for_backward(embeddings, centers, targets, s, lse_total, lse_class, cos, col_inv_norms)
        ctx.n_subclusters = n_subclusters
        ctx.mark_non_differentiable(s, lse_total, lse_class, cos, col_inv_norms)

    def _subcluster_adacos_backward(ctx, grad_loss, *_grad_saved_outputs):
        embeddings, centers, targets, s, lse_total, lse_class, cos, col_inv_norms = ctx.saved_tensors
        need_emb, need_centers = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_emb, grad_centers = torch.ops.fastasd.subcluster_adacos_backward.default(
            grad_loss, embeddings, centers, targets, s, lse_total, lse_class, cos, col_inv_norms,
            ctx.n_subclusters, need_centers)
        # No gradient for targets or the scale (as in the reference, where the scale is detached).
        return (grad_emb if need_emb else None, grad_centers if need_centers else None, None, None, None, None)

    torch.library.register_autograd("fastasd::subcluster_adacos", _subcluster_adacos_backward,
                                    setup_context=_subcluster_adacos_setup_context)
# --- end subcluster_adacos ---
