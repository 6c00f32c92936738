"""Audio loading: mono mixdown, channel pick, length fitting, resampling, bad files, and the bounds
on what one file may cost (issue 23)."""
from __future__ import annotations

import io
import logging
import math
import pickle

import numpy as np
import pytest
import soundfile as sf

from fastasd.data import audio
from fastasd.data.audio import AudioError, fit_length, load_audio

SR = 16000


def _write(path, data, rate=SR, subtype="FLOAT"):
    # FLOAT subtype: samples round-trip exactly, so comparisons can be exact.
    sf.write(path, np.asarray(data, dtype=np.float32), rate, subtype=subtype)
    return path


def test_mono_roundtrip(tmp_path):
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 1600).astype(np.float32)
    y = load_audio(_write(tmp_path / "a.wav", x))
    assert y.dtype == np.float32 and y.ndim == 1 and y.flags.c_contiguous
    np.testing.assert_array_equal(y, x)


def test_stereo_mean_and_channel_pick(tmp_path):
    left = np.full(800, 0.5, np.float32)
    right = np.full(800, -0.25, np.float32)
    path = _write(tmp_path / "stereo.wav", np.stack([left, right], axis=1))
    np.testing.assert_allclose(load_audio(path), 0.125, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(load_audio(path, channel=0), left)
    np.testing.assert_array_equal(load_audio(path, channel=1), right)
    with pytest.raises(AudioError, match=r"stereo\.wav: channel 2 out of range for 2-channel"):
        load_audio(path, channel=2)


def test_crop_and_pad(tmp_path):
    x = np.arange(1, 101, dtype=np.float32) / 100
    path = _write(tmp_path / "a.wav", x)
    np.testing.assert_array_equal(load_audio(path, num_samples=40), x[:40])  # crop keeps the start
    padded = load_audio(path, num_samples=150)
    np.testing.assert_array_equal(padded[:100], x)
    np.testing.assert_array_equal(padded[100:], 0)  # zero-padded at the end
    np.testing.assert_array_equal(load_audio(path, num_samples=100), x)


def test_fit_length_batches_and_dtype():
    x = np.ones((2, 5), dtype=np.float64)
    assert fit_length(x, 3).shape == (2, 3)
    y = fit_length(x, 7)
    assert y.shape == (2, 7) and y.dtype == np.float64 and y[:, 5:].sum() == 0
    assert fit_length(x, 5) is x
    with pytest.raises(ValueError):
        fit_length(x, -1)


def test_resampled_sine_keeps_length_and_frequency(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(audio, "_resample_logged", set())  # independent of earlier tests
    rate, f0 = 22050, 1000.0
    n = rate // 4  # 0.25 s
    t = np.arange(n) / rate
    path = _write(tmp_path / "sine.wav", 0.5 * np.sin(2 * np.pi * f0 * t), rate=rate)
    with caplog.at_level(logging.WARNING, logger="fastasd.data.audio"):
        y = load_audio(path)
        load_audio(path)
    # resample_poly output length: ceil(n * up / down) with up/down = 16000/22050 reduced
    assert len(y) == math.ceil(n * SR / rate)
    assert y.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    peak_hz = np.argmax(spectrum) * SR / len(y)
    assert abs(peak_hz - f0) <= SR / len(y)  # within one FFT bin (4 Hz)
    # the sine's amplitude survives (edges excluded: filter transients), tolerance 2 %
    assert np.max(np.abs(y[200:-200])) == pytest.approx(0.5, rel=0.02)
    # logged once per rate, not once per file
    assert sum("22050 Hz" in r.getMessage() for r in caplog.records) == 1


def test_wrong_rate_refused_without_resampling(tmp_path):
    path = _write(tmp_path / "rate8k.wav", np.zeros(800), rate=8000)
    with pytest.raises(AudioError, match=r"rate8k\.wav: sample rate 8000 Hz, expected 16000"):
        load_audio(path, resample=False)
    assert len(load_audio(path, resample=True)) == 1600


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav: empty file"):
        load_audio(path)
    with pytest.raises(AudioError, match=r"^stream\.wav: cannot read"):
        load_audio(io.BytesIO(b""), name="stream.wav")


def test_zero_frames(tmp_path):
    path = _write(tmp_path / "zero.wav", np.zeros(0))
    with pytest.raises(AudioError, match=r"zero\.wav: no audio frames"):
        load_audio(path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(AudioError) as info:
        load_audio(path)
    assert info.value.name == str(path)
    assert str(info.value).startswith(f"{path}: cannot read audio")


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match=r"nothere\.wav: file not found"):
        load_audio(tmp_path / "nothere.wav")


def test_non_finite_samples(tmp_path):
    path = _write(tmp_path / "nan.wav", [0.0, np.nan, 0.1])
    with pytest.raises(AudioError, match=r"nan\.wav: contains NaN"):
        load_audio(path)


def test_file_like_source(tmp_path):
    x = np.linspace(-0.5, 0.5, 320, dtype=np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, SR, format="WAV", subtype="FLOAT")
    buf.seek(0)
    np.testing.assert_array_equal(load_audio(buf, name="arch.zip::member.wav"), x)
    with pytest.raises(AudioError, match=r"^arch\.zip::bad\.wav: "):
        load_audio(io.BytesIO(b"RIFF garbage"), name="arch.zip::bad.wav")


def test_audio_error_pickles():
    e = pickle.loads(pickle.dumps(AudioError("x.wav", "broken")))
    assert (e.name, e.reason, str(e)) == ("x.wav", "broken", "x.wav: broken")


# --------------------------------------------------------------------------- bounds (issue 23)


def test_only_the_frames_the_clip_needs_are_decoded(tmp_path, monkeypatch):
    """A long file gives a short clip from its first frames only (plus the resampler's margin),
    and the same samples as decoding the whole file and cropping."""
    from scipy.signal import resample_poly

    rng = np.random.default_rng(0)
    reads = []
    original = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        reads.append(frames)
        return original(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    x16 = rng.uniform(-0.5, 0.5, 30 * SR).astype(np.float32)
    y = load_audio(_write(tmp_path / "long16k.wav", x16), num_samples=8000)
    assert reads[-1] == 8000
    np.testing.assert_array_equal(y, x16[:8000])
    x48 = rng.uniform(-0.5, 0.5, 30 * 48000).astype(np.float32)
    y = load_audio(_write(tmp_path / "long48k.wav", x48, rate=48000), num_samples=8000)
    assert 3 * 8000 <= reads[-1] <= 3 * 8000 + 100  # the filter's margin: 10 taps per side at 48 -> 16 kHz
    want = resample_poly(x48, 1, 3).astype(np.float32)[:8000]
    assert y.tobytes() == want.tobytes()  # bit for bit


def test_absurd_rates_and_decoded_sizes_are_refused(tmp_path, monkeypatch):
    one_hz = _write(tmp_path / "one_hz.wav", np.zeros(100), rate=1, subtype="PCM_16")
    with pytest.raises(AudioError, match=r"one_hz\.wav: sample rate 1 Hz is outside 1000\.\.768000 Hz"):
        load_audio(one_hz, num_samples=16000)
    path = _write(tmp_path / "second.wav", np.zeros(SR))
    monkeypatch.setenv("FASTASD_MAX_DECODED_BYTES", "10000")
    with pytest.raises(AudioError, match=r"second\.wav: 16000 frames x 1 channels .* FASTASD_MAX_DECODED_BYTES=10000"):
        load_audio(path)
    assert len(load_audio(path, num_samples=2000)) == 2000  # 8000 bytes: what a clip needs fits
