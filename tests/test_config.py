"""Config: defaults, round trips, validation, presets and CLI help."""
from __future__ import annotations

import json

import pytest

from fastasd.config import BACKEND_FIELDS, PRESETS, Config


def test_defaults_match_spec():
    c = Config()
    assert (c.sample_rate, c.clip_seconds, c.num_samples) == (16000, 10.0, 160000)
    assert (c.n_fft, c.hop, c.n_mels, c.embedding_dim) == (1024, 512, 128, 128)
    assert (c.representation, c.combine, c.spectrogram_type) == ("both", "concatenate", "linear")
    assert (c.use_bias, c.trainable_centers, c.mixup, c.mixup_label, c.scale_angle) == (
        False, False, True, "max", "sum")
    assert (c.bn_momentum, c.bn_eps, c.l2, c.adam_eps, c.learning_rate) == (0.01, 1e-3, 1e-5, 1e-7, 1e-3)
    assert (c.epochs, c.batch_size, c.n_subclusters, c.spectrum_dense_layers) == (10, 64, 16, 4)
    assert (c.backend, c.n_clusters, c.kmeans_on, c.gmm_components, c.gmm_reg) == (
        "cosine", 16, "source", 16, 1e-3)
    assert c.threshold_percentile == 90.0 and c.channel is None


def test_round_trip_through_json():
    c = Config().replace(clip_seconds=6.0, backend="gmm", channel=0, use_bias=True)
    d = json.loads(json.dumps(c.to_dict()))
    assert Config.from_dict(d) == c
    # ints are accepted for float fields (JSON writes 6.0 as 6 in some tools)
    assert Config.from_dict({"clip_seconds": 6}).clip_seconds == 6.0


@pytest.mark.parametrize("overrides, words", [
    ({"backend": "svm"}, ["backend", "cosine", "gmm"]),
    ({"representation": "mel"}, ["representation", "spectrum"]),
    ({"epochs": 0}, ["epochs"]),
    ({"threshold_percentile": 101.0}, ["threshold_percentile"]),
    ({"use_bias": 1}, ["use_bias"]),
    ({"batch_size": 2.5}, ["batch_size"]),
    ({"learning_rate": float("nan")}, ["learning_rate"]),
    ({"clip_seconds": 0.01}, ["n_fft"]),
])
def test_bad_values_rejected(overrides, words):
    with pytest.raises(ValueError) as e:
        Config().replace(**overrides)
    for w in words:
        assert w in str(e.value)


def test_unknown_keys_rejected():
    with pytest.raises(ValueError, match="bogus"):
        Config.from_dict({"bogus": 1, "epochs": 2})
    with pytest.raises(ValueError, match="bogus"):
        Config().replace(bogus=1)


def test_presets():
    assert Config.preset("paper") == Config()
    std = Config.preset("standard")
    assert (std.spectrogram_type, std.trainable_centers, std.use_bias, std.backend) == (
        "logmel", True, True, "gmm")
    assert std.replace(spectrogram_type="linear", trainable_centers=False, use_bias=False,
                       backend="cosine") == Config()
    assert Config.preset("demo").clip_seconds < Config().clip_seconds
    assert set(PRESETS) >= {"paper", "standard", "demo", "balanced"}
    with pytest.raises(ValueError, match="nope"):
        Config.preset("nope")
    # balanced = the paper's training, only the scores differ (the method's default form)
    bal = Config.preset("balanced")
    assert (bal.score_normalization, bal.references, bal.density_pooling, bal.density_k,
            bal.density_form) == ("local_density", "clips", "knn", 1, "ratio")
    assert bal.replace(**{k: getattr(Config(), k) for k in BACKEND_FIELDS}) == Config()
    paper = Config()
    assert (paper.score_normalization, paper.references) == ("none", "kmeans")  # the paper's backend
    with pytest.raises(ValueError, match="density_gwrp_r"):
        Config(density_gwrp_r=1.5)
    with pytest.raises(ValueError, match="score_normalization"):
        Config(score_normalization="zscore")


def test_fields_help_and_parse_value():
    rows = Config.fields_help()
    names = [r[0] for r in rows]
    assert names == list(Config().to_dict())
    by_name = {r[0]: r for r in rows}
    assert by_name["backend"][1] is str and by_name["backend"][4] == ("cosine", "gmm")
    assert by_name["epochs"][1:3] == (int, 10)
    assert all(r[3] for r in rows)  # every field has help text
    assert Config.parse_value("use_bias", "yes") is True
    assert Config.parse_value("use_bias", "0") is False
    assert Config.parse_value("channel", "none") is None
    assert Config.parse_value("learning_rate", "2e-3") == 2e-3
    with pytest.raises(ValueError, match="use_bias"):
        Config.parse_value("use_bias", "maybe")
