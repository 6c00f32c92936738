"""A new backend for a trained model without retraining: Detector.refit_backend and the
``fastasd fit-backend`` command, against fitting the same backend inside ``train``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fastasd
from fastasd.cli import main
from fastasd.data.dataset import iter_audio_batches
from fastasd.data.layout import discover
from fastasd.data.synth import generate

from tiny import TINY, tiny_config  # tests/tiny.py

BALANCED = dict(score_normalization="local_density", references="clips", density_k=2,
                density_form="difference")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("refit_data")
    generate(r, seed=7, **TINY)
    return r


@pytest.fixture(scope="module")
def trained(root, tmp_path_factory):
    """The same tiny training twice: with the paper's backend (saved) and with BALANCED."""
    out = tmp_path_factory.mktemp("refit_model")
    paper = fastasd.train(root, out_dir=out, config=tiny_config(), progress=False)
    balanced = fastasd.train(root, config=tiny_config(**BALANCED), progress=False)
    return paper, balanced, out


def _batch(root, det):
    clips = discover(root, splits=("test",))
    idx, waves = next(iter_audio_batches(clips, 64, det.num_samples, sample_rate=det.sample_rate))
    clips = [clips[i] for i in idx]
    return torch.from_numpy(waves), [c.machine_type for c in clips], [c.section for c in clips]


def _same_backend(a, b):
    assert a.config == b.config
    assert a.thresholds == b.thresholds
    for x, y in zip(a.backends, b.backends):
        assert x.get_params() == y.get_params() and x.sections_ == y.sections_
        for name in ("refs_", "ref_offsets_", "ref_scale_", "ref_shift_", "thresholds_"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name), err_msg=name)


def test_refit_equals_fitting_inside_train(trained, root):
    paper, balanced, _ = trained
    refit = paper.refit_backend(root, progress=False, **BALANCED)
    _same_backend(refit, balanced)
    waves, mts, secs = _batch(root, paper)
    s_refit, d_refit = refit.score_waveforms(waves, mts, secs)
    s_train, d_train = balanced.score_waveforms(waves, mts, secs)
    np.testing.assert_array_equal(s_refit, s_train)
    np.testing.assert_array_equal(d_refit, d_train)
    assert refit.models[0] is paper.models[0]  # the networks are shared, not retrained
    assert refit.info["refit_backend"]["overrides"] == BALANCED
    # back to the paper's backend: the original detector again
    _same_backend(refit.refit_backend(root, preset="paper", progress=False), paper)
    with pytest.raises(ValueError, match="not backend settings"):
        paper.refit_backend(root, epochs=3)


def test_fit_backend_cli_writes_a_model_that_loads_and_scores(trained, root, tmp_path, capsys):
    paper, _, model_dir = trained
    new = tmp_path / "balanced"
    args = ["fit-backend", str(model_dir), str(root), "--out", str(new), "--preset", "balanced",
            "--density-k", "3", "--no-progress"]
    assert main(args) == 0
    assert "score_normalization=local_density" in capsys.readouterr().out
    loaded = fastasd.load(new)
    assert loaded.config == paper.config.replace(**{**dict(score_normalization="local_density",
                                                           references="clips"), "density_k": 3})
    expected = paper.refit_backend(root, preset="balanced", density_k=3, progress=False)
    waves, mts, secs = _batch(root, paper)
    np.testing.assert_array_equal(loaded.score_waveforms(waves, mts, secs)[0],
                                  expected.score_waveforms(waves, mts, secs)[0])
    records = loaded.score(root, progress=False)
    assert records and all(np.isfinite(r["score"]) for r in records)
    manifest = json.loads((new / "manifest.json").read_text())
    assert manifest["info"]["refit_backend"]["preset"] == "balanced"
    # refusals: an existing model without --overwrite, the model folder itself, a non-backend switch
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert main(["fit-backend", str(model_dir), str(root), "--out", str(model_dir)]) == 2
    assert "model folder itself" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit-backend", str(model_dir), str(root), "--out", str(tmp_path / "x"), "--epochs", "2"])
