"""The user-facing API: train -> Detector, scoring records, ensembles, save/load (safe formats)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import fastasd
from fastasd import api
from fastasd.config import Config
from fastasd.data.dataset import iter_audio_batches
from fastasd.data.layout import discover
from fastasd.data.synth import generate

from tiny import TINY, tiny_config  # tests/tiny.py

RECORD_KEYS = {"file", "file_name", "machine_type", "section", "domain", "label", "score", "decision"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("api_data")
    generate(r, seed=5, **TINY)
    return r


@pytest.fixture(scope="module")
def ensemble(root, tmp_path_factory):
    """A 2-member ensemble trained for one epoch (5 steps of 4 clips each) and saved."""
    out = tmp_path_factory.mktemp("api_model")
    det = fastasd.train(root, out_dir=out, config=tiny_config(), ensemble_size=2, progress=False)
    return det, out


def _test_batch(root, det):
    clips = discover(root, splits=("test",))
    idx, waves = next(iter_audio_batches(clips, 64, det.num_samples, sample_rate=det.sample_rate))
    clips = [clips[i] for i in idx]
    return clips, torch.from_numpy(waves)


def test_train_returns_detector(ensemble, root):
    det, out = ensemble
    assert isinstance(det, api.Detector) and det.ensemble_size == 2
    assert det.known_sections == {("fan", "00"), ("valve", "00")}
    assert det.num_samples == 8000 and det.sample_rate == 16000
    assert det.device == torch.device("cpu")
    assert det.info["n_train_clips"] == 20 and len(det.info["history"]) == 2
    # members differ (seeds seed+0 and seed+1)
    w = [m.state_dict()["spectrum_branch.embed.weight"] for m in det.models]
    assert not torch.equal(w[0], w[1])
    assert len(det.embed_waveforms(torch.zeros(3, 8000), member=1)) == 3


def test_fastasd_train_stays_the_function():
    """Importing the training package must not shadow the function fastasd.train."""
    import fastasd.training as train_module  # noqa: F401

    assert callable(fastasd.train) and fastasd.train is api.train
    assert hasattr(sys.modules["fastasd.training"], "train_model")


def test_score_records(ensemble, root):
    det, _ = ensemble
    records = det.score(root, progress=False, num_workers=0)
    assert len(records) == 16
    for r in records:
        assert RECORD_KEYS <= set(r)
        assert r["domain"] in ("source", "target") and r["label"] in ("normal", "anomaly")
        assert np.isfinite(r["score"]) and r["decision"] in (0, 1)
    # the module-level helpers give the same
    again = api.score(det, root, progress=False, num_workers=0)
    assert [r["score"] for r in again] == [r["score"] for r in records]


def test_ensemble_sums_member_scores(ensemble, root):
    det, _ = ensemble
    clips, waves = _test_batch(root, det)
    mts, secs = [c.machine_type for c in clips], [c.section for c in clips]
    scores, decisions = det.score_waveforms(waves, mts, secs)
    keys = [f"{m}/{s}" for m, s in zip(mts, secs)]
    members = [b.score_samples(det.embed_waveforms(waves, member=i).numpy(), keys)
               for i, b in enumerate(det.backends)]
    np.testing.assert_allclose(scores, members[0] + members[1], rtol=0, atol=1e-12)
    thr = np.array([det.thresholds[k] for k in keys])
    np.testing.assert_array_equal(decisions, (scores > thr).astype(np.int64))


def test_unknown_section_raises(ensemble):
    det, _ = ensemble
    with pytest.raises(KeyError, match="pump/00"):
        det.score_waveforms(torch.zeros(1, 8000), ["pump"], ["00"])


def test_save_load_identical_scores(ensemble, root, tmp_path):
    det, out = ensemble
    clips, waves = _test_batch(root, det)
    mts, secs = [c.machine_type for c in clips], [c.section for c in clips]
    s1, d1 = det.score_waveforms(waves, mts, secs)
    loaded = fastasd.load(out)
    s2, d2 = loaded.score_waveforms(waves, mts, secs)
    np.testing.assert_array_equal(s1, s2)  # bit-identical
    np.testing.assert_array_equal(d1, d2)
    assert loaded.config == det.config and loaded.encoder.classes_ == det.encoder.classes_
    assert loaded.thresholds == det.thresholds
    # save again from the loaded detector: same bytes for the weights
    loaded.save(tmp_path / "again")
    for name in ("model_0.safetensors", "model_1.safetensors", "backend_1.safetensors"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()


def test_saved_files_are_json_or_safetensors(ensemble):
    """No file of a saved model needs unpickling: each is JSON or safetensors."""
    from safetensors import safe_open

    _, out = ensemble
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "fastasd.Detector" and manifest["torch"] == torch.__version__
    assert manifest["fastasd"] == fastasd.__version__
    names = set(manifest["files"])
    assert names == {"config.json", "encoder.json", "thresholds.json", "model_0.safetensors",
                     "model_1.safetensors", "backend_0.safetensors", "backend_1.safetensors",
                     "backend_0.json", "backend_1.json"}
    for name in names:
        path = out / name
        if name.endswith(".json"):
            json.loads(path.read_text())
        else:
            with safe_open(str(path), framework="numpy") as f:
                assert len(list(f.keys())) > 0


def _copy_model(src, dst):
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints"))
    return dst


def test_load_errors_name_the_file(ensemble, tmp_path):
    _, out = ensemble
    with pytest.raises(FileNotFoundError, match="not found"):
        fastasd.load(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        fastasd.load(empty)
    missing = _copy_model(out, tmp_path / "missing")
    (missing / "backend_1.json").unlink()
    with pytest.raises(FileNotFoundError, match="backend_1.json"):
        fastasd.load(missing)
    corrupt = _copy_model(out, tmp_path / "corrupt")
    data = bytearray((corrupt / "model_0.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (corrupt / "model_0.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model_0.safetensors"):
        fastasd.load(corrupt)
    truncated = _copy_model(out, tmp_path / "truncated")
    (truncated / "config.json").write_text("{")
    with pytest.raises(ValueError, match="config.json"):
        fastasd.load(truncated)


def test_config_overrides_and_presets(root):
    cfg = api._as_config("standard", {"epochs": 2})
    assert cfg.backend == "gmm" and cfg.epochs == 2
    assert api._as_config(None, {}) == Config()
    with pytest.raises(ValueError, match="unknown"):
        api._as_config(None, {"no_such_field": 1})
    with pytest.raises(FileNotFoundError):
        fastasd.train(root / "does_not_exist", config=tiny_config())
