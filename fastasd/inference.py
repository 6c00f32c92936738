"""An inference-only form of :class:`fastasd.model.EmbeddingNet`: the same embeddings, faster.

:func:`fuse_for_inference` turns a (trained) network into an eval-only module that computes what
``model.eval()(waveforms)`` computes, in float32, through the same frontend (so the native
``fastasd::stft_magnitude`` operator still runs), with fewer passes over the feature maps:

- **BatchNorm folded into the layer before it** where that is exact: the first 7x7 conv and its BN;
  in every residual block, ``conv1`` and ``bn2``; the spectrum branch's ``Linear -> BN1d``; and
  ``flat_bn`` into the final ``embed`` Linear (a BN *before* a Linear folds into its columns).
  Folding is computed in float64 and rounded once to the weights' dtype.
- **A residual block's first BN folded into the previous block's output.** ``bn1`` of block
  ``i + 1`` follows block ``i``'s residual add, and the block output is used nowhere else, so
  ``s * (r + shortcut) + t`` is computed directly: ``s`` is folded into ``conv2`` (and the shortcut
  1x1 conv), ``t`` into ``conv2``'s bias, and an identity shortcut is added as ``r += s * h``
  (one ``addcmul_`` instead of an add and an affine pass). ``bn1`` of the first block follows
  ReLU + max-pool and stays an affine pass, as does the per-frequency input BN (it precedes zero
  padding, so it cannot enter the conv; neither can a BN that precedes a ReLU).
- **Padding:** Keras "same" for a stride-1 3x3 conv is (1, 1), so it is the conv's own
  ``padding=1`` (no ``F.pad`` copy). Any conv whose "same" padding is symmetric on every axis for
  its input (for 10-s clips: the 7x7/2 conv and all spectrum convs too) uses the conv's own
  padding; an asymmetric one (the stride-2 3x3 convs: one extra zero row/column at the end) keeps
  the exact ``F.pad`` of :class:`fastasd.model._SameConv`. Decided per call from the input shape.
- **ReLU after the max-pool** (``max(relu(a), relu(b)) == relu(max(a, b))``, exact): the ReLU of
  the stem runs on a quarter of the elements. ReLUs on fresh conv outputs are in place.
- **Max-pooling without indices.** PyTorch's CPU ``max_pool2d`` always computes the int64 argmax
  indices too (even in inference mode); the stem's 3x3/2 pool is ``max_pool1d`` (index-free)
  along frequency plus the max of three strided row views along time, the shortcuts' 2x2 "same"
  pools are maxima of strided views. Both are exact (a max is a max).
- **channels_last** memory format for the residual stages (oneDNN convolutions without layout
  reorders); block 0's input BN writes the channels-last copy, so the switch costs no extra pass.
- **Chunks on CPU.** The batch runs in chunks of a few clips (see :data:`CHUNK_BYTES`): at batch
  64 with 10-s clips the stem's output alone is 164 MB, and glibc serves every block above 32 MiB
  with a fresh ``mmap``, so each forward page-faulted its working set in again (plain network:
  2.8 GB, about half its CPU time was system time; fused without chunks: 1.5 GB). With chunks of 8 clips every tensor is reused from the heap and the
  feature maps stay in cache. Everything in eval mode is per clip, so chunking is exact.

- **bfloat16** (``compute_dtype=torch.bfloat16``; ``Detector`` with precision ``bfloat16`` or
  ``auto`` on a CPU that gains, :mod:`fastasd.precision`): the convolutions' weights are
  converted once, here, and their feature maps are bfloat16, channels-last from the stem on (the
  input BN writes its float32 result with channels-last strides); per-channel affine passes
  use ``F.batch_norm``, the one vectorized bfloat16 kernel for them. The frontend, the input
  BN's arithmetic and the Linear layers stay float32, and so are the embeddings returned.

What each step gives is in ``benchmarks/NOTES.md`` (tuning log). Results differ from the plain
network only by float32 rounding (a different order of the same operations); the tests in
``tests/test_inference.py`` bound it.

Use it only for inference: it has no trainable parameters, refuses ``train()`` (it only knows the
eval statistics) and is a snapshot of the weights when it was built. :class:`fastasd.api.Detector`
builds one per ensemble member on first use, caches it and rebuilds it when the device or the
weights change (see :func:`weights_fingerprint`). ``FASTASD_FUSED_INFERENCE=0`` or
``FASTASD_BACKEND=reference`` make the detector use the plain network (:func:`fused_enabled`).
"""
from __future__ import annotations

import copy
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastasd.model import (EmbeddingNet, SpectrogramBranch, SpectrumBranch, _ResBlock, _SameConv,
                           combine_embeddings, same_padding)

logger = logging.getLogger(__name__)

__all__ = ["FusedEmbeddingNet", "fuse_for_inference", "fused_enabled", "inference_module",
           "weights_fingerprint", "ENV_VAR"]

ENV_VAR = "FASTASD_FUSED_INFERENCE"
# CPU: the batch runs in chunks whose largest feature map stays below this many bytes (see
# FusedEmbeddingNet.chunk_size), so that glibc serves every tensor from its heap (blocks above
# 32 MiB are always fresh mmaps, i.e. page faults on every first touch) and caches stay warm.
CHUNK_BYTES = 20 * 2**20


def fused_enabled() -> bool:
    """Whether scoring should use the fused network: not when ``FASTASD_FUSED_INFERENCE`` is
    0/false/no/off, and not when ``FASTASD_BACKEND=reference`` (the reference system is the plain
    PyTorch network end to end). Read at every call, like ``FASTASD_BACKEND``."""
    from fastasd._backend import backend_name, switch_on

    return switch_on(ENV_VAR) and backend_name() != "reference"


# ---------------------------------------------------------------------------------- folding
def _bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as ``y = scale * x + shift`` (float64, per channel)."""
    if bn.running_mean is None or bn.running_var is None:
        raise NotImplementedError(f"{bn}: no running statistics (track_running_stats=False): eval "
                                  "mode normalizes with batch statistics, which cannot be folded")
    var = bn.running_var.detach().double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -bn.running_mean.detach().double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    return scale, shift


def _folded(weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor | None,
            shift: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale * (W x + b) + shift`` as one layer ``(W', b')`` (per output channel; float64)."""
    w = weight.detach().double()
    b = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device) if bias is None else bias.detach().double()
    if scale is not None:
        w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
        b = b * scale
    if shift is not None:
        b = b + shift
    return w, b


class _Conv(nn.Module):
    """A conv with a folded weight and bias and Keras "same" padding: the conv's own (symmetric)
    padding where "same" is symmetric for the input's size, else the exact ``F.pad`` first."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernel: int, stride: int,
                 dtype: torch.dtype):
        super().__init__()
        self.register_buffer("weight", weight.to(dtype).contiguous())
        self.register_buffer("bias", None if bias is None else bias.to(dtype).contiguous())
        self.kernel, self.stride = kernel, stride
        self.dims = weight.dim() - 2
        self._conv = F.conv1d if self.dims == 1 else F.conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = [same_padding(size, self.kernel, self.stride) for size in x.shape[2:]]
        if all(a == b for a, b in pads):
            return self._conv(x, self.weight, self.bias, self.stride, [a for a, _ in pads])
        flat: list[int] = []
        for a, b in reversed(pads):  # F.pad wants the last axis first
            flat.extend((a, b))
        return self._conv(F.pad(x, flat), self.weight, self.bias, self.stride)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, kernel={self.kernel}, stride={self.stride}"


def _same_conv(m: _SameConv, scale, shift, dtype) -> _Conv:
    w, b = _folded(m.conv.weight, m.conv.bias, scale, shift)
    return _Conv(w, b, m.kernel, m.stride, dtype)


def _max_pool_3x3s2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 3, 2)`` ("valid"), exactly, without the int64 indices that PyTorch's CPU
    max-pool computes even in inference: ``max_pool1d`` (an index-free kernel) along the last
    axis, then the max of three strided row views along time."""
    b, c, t, f = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        # channels-last: three strided views along frequency too, each max vectorized over the
        # channels (1.5x faster than max_pool2d's channels-last kernel, which computes indices)
        fo = (f - 3) // 2 + 1
        y = torch.maximum(x[..., 0:2 * fo - 1:2], x[..., 1:2 * fo:2])
        y = torch.max(y, x[..., 2:2 * fo + 1:2], out=y)
    else:
        y = F.max_pool1d(x.reshape(b * c, t, f), 3, 2).view(b, c, t, -1)
    to = (t - 3) // 2 + 1
    out = torch.maximum(y[:, :, 0:2 * to - 1:2], y[:, :, 1:2 * to:2])
    return torch.max(out, y[:, :, 2:2 * to + 1:2], out=out)


def _max_pool_2x2_ceil(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2, 2, ceil_mode=True)`` (Keras "same" 2x2 pooling) exactly, as the max of
    strided views (no indices); an odd last row/column is its own (partial) window."""
    for dim in (2, 3):
        a = x[:, :, 0::2] if dim == 2 else x[:, :, :, 0::2]
        b = x[:, :, 1::2] if dim == 2 else x[:, :, :, 1::2]
        m = b.shape[dim]
        if m == a.shape[dim]:
            x = torch.maximum(a, b)
        else:  # odd: the last window holds one row/column
            out = torch.empty_like(a)
            torch.maximum(a.narrow(dim, 0, m), b, out=out.narrow(dim, 0, m))
            out.narrow(dim, m, 1).copy_(a.narrow(dim, m, 1))
            x = out
    return x


def _reduced(dtype: torch.dtype) -> bool:
    """Whether ``dtype`` is a 16-bit float (the bfloat16 code path)."""
    return dtype in (torch.bfloat16, torch.float16)


def _channel_affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    """``scale * x + shift`` per channel (dim 1; ``scale``/``shift`` as :func:`_channel_view`) for
    bfloat16 feature maps: eval-mode ``F.batch_norm`` with unit statistics is the one CPU kernel
    that is vectorized for them in channels-last; broadcasting ``addcmul``/``mul_``/``add_`` are
    4-20x slower there (benchmarks/NOTES.md)."""
    c = x.shape[1]
    ones = torch.ones(c, dtype=scale.dtype, device=x.device)
    return F.batch_norm(x, torch.zeros_like(ones), ones, scale.reshape(c),
                        None if shift is None else shift.reshape(c), False, 0.0, 0.0)


def _channel_view(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return v.to(dtype).reshape(1, -1, 1, 1).contiguous()


class _FusedBlock(nn.Module):
    """A residual block whose output is ``post_scale * block(x) + post_shift`` (the next block's
    ``bn1``; identity for the last block). Takes ``h = bn1(x)`` (already applied) as input."""

    def __init__(self, blk: _ResBlock, post: tuple[torch.Tensor, torch.Tensor] | None, dtype):
        super().__init__()
        s2, t2 = _bn_affine(blk.bn2)
        self.conv1 = _same_conv(blk.conv1, s2, t2, dtype)  # conv1 -> bn2 folded
        post_s, post_t = post if post is not None else (None, None)
        self.downsample = blk.downsample
        if self.downsample:
            # s * (Wsc m + bsc + W2 z + b2) + t: biases all go to conv2, scales to both convs
            wsc, bsc = _folded(blk.shortcut.weight, blk.shortcut.bias, post_s, None)
            self.register_buffer("shortcut_weight", wsc.to(dtype).contiguous())
            w2, b2 = _folded(blk.conv2.conv.weight, blk.conv2.conv.bias, post_s, post_t)
            b2 = b2 + bsc
            self.register_buffer("post_scale", None)
        else:
            w2, b2 = _folded(blk.conv2.conv.weight, blk.conv2.conv.bias, post_s, post_t)
            self.register_buffer("shortcut_weight", None)
            self.register_buffer("post_scale", None if post_s is None else _channel_view(post_s, dtype))
        self.conv2 = _Conv(w2, b2, blk.conv2.kernel, blk.conv2.stride, dtype)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        r = F.relu_(self.conv1(F.relu(h)))
        r = self.conv2(r)
        if self.downsample:
            # 2x2 max-pool with Keras "same" padding == ceil_mode (a partial last window)
            sc = F.conv2d(_max_pool_2x2_ceil(h), self.shortcut_weight)
            return r.add_(sc)
        if self.post_scale is None:
            return r.add_(h)
        if _reduced(r.dtype):
            return r.add_(_channel_affine(h, self.post_scale, None))
        return r.addcmul_(h, self.post_scale)


class _FusedSpectrogram(nn.Module):
    """``compute``: the dtype of the convolutions and their feature maps; the input BN reads the
    float32 spectrogram and the final Linear runs in ``dtype`` (the parameters' dtype)."""

    def __init__(self, br: SpectrogramBranch, dtype: torch.dtype, channels_last: bool,
                 compute: torch.dtype):
        super().__init__()
        self.channels_last = channels_last
        self.compute = compute
        s, t = _bn_affine(br.input_bn)  # per frequency bin: the last axis of [B, 1, T, F]
        self.register_buffer("in_scale", s.to(dtype))
        self.register_buffer("in_shift", t.to(dtype))
        self.stem = _same_conv(br.conv, *_bn_affine(br.bn), compute)  # conv7x7 -> bn folded
        bn1 = [_bn_affine(b.bn1) for b in br.blocks]
        self.register_buffer("bn1_scale", _channel_view(bn1[0][0], compute))
        self.register_buffer("bn1_shift", _channel_view(bn1[0][1], compute))
        self.blocks = nn.ModuleList(
            _FusedBlock(b, bn1[i + 1] if i + 1 < len(bn1) else None, compute) for i, b in enumerate(br.blocks))
        # embed(flat_bn(x)) = W (s x + t) + b = (W diag(s)) x + (W t + b)
        s, t = _bn_affine(br.flat_bn)
        w = br.embed.weight.detach().double()
        b = w @ t
        if br.embed.bias is not None:
            b = b + br.embed.bias.detach().double()
        self.register_buffer("embed_weight", (w * s).to(dtype).contiguous())
        self.register_buffer("embed_bias", b.to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _reduced(self.compute):
            x = torch.addcmul(self.in_shift, x, self.in_scale)  # input BN, per frequency bin
        else:
            # computed in float32, written once in the compute dtype; channels-last strides (the
            # same bytes for one channel) make the stem's output channels-last, so that the
            # stem and the max-pool run their channels-last kernels, which in bfloat16 are 1.5x
            # and 2x faster than the NCHW ones (benchmarks/NOTES.md)
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            x = torch.addcmul(self.in_shift, x, self.in_scale,
                              out=torch.empty(x.shape, dtype=self.compute, device=x.device, memory_format=fmt))
        x = self.stem(x)
        # == max_pool(relu(x)): the ReLU runs on a quarter of the elements
        x = F.relu_(_max_pool_3x3s2(x))
        if _reduced(x.dtype):
            h = _channel_affine(x, self.bn1_scale, self.bn1_shift)
        elif self.channels_last:  # block 0's bn1 writes the channels-last copy
            h = torch.empty_like(x, memory_format=torch.channels_last)
            torch.addcmul(self.bn1_shift, x, self.bn1_scale, out=h)
        else:
            h = torch.addcmul(self.bn1_shift, x, self.bn1_scale)
        for block in self.blocks:
            h = block(h)
        x = h.amax(dim=2)  # max over time -> [B, C, F]
        x = x.transpose(1, 2).flatten(1).to(self.embed_weight.dtype)  # Keras order (F, C)
        return F.linear(x, self.embed_weight, self.embed_bias)


class _FusedSpectrum(nn.Module):
    """The convolutions in ``compute``, the dense layers in ``dtype`` (the parameters' dtype)."""

    def __init__(self, br: SpectrumBranch, dtype: torch.dtype, compute: torch.dtype):
        super().__init__()
        self.compute = compute
        self.convs = nn.ModuleList(_same_conv(c, None, None, compute) for c in br.convs)
        # [Linear -> BN1d -> ReLU] x n: each Linear + BN folded (buffers: nn.Linear would draw
        # random initial weights from the global generator)
        layers = list(br.dense)
        self.n_dense = len(layers) // 3
        for i in range(self.n_dense):
            lin, bn = layers[3 * i], layers[3 * i + 1]
            w, b = _folded(lin.weight, lin.bias, *_bn_affine(bn))
            self.register_buffer(f"dense{i}_weight", w.to(dtype).contiguous())
            self.register_buffer(f"dense{i}_bias", b.to(dtype))
        self.register_buffer("embed_weight", br.embed.weight.detach().to(dtype).clone())
        self.register_buffer("embed_bias", None if br.embed.bias is None else br.embed.bias.detach().to(dtype).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.compute).unsqueeze(1)
        for conv in self.convs:
            x = F.relu_(conv(x))
        x = x.transpose(1, 2).flatten(1).to(self.embed_weight.dtype)  # Keras order (L, C)
        for i in range(self.n_dense):
            x = F.relu_(F.linear(x, getattr(self, f"dense{i}_weight"), getattr(self, f"dense{i}_bias")))
        return F.linear(x, self.embed_weight, self.embed_bias)


class FusedEmbeddingNet(nn.Module):
    """Eval-only :class:`EmbeddingNet` with folded BatchNorms (see the module docstring): built by
    :func:`fuse_for_inference`, ``waveforms [B, num_samples] -> [B, embedding_dim]`` (float32
    embeddings; the convolutions compute in ``compute_dtype``)."""

    def __init__(self, model: EmbeddingNet, channels_last: bool = True,
                 chunk_bytes: int | None = CHUNK_BYTES, compute_dtype: torch.dtype | None = None):
        super().__init__()
        dtype = _param_dtype(model)
        self.compute_dtype = dtype if compute_dtype is None else compute_dtype
        self.config = model.config
        self.num_samples = model.num_samples
        self.embedding_dim = model.embedding_dim
        self.chunk_bytes = chunk_bytes
        self.clip_bytes = _largest_map_bytes(model, dtype)
        self.frontend = copy.deepcopy(model.frontend)  # no parameters; the log-mel filterbank buffer
        self.spectrogram_branch = self.spectrum_branch = None
        if model.spectrogram_branch is not None:
            self.spectrogram_branch = _FusedSpectrogram(model.spectrogram_branch, dtype, channels_last,
                                                        self.compute_dtype)
        if model.spectrum_branch is not None:
            self.spectrum_branch = _FusedSpectrum(model.spectrum_branch, dtype, self.compute_dtype)
        self.eval()

    def train(self, mode: bool = True) -> "FusedEmbeddingNet":
        if mode:
            raise RuntimeError("FusedEmbeddingNet is for inference only; train the EmbeddingNet")
        return super().train(False)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        if waveforms.dim() != 2 or waveforms.shape[1] != self.num_samples:
            raise ValueError(f"EmbeddingNet: waveforms must be [B, {self.num_samples}], "
                             f"got {tuple(waveforms.shape)}")
        c = self.chunk_size(waveforms.shape[0], waveforms.device)
        if c < waveforms.shape[0]:
            return torch.cat([self._run(w) for w in waveforms.split(c)])
        return self._run(waveforms)

    def chunk_size(self, batch: int, device: torch.device) -> int:
        """Clips per chunk: on CPU, as many as keep the largest feature map of a chunk within
        ``chunk_bytes`` (balanced over the chunks; at least 1); elsewhere the whole batch (a GPU
        wants large batches, and its caching allocator has no page-fault cost)."""
        if device.type != "cpu" or not self.chunk_bytes or batch <= 1:
            return max(batch, 1)
        per = max(1, self.chunk_bytes // self.clip_bytes)
        n = -(-batch // per)
        return -(-batch // n)

    def _run(self, waveforms: torch.Tensor) -> torch.Tensor:
        spec, spectrum = self.frontend(waveforms)
        embs = []
        if self.spectrum_branch is not None:
            embs.append(self.spectrum_branch(spectrum))
        if self.spectrogram_branch is not None:
            embs.append(self.spectrogram_branch(spec))
        return combine_embeddings(embs, self.config.combine)


def _largest_map_bytes(model: EmbeddingNet, dtype: torch.dtype) -> int:
    """Bytes per clip of the largest tensor of a forward pass (waveform, spectrogram, spectrum
    FFT, stem conv output, first spectrum conv output)."""
    elt = torch.empty((), dtype=dtype).element_size()
    n = model.num_samples
    sizes = [n * elt]
    if model.spectrogram_branch is not None:
        t, f = model.spectrogram_branch.sizes["input"]
        ct, cf = model.spectrogram_branch.sizes["conv"]
        sizes += [t * f * elt, ct * cf * model.spectrogram_branch.conv.conv.out_channels * elt]
    if model.spectrum_branch is not None:
        sizes += [(n // 2 + 1) * 2 * elt,  # complex rfft
                  model.spectrum_branch.sizes[1] * model.spectrum_branch.convs[0].conv.out_channels * elt]
    return max(sizes)


def _param_dtype(model: nn.Module) -> torch.dtype:
    dtypes = {p.dtype for p in model.parameters()}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        raise NotImplementedError(f"parameters of mixed or non-float dtypes {sorted(map(str, dtypes))}")
    return dtypes.pop()


def fuse_for_inference(model: EmbeddingNet, *, channels_last: bool = True,
                       chunk_bytes: int | None = CHUNK_BYTES,
                       compute_dtype: torch.dtype | None = None) -> FusedEmbeddingNet:
    """An eval-only module computing ``model.eval()(waveforms)`` (up to float rounding) faster.

    ``channels_last``: the residual stages in channels-last memory format. ``chunk_bytes``: on
    CPU, run the batch in chunks whose largest feature map stays below this size (None or 0: the
    whole batch at once); every operation is per clip in eval mode, so chunks change nothing but
    float rounding inside the convolutions. ``compute_dtype`` (default: the parameters' dtype):
    the dtype of the convolutions, their weights (converted once, here) and their feature maps,
    e.g. ``torch.bfloat16`` for the CPU's bfloat16 units; the frontend, the input BN's
    arithmetic, the Linear layers and the returned embeddings keep the parameters' dtype.

    The result is a snapshot: later changes to ``model``'s weights or device do not reach it.
    Raises ``NotImplementedError`` for what cannot be folded exactly (a subclass of
    :class:`EmbeddingNet` that may compute something else, BatchNorms without running statistics,
    mixed parameter dtypes); :func:`inference_module` then uses the plain network.
    """
    if type(model) is not EmbeddingNet:  # a subclass may change forward(): no fusion
        raise NotImplementedError(f"not an EmbeddingNet: {type(model).__name__}")
    with torch.no_grad(), torch.inference_mode(False):  # ordinary tensors, usable anywhere
        return FusedEmbeddingNet(model, channels_last=channels_last, chunk_bytes=chunk_bytes,
                                 compute_dtype=compute_dtype)


def weights_fingerprint(model: nn.Module) -> tuple | None:
    """Identity of ``model``'s weights and statistics as they are now: per tensor, its storage
    address, version counter (bumped by every in-place change: optimizer steps,
    ``load_state_dict``, ``copy_``), device, dtype and shape; plus the training flag. None when a
    tensor has no version counter (an inference-mode tensor): then nothing may be cached."""
    parts: list = [id(model), model.training]
    for name, t in model.state_dict(keep_vars=True).items():
        if t is None:
            continue
        try:
            version = t._version
        except RuntimeError:  # inference tensors do not track versions
            return None
        parts.append((name, t.data_ptr(), version, t.device, t.dtype, tuple(t.shape)))
    return tuple(parts)


def inference_module(model: nn.Module, compute_dtype: torch.dtype | None = None) -> nn.Module:
    """The fused module for ``model`` (convolutions in ``compute_dtype``, see
    :func:`fuse_for_inference`) or, where fusion does not apply, ``model`` itself (with the
    reason logged once; the caller then runs it under autocast for a lower precision). Does not
    cache and does not read the environment: see :meth:`fastasd.api.Detector.inference_model`."""
    try:
        return fuse_for_inference(model, compute_dtype=compute_dtype)  # type: ignore[arg-type]
    except NotImplementedError as e:
        key = (type(model).__name__, str(e))
        if key not in _logged:
            _logged.add(key)
            logger.info("fused inference not used (%s): running the plain network", e)
        return model


_logged: set = set()
