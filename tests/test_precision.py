"""The precision switch (fastasd.precision): per-machine detection of bfloat16, ``auto``
resolution, its use by batch scoring (``score_inputs(precision=)``) and by CPU training
(``mixed_precision``: bfloat16 autocast with channels-last weights where the CPU gains).

The detection is tested with its two inputs replaced (the CPU's flags and the measured matmul
gain), so every branch runs on any machine; one test runs the real probe."""
from __future__ import annotations

import logging
import math
import types

import numpy as np
import pytest
import torch

from fastasd import precision
from fastasd.data.layout import discover
from fastasd.data.synth import generate
from fastasd.training import train_model
from fastasd.training.loop import _autocast_dtype

from tiny import TINY, tiny_config  # tests/tiny.py

CPU = torch.device("cpu")


def _decide(monkeypatch, units: dict, speedup: float | None) -> bool:
    """cpu_prefers_bfloat16's decision (uncached) for these flags and this measured gain; None:
    the probe must not run."""
    def probe(*_a, **_k):
        if speedup is None:
            raise AssertionError("the matmul probe ran on a CPU without bfloat16 units")
        return speedup

    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: units)
    monkeypatch.setattr(precision, "bf16_matmul_speedup", probe)
    return precision.cpu_prefers_bfloat16.__wrapped__()


def test_detection_needs_units_and_a_measured_gain(monkeypatch):
    none = {"amx_bf16": False, "avx512_bf16": False}
    assert _decide(monkeypatch, none, None) is False  # no units: nothing measured, float32
    avx = {"amx_bf16": False, "avx512_bf16": True}
    amx = {"amx_bf16": True, "avx512_bf16": True}
    assert _decide(monkeypatch, avx, 1.1) is False  # units, but too small a gain
    assert _decide(monkeypatch, avx, precision.MIN_SPEEDUP) is True
    assert _decide(monkeypatch, amx, 7.7) is True
    assert _decide(monkeypatch, amx, 0.5) is False  # e.g. an emulating hypervisor


def test_the_real_probe_and_description():
    units = precision.cpu_bf16_units()
    assert set(units) == {"amx_bf16", "avx512_bf16"} and all(isinstance(v, bool) for v in units.values())
    speedup = precision.bf16_matmul_speedup(size=64, repeats=2)
    assert math.isfinite(speedup) and speedup > 0
    desc = precision.cpu_description()
    assert desc["auto_precision"] in ("float32", "bfloat16")
    assert set(desc["key_flags"]) <= set(desc["flags"].split())


def test_resolve(monkeypatch):
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.resolve_precision("float16")
    assert precision.resolve_precision("float32") == torch.float32
    assert precision.resolve_precision("bfloat16", "cuda") == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_prefers_bfloat16", lambda: True)
    assert precision.resolve_precision("auto", "cpu") == torch.bfloat16
    assert precision.resolve_precision("auto", "cuda") == torch.float32  # unmeasured on GPUs
    monkeypatch.setattr(precision, "cpu_prefers_bfloat16", lambda: False)
    assert precision.resolve_precision("auto", "cpu") == torch.float32
    # the accuracy check held for the paper's plain cosine distance only
    assert precision.auto_allows_bfloat16("cosine", "none")
    assert not precision.auto_allows_bfloat16("cosine", "local_density")
    assert not precision.auto_allows_bfloat16("gmm", "none")


class _Fake:
    """What score_inputs needs of a detector; records the bf16 flag it is called with."""

    def __init__(self, resolve=None):
        self.sample_rate, self.num_samples = 16000, 1600
        self.config = types.SimpleNamespace(channel=None)
        self.device = CPU
        self.known_sections = {("fan", "00")}
        self.seen = []
        if resolve is not None:
            self.compute_dtype = resolve

    def score_waveforms(self, waveforms, machine_types, sections, *, bf16=False):
        self.seen.append(bf16)
        return np.zeros(len(waveforms)), np.zeros(len(waveforms), np.int64)


def test_score_inputs_resolves_the_precision(tmp_path, monkeypatch):
    import soundfile as sf

    from fastasd.scoring import score_inputs

    wav = tmp_path / "fan" / "test" / "section_00_source_test_normal_0000.wav"
    wav.parent.mkdir(parents=True)
    sf.write(wav, np.zeros(1600, np.float32), 16000)

    def run(det, **kw):
        score_inputs(det, [str(wav)], num_workers=0, progress=False, **kw)
        return det.seen[-1]

    asked = []

    def resolve(p=None, bf16=None):  # as Detector.compute_dtype: None = the detector's default
        asked.append(p)
        return torch.bfloat16 if p in (None, "auto", "bfloat16") else torch.float32

    assert run(_Fake(resolve)) is True and asked[-1] is None  # the detector's own default
    assert run(_Fake(resolve), precision="float32") is False
    assert run(_Fake(resolve), precision="auto") is True
    assert run(_Fake(resolve), bf16=True) is True and asked[-1] == "bfloat16"  # the old switch
    # a detector without compute_dtype (the ONNX one): float32 unless bfloat16 is named
    assert run(_Fake()) is False and run(_Fake(), precision="auto") is False
    assert run(_Fake(), precision="bfloat16") is True
    with pytest.raises(ValueError, match="precision must be one of"):
        score_inputs(_Fake(), [str(wav)], num_workers=0, progress=False, precision="fp8")


# ------------------------------------------------------------------------------------- training
def test_cpu_autocast_follows_the_detection(monkeypatch, caplog):
    cfg = tiny_config(mixed_precision=True)
    monkeypatch.setattr(precision, "cpu_prefers_bfloat16", lambda: True)
    assert _autocast_dtype(cfg, CPU, None) == torch.bfloat16
    assert _autocast_dtype(cfg.replace(mixed_precision=False), CPU, None) is None
    with caplog.at_level(logging.WARNING):
        assert _autocast_dtype(cfg, CPU, "float16") is None  # no float16 autocast on CPU
    monkeypatch.setattr(precision, "cpu_prefers_bfloat16", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert _autocast_dtype(cfg, CPU, None) is None
    assert "not faster on this CPU" in caplog.text


@pytest.fixture(scope="module")
def tiny_clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_precision")
    generate(root, seed=3, **TINY)
    return discover(root, splits=("train",))


def test_cpu_bfloat16_training_runs_channels_last(tiny_clips, monkeypatch):
    """mixed_precision on a CPU that gains: the convolutions run in bfloat16 (autocast) on
    channels-last weights, the parameters stay float32 and the losses finite; on a CPU that does
    not gain, the same config trains in float32 with the usual layout."""
    seen: list[torch.dtype] = []

    def hook(module, args, output):
        if isinstance(module, torch.nn.Conv2d):
            seen.append(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        monkeypatch.setattr(precision, "cpu_prefers_bfloat16", lambda: True)
        model, _, _, hist = train_model(tiny_clips, tiny_config(mixed_precision=True), progress=False,
                                        max_steps=2)
        assert seen and set(seen) == {torch.bfloat16}
        conv = model.spectrogram_branch.blocks[0].conv1.conv.weight
        assert conv.dtype == torch.float32  # the parameters (and Adam's state) stay float32
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        assert all(math.isfinite(x) for h in hist for x in h["losses"])
        seen.clear()
        monkeypatch.setattr(precision, "cpu_prefers_bfloat16", lambda: False)
        model32, _, _, _ = train_model(tiny_clips, tiny_config(mixed_precision=True), progress=False,
                                       max_steps=1)
        assert seen and set(seen) == {torch.float32}
        assert model32.spectrogram_branch.blocks[0].conv1.conv.weight.is_contiguous()
    finally:
        handle.remove()
