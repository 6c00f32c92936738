"""The network fused for inference (fastasd.inference) against the plain EmbeddingNet, and the
Detector's use of it (FASTASD_FUSED_INFERENCE, FASTASD_BACKEND=reference, caching).

Tolerance: the fused network performs the same arithmetic in another order (BN scales multiplied
into the weights in float64 and rounded once, biases summed before instead of after, chunks of
the batch through oneDNN), so the two differ by float32 rounding only. Measured: about 1e-6 of
the embedding's largest magnitude. The tests allow rtol 1e-4 plus atol 1e-5 x that magnitude, ten
times the measured error, while any real mistake (a wrong padding offset, a BN left out or applied
twice, a sign) moves embeddings by more than 1e-2 of their scale. The BatchNorms get random
running statistics and affine parameters (and the convs random biases with use_bias), so that no
folding can pass by acting on the identity.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastasd import inference
from fastasd.config import Config
from fastasd.inference import (FusedEmbeddingNet, _Conv, _max_pool_2x2_ceil, _max_pool_3x3s2,
                               fuse_for_inference)
from fastasd.model import EmbeddingNet, _SameConv

RTOL, ATOL_REL = 1e-4, 1e-5


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN running statistics and affine parameters, random biases; eval mode."""
    g = torch.Generator().manual_seed(seed)

    def rnd(t, scale, offset=0.0):
        return torch.randn(t.shape, generator=g) * scale + offset

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(rnd(m.running_mean, 0.5))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 2 + 0.2)
                m.weight.copy_(rnd(m.weight, 0.5, 1.0))  # some negative: folding must keep signs
                m.bias.copy_(rnd(m.bias, 0.3))
            elif isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
                m.bias.copy_(rnd(m.bias, 0.1))
    return model.eval()


def assert_embeddings_close(got: torch.Tensor, want: torch.Tensor) -> None:
    scale = want.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL_REL * scale)


def make(seconds: float = 1.0, seed: int = 0, **overrides) -> tuple[EmbeddingNet, torch.Tensor]:
    cfg = Config(clip_seconds=seconds, **overrides)
    torch.manual_seed(seed)
    model = randomize(EmbeddingNet(cfg), seed)
    x = torch.randn(3, cfg.num_samples, generator=torch.Generator().manual_seed(seed + 1)) * 0.1
    return model, x


CONFIGS = {
    "default": {},
    "use_bias": {"use_bias": True},
    "spectrogram_only": {"representation": "spectrogram"},
    "spectrum_only": {"representation": "spectrum", "use_bias": True},
    "add": {"combine": "add", "use_bias": True},
    "logmel": {"spectrogram_type": "logmel", "use_bias": True},
    "no_temporal_norm": {"temporal_normalization": False},
    "no_dense": {"spectrum_dense_layers": 0},
    "clip_1.3s": {"seconds": 1.3},
    "clip_2s": {"seconds": 2.0, "use_bias": True},
    "small_fft": {"seconds": 0.5, "n_fft": 256, "hop": 128, "embedding_dim": 16},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fused_equals_plain(name):
    kw = dict(CONFIGS[name])
    model, x = make(kw.pop("seconds", 1.0), **kw)
    fused = fuse_for_inference(model)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    with torch.inference_mode():
        want = model(x)
        got = fused(x)
    assert got.shape == want.shape == (3, model.embedding_dim) and got.dtype == torch.float32
    assert_embeddings_close(got, want)
    with torch.no_grad():  # also outside inference mode
        assert_embeddings_close(fused(x), want)


def test_paper_clip_length_and_layout_options():
    """10-s clips (the paper's shapes: symmetric "same" padding for the 7x7/2 and spectrum convs),
    with and without channels_last, the whole batch at once and one clip per chunk."""
    model, x = make(10.0)
    x = x[:2]
    with torch.inference_mode():
        want = model(x)
        for kw in ({}, {"channels_last": False}, {"chunk_bytes": None}, {"chunk_bytes": 1}):
            assert_embeddings_close(fuse_for_inference(model, **kw)(x), want)


def test_chunks_are_balanced_and_exact():
    model, _ = make(1.0)
    fused = fuse_for_inference(model)
    cpu = torch.device("cpu")
    per = inference.CHUNK_BYTES // fused.clip_bytes
    assert fused.chunk_size(1, cpu) == 1
    assert fused.chunk_size(per, cpu) == per
    c = fused.chunk_size(per + 1, cpu)  # two chunks, balanced
    assert c == -(-(per + 1) // 2)
    assert fused.chunk_size(64, torch.device("meta")) == 64  # only CPU runs chunks
    # 10-s clips: the stem's output is 2.57 MB per clip, 8 clips per chunk at batch 64
    big = fuse_for_inference(EmbeddingNet(Config()))
    assert big.chunk_size(64, cpu) == 8
    # chunks of at most 1, 2 and 3 clips of a batch of 7 give the batch's embeddings
    x = torch.randn(7, model.num_samples) * 0.1
    with torch.inference_mode():
        want = model(x)
        for most in (1, 2, 3):
            f = fuse_for_inference(model, chunk_bytes=most * fused.clip_bytes)
            assert f.chunk_size(7, cpu) == {1: 1, 2: 2, 3: 3}[most]  # 7 x 1, 4 x 2 (last 1), 3 x 3
            assert_embeddings_close(f(x), want)


@pytest.mark.parametrize("stride,kernel", [(1, 3), (2, 3), (2, 7), (2, 2)])
@pytest.mark.parametrize("size", [(5, 8), (6, 9), (77, 128), (39, 64), (20, 32), (311, 513)])
def test_conv_padding_equals_keras_same(stride, kernel, size):
    """The conv's own symmetric padding where Keras "same" is symmetric, F.pad otherwise: both
    equal _SameConv (explicit F.pad of model.same_padding) exactly in the output positions."""
    torch.manual_seed(0)
    ref = _SameConv(2, 3, 4, kernel, stride, bias=True)
    x = torch.randn(2, 3, *size)
    conv = _Conv(ref.conv.weight.detach(), ref.conv.bias.detach(), kernel, stride, torch.float32)
    with torch.no_grad():
        want = ref(x)
        got = conv(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [7, 8, 80000 // 1000])
@pytest.mark.parametrize("stride,kernel", [(64, 256), (32, 64), (4, 16), (2, 5)])
def test_conv1d_padding_equals_keras_same(stride, kernel, length):
    torch.manual_seed(0)
    ref = _SameConv(1, 2, 3, kernel, stride, bias=False)
    x = torch.randn(2, 2, length * stride - 3)
    conv = _Conv(ref.conv.weight.detach(), None, kernel, stride, torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 156, 257), (2, 3, 7, 8), (1, 2, 3, 3), (2, 4, 10, 5)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pools_equal_max_pool2d(shape, channels_last):
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(_max_pool_3x3s2(x), F.max_pool2d(x, 3, 2))
    got = _max_pool_2x2_ceil(x)
    assert torch.equal(got, F.max_pool2d(x, 2, 2, ceil_mode=True))
    if channels_last:
        assert got.is_contiguous(memory_format=torch.channels_last)


def test_fused_is_inference_only():
    model, _ = make(1.0)
    rng = torch.random.get_rng_state()
    fused = fuse_for_inference(model)
    assert torch.equal(torch.random.get_rng_state(), rng)  # building it draws no random numbers
    assert not fused.training
    assert not any(p.requires_grad for p in fused.parameters())
    with pytest.raises(RuntimeError, match="inference only"):
        fused.train()
    fused.eval()  # allowed
    with pytest.raises(ValueError, match="waveforms must be"):
        fused(torch.zeros(2, model.num_samples + 1))


def test_snapshot_and_unsupported_models_fall_back():
    model, x = make(1.0)
    fused = fuse_for_inference(model)
    with torch.inference_mode():
        before = fused(x)
    with torch.no_grad():
        model.spectrum_branch.embed.weight.mul_(2.0)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), before)  # a snapshot: unaffected

    class Sub(EmbeddingNet):
        pass

    sub = Sub(model.config)
    assert inference.inference_module(sub) is sub
    no_stats = EmbeddingNet(model.config)
    no_stats.spectrogram_branch.bn.running_mean = None
    no_stats.spectrogram_branch.bn.running_var = None
    no_stats.spectrogram_branch.bn.track_running_stats = False
    assert inference.inference_module(no_stats) is no_stats


def test_fingerprint_tracks_weight_changes():
    model, _ = make(1.0)
    fp = inference.weights_fingerprint(model)
    assert fp == inference.weights_fingerprint(model)
    with torch.no_grad():
        model.spectrogram_branch.blocks[3].bn2.running_var.add_(0.1)
    fp2 = inference.weights_fingerprint(model)
    assert fp2 != fp
    model.load_state_dict(model.state_dict())
    assert inference.weights_fingerprint(model) != fp2
    model.train()
    assert inference.weights_fingerprint(model)[1] is True


# ----------------------------------------------------------------------------- Detector wiring
SR = 16000


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A real Detector (1.3-s clips, random weights with random BN statistics, a cosine backend
    fitted on a few WAV training clips), built by fit_detector."""
    import soundfile as sf

    from fastasd.api import fit_detector
    from fastasd.data.labels import ClassEncoder
    from fastasd.data.layout import discover

    root = tmp_path_factory.mktemp("inference_dcase")
    rng = np.random.default_rng(0)
    cfg = Config(clip_seconds=1.3, n_clusters=2, embedding_dim=32, spectrum_dense_layers=1, device="cpu")
    for sec in ("00", "01"):
        for k in range(3):
            dom = "source" if k < 2 else "target"
            p = root / "fan" / "train" / f"section_{sec}_{dom}_train_normal_{k:04d}_x.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            sf.write(p, (0.1 * rng.standard_normal(int(1.3 * SR))).astype(np.float32), SR)
    train = discover(root, splits=("train",))
    torch.manual_seed(0)
    model = randomize(EmbeddingNet(cfg), seed=3)
    det = fit_detector(cfg, [model], ClassEncoder().fit(train), train, device="cpu", progress=False)
    assert det.precision == "auto"  # the default; the tests below compare float32 computations
    det.precision = "float32"
    return det


def _waves(det, n=4, seed=0):
    return torch.randn(n, det.num_samples, generator=torch.Generator().manual_seed(seed)) * 0.1


def test_detector_uses_fused_unless_switched_off(detector, monkeypatch):
    det = detector
    x = _waves(det)
    mts, secs = ["fan"] * 4, ["00", "01", "00", "01"]
    monkeypatch.delenv("FASTASD_BACKEND", raising=False)
    monkeypatch.delenv(inference.ENV_VAR, raising=False)
    assert isinstance(det.inference_model(0), FusedEmbeddingNet)
    fused_scores, fused_dec = det.score_waveforms(x, mts, secs)
    fused_emb = det.embed_waveforms(x)
    for off in ("0", "false", "off"):
        monkeypatch.setenv(inference.ENV_VAR, off)
        assert det.inference_model(0) is det.models[0]
    plain_scores, plain_dec = det.score_waveforms(x, mts, secs)
    plain_emb = det.embed_waveforms(x)
    assert_embeddings_close(fused_emb, plain_emb)
    np.testing.assert_allclose(fused_scores, plain_scores, rtol=1e-4, atol=1e-5)
    monkeypatch.setenv(inference.ENV_VAR, "1")
    assert isinstance(det.inference_model(0), FusedEmbeddingNet)
    monkeypatch.setenv("FASTASD_BACKEND", "reference")  # the reference system: plain PyTorch
    assert det.inference_model(0) is det.models[0]
    with torch.inference_mode():
        want = det.models[0](x)
    torch.testing.assert_close(det.embed_waveforms(x), want, rtol=0, atol=0)


def test_detector_cache_and_invalidation(detector, monkeypatch):
    det = detector
    monkeypatch.delenv("FASTASD_BACKEND", raising=False)
    monkeypatch.delenv(inference.ENV_VAR, raising=False)
    x = _waves(det, seed=1)
    m = det.inference_model(0)
    assert det.inference_model(0) is m  # cached
    det.embed_waveforms(x)  # inside inference mode too
    det.score_waveforms(x, ["fan"] * 4, ["00"] * 4)
    assert det._inference_cache[(0, torch.float32)][1] is m
    det.to("cpu")
    m2 = det.inference_model(0)
    assert m2 is not m  # .to() drops the cache
    # new weights (in place, as load_state_dict / an optimizer step): rebuilt, new embeddings
    old = {k: v.clone() for k, v in det.models[0].state_dict().items()}
    try:
        with torch.no_grad():
            det.models[0].spectrogram_branch.flat_bn.running_mean.add_(1.0)
            det.models[0].spectrum_branch.convs[0].conv.weight.mul_(-1.0)
        m3 = det.inference_model(0)
        assert m3 is not m2
        with torch.inference_mode():
            want = det.models[0](x)
        assert_embeddings_close(det.embed_waveforms(x), want)
        det.models[0].train()  # training mode: the plain network, never the fused one
        assert det.inference_model(0) is det.models[0]
    finally:
        det.models[0].load_state_dict(old)
        det.models[0].eval()
    assert det.inference_model(0) is not m3


def test_detector_bf16_scoring(detector, monkeypatch):
    det = detector
    monkeypatch.delenv("FASTASD_BACKEND", raising=False)
    x = _waves(det, seed=2)
    mts, secs = ["fan"] * 4, ["00", "01", "00", "01"]
    monkeypatch.setenv(inference.ENV_VAR, "1")
    fused = det.embed_waveforms(x, bf16=True)
    scores, _ = det.score_waveforms(x, mts, secs, bf16=True)
    monkeypatch.setenv(inference.ENV_VAR, "0")
    plain = det.embed_waveforms(x, bf16=True)
    full = det.embed_waveforms(x)
    assert fused.dtype == torch.float32 and torch.isfinite(fused).all() and np.isfinite(scores).all()
    # bfloat16 keeps 8 bits: both bf16 runs are near the float32 embeddings and near each other
    for e in (fused, plain):
        cos = F.cosine_similarity(e, full, dim=1)
        assert cos.min() > 0.99, cos


def test_fit_embeds_with_the_fused_network(detector, monkeypatch, tmp_path):
    """_embed_clips (fitting the backends) runs the fused network, and the plain one when off."""
    import soundfile as sf

    from fastasd.training.backend_fit import embed_clips as _embed_clips
    from fastasd.data.layout import discover

    calls = []
    orig = FusedEmbeddingNet.forward

    def spy(self, w):
        calls.append(len(w))
        return orig(self, w)

    monkeypatch.setattr(FusedEmbeddingNet, "forward", spy)
    monkeypatch.delenv("FASTASD_BACKEND", raising=False)
    det = detector
    rng = np.random.default_rng(1)
    for k in range(5):
        p = tmp_path / "fan" / "train" / f"section_00_source_train_normal_{k:04d}_x.wav"
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(p, (0.1 * rng.standard_normal(det.num_samples)).astype(np.float32), SR)
    clips = discover(tmp_path, splits=("train",))
    monkeypatch.setenv(inference.ENV_VAR, "1")
    _, (fused,) = _embed_clips(det.models, clips, det.config, det.device, batch_size=4)
    assert sum(calls) == len(clips)
    monkeypatch.setenv(inference.ENV_VAR, "0")
    _, (plain,) = _embed_clips(det.models, clips, det.config, det.device, batch_size=4)
    assert sum(calls) == len(clips)  # not called again
    assert_embeddings_close(torch.from_numpy(fused), torch.from_numpy(plain))



# ----------------------------------------------------------------------------- bfloat16
# bfloat16 keeps 8 significant bits: the convolutions' weights and feature maps are rounded to
# about 0.4 %. Measured: embeddings with cosine similarity >= 0.9999 to float32 (10-s clips,
# random weights and BN statistics; 0.99998 on the trained demo model); a real mistake (a layer
# left in float32 where bfloat16 is asked, a wrong layout) changes dtypes or layouts, checked
# directly below, and any wrong arithmetic moves the cosine far below 0.999.
BF16_COS = 0.999


@pytest.mark.parametrize("name", ["default", "use_bias", "spectrum_only", "add", "clip_2s", "small_fft"])
def test_bfloat16_fused_close_to_float32(name):
    kw = dict(CONFIGS[name])
    model, x = make(kw.pop("seconds", 1.0), **kw)
    fused = fuse_for_inference(model, compute_dtype=torch.bfloat16)
    assert fused.compute_dtype == torch.bfloat16
    with torch.inference_mode():
        got, want = fused(x), model(x)
    assert got.dtype == torch.float32
    cos = F.cosine_similarity(got, want, dim=1)
    assert cos.min() > BF16_COS, cos


def test_bfloat16_weights_converted_once_and_channels_last():
    """Every convolution holds bfloat16 weights (converted when fused, never per call), the
    Linear layers float32; the spectrogram branch's feature maps are bfloat16 and channels-last
    from the stem on."""
    model, x = make(2.0, use_bias=True)
    fused = fuse_for_inference(model, compute_dtype=torch.bfloat16)
    convs = [m for m in fused.modules() if isinstance(m, _Conv)]
    assert convs and all(c.weight.dtype == torch.bfloat16 for c in convs)
    assert fused.spectrogram_branch.embed_weight.dtype == torch.float32
    assert fused.spectrum_branch.dense0_weight.dtype == torch.float32
    maps = []
    hooks = [m.register_forward_hook(lambda mod, a, out: maps.append(out))
             for m in [fused.spectrogram_branch.stem, *fused.spectrogram_branch.blocks]]
    try:
        with torch.inference_mode():
            fused(x)
    finally:
        for h in hooks:
            h.remove()
    assert len(maps) == 1 + len(fused.spectrogram_branch.blocks)
    for out in maps:
        assert out.dtype == torch.bfloat16
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()


def test_detector_precision_switch(detector, monkeypatch):
    from fastasd import precision
    from fastasd.api import Detector

    det = detector
    monkeypatch.delenv("FASTASD_BACKEND", raising=False)
    monkeypatch.setenv(inference.ENV_VAR, "1")
    with pytest.raises(ValueError, match="Detector.precision must be one of"):
        det.precision = "float16"
    assert Detector(det.config, det.models, det.encoder, det.backends, det.thresholds).precision == "auto"
    x = _waves(det, seed=3)
    mts, secs = ["fan"] * 4, ["00", "01", "00", "01"]
    try:
        det.precision = "auto"
        monkeypatch.setattr(precision, "cpu_prefers_bfloat16", lambda: True)
        assert det.compute_dtype() == torch.bfloat16
        m16 = det.inference_model(0)
        assert m16.compute_dtype == torch.bfloat16 and det.inference_model(0) is m16  # cached
        auto = det.embed_waveforms(x)
        torch.testing.assert_close(auto, det.embed_waveforms(x, precision="bfloat16"), rtol=0, atol=0)
        f32 = det.embed_waveforms(x, bf16=False)  # the old switch: False means float32
        torch.testing.assert_close(f32, det.embed_waveforms(x, precision="float32"), rtol=0, atol=0)
        assert det.inference_model(0, torch.float32).compute_dtype == torch.float32
        assert det.inference_model(0) is m16  # one cached module per dtype
        assert not torch.equal(auto, f32)
        assert F.cosine_similarity(auto, f32, dim=1).min() > BF16_COS
        s_auto, _ = det.score_waveforms(x, mts, secs)
        s_bf16, _ = det.score_waveforms(x, mts, secs, bf16=True)
        np.testing.assert_array_equal(s_auto, s_bf16)
        # local-density scores failed the accuracy check: auto keeps them in float32
        bal = Detector(det.config.replace(score_normalization="local_density"), det.models, det.encoder,
                       det.backends, det.thresholds)
        assert bal.compute_dtype() == torch.float32 and bal.compute_dtype("bfloat16") == torch.bfloat16
        monkeypatch.setattr(precision, "cpu_prefers_bfloat16", lambda: False)
        assert det.compute_dtype() == torch.float32
        torch.testing.assert_close(det.embed_waveforms(x), f32, rtol=0, atol=0)
    finally:
        det.precision = "float32"


def test_bfloat16_on_cuda(detector):
    """The same precision switch on CUDA (the fused network's convolutions in bfloat16 on cuDNN;
    skipped without a GPU, a failure then with FASTASD_REQUIRE_CUDA=1)."""
    try:
        from tests.ops.conftest import cuda_or_skip
    except ImportError:  # pytest's default import mode puts tests/ itself on sys.path
        from ops.conftest import cuda_or_skip

    dev = cuda_or_skip()
    model, x = make(2.0, use_bias=True)
    with torch.inference_mode():
        want = model(x)
        got = fuse_for_inference(model.to(dev), compute_dtype=torch.bfloat16)(x.to(dev)).float().cpu()
    assert F.cosine_similarity(got, want, dim=1).min() > BF16_COS
    det = detector
    x = _waves(det, seed=4)
    full = det.embed_waveforms(x, precision="float32")
    try:
        det.to(dev)
        assert det.compute_dtype("auto") == torch.float32  # unmeasured on GPUs: auto is float32
        half = det.embed_waveforms(x, precision="bfloat16")
    finally:
        det.to("cpu")
    assert F.cosine_similarity(half, full, dim=1).min() > BF16_COS
