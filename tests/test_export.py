"""ONNX export (fastasd.export): the graph's scores against Detector.score for every backend,
clip lengths, dynamic batch, metadata, errors, the matmul DFT, and `fastasd score --onnx`.

Tolerance: the ONNX graph runs the same float32 networks in another order of operations (its
DFTs are matrix products, its BatchNorms are onnxruntime's), so a score may differ from
:meth:`Detector.score_waveforms` by float32 rounding: ``|onnx - torch| <= TOL * max(1, |torch|)``
with ``TOL = fastasd.export.VERIFY_RTOL`` (1e-4; cosine scores lie in [0, 2] per member, GMM
scores are negative log-likelihoods of a few hundred).
"""
from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install -e '.[test]' installs it)")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed (torch.onnx.export needs onnxscript)")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (scoring needs onnxruntime)")

import fastasd  # noqa: E402
from fastasd import export as ex  # noqa: E402
from fastasd.api import fit_detector  # noqa: E402
from fastasd.data.layout import discover  # noqa: E402
from fastasd.data.synth import generate  # noqa: E402
from fastasd.scoring import read_scores_csv, score_inputs  # noqa: E402

from tiny import TINY, tiny_config  # tests/tiny.py  # noqa: E402

TOL = ex.VERIFY_RTOL

# Every backend a model may hold: Config overrides fitted on the same trained networks.
BACKEND_CONFIGS = [
    pytest.param({"backend": "cosine"}, id="cosine"),
    pytest.param({"backend": "gmm", "gmm_components": 2}, id="gmm"),
    # local-density normalization (issue 14): the balanced preset's ratio form on all clips, the
    # difference form with GWRP on k-means + target references
    pytest.param({"backend": "cosine", "score_normalization": "local_density", "references": "clips"},
                 id="local-density-ratio"),
    pytest.param({"backend": "cosine", "score_normalization": "local_density", "density_form": "difference",
                  "density_pooling": "gwrp"}, id="local-density-difference-gwrp"),
]


def _close(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    bound = TOL * np.maximum(1.0, np.abs(want))
    assert np.all(np.abs(got - want) <= bound), f"max |diff| {np.max(np.abs(got - want)):.3g}"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("export_data")
    generate(r, seed=3, **TINY)
    return r


@pytest.fixture(scope="module")
def trained(root):
    """A 2-member ensemble trained for one epoch on the tiny set (the networks; backends are
    fitted per test config)."""
    det = fastasd.train(root, config=tiny_config(), ensemble_size=2, progress=False)
    return det


@pytest.fixture(scope="module")
def exported(trained, root, tmp_path_factory):
    """Backend config -> (Detector, its saved folder, its ONNX export), built on first use: the
    trained networks with that backend fitted, saved, and exported by ``fastasd export`` (which
    loads the folder and checks the graph against the detector before it writes the file)."""
    from fastasd.cli import main

    cache = {}
    out = tmp_path_factory.mktemp("export_onnx")
    clips = discover(root, splits=("train",))

    def get(overrides: dict):
        key = repr(sorted(overrides.items()))
        if key not in cache:
            cfg = trained.config.replace(**overrides)
            det = fit_detector(cfg, trained.models, trained.encoder, clips, device="cpu", progress=False)
            folder, path = out / f"model{len(cache)}", out / f"det{len(cache)}.onnx"
            det.save(folder)
            assert main(["export", str(folder), "--out", str(path)]) == 0
            cache[key] = (det, folder, path)
        return cache[key]

    return get


@pytest.mark.parametrize("overrides", BACKEND_CONFIGS)
def test_onnx_scores_equal_detector_score(exported, root, overrides):
    det, _, path = exported(overrides)
    onnx_det = ex.load_onnx(path)
    want = {r["file"]: r for r in det.score(root, num_workers=0, progress=False, precision="float32")}
    got = {r["file"]: r for r in score_inputs(onnx_det, root, num_workers=0, progress=False)}
    assert set(got) == set(want) and len(got) == 16
    files = sorted(want)
    _close([got[f]["score"] for f in files], [want[f]["score"] for f in files])
    for f in files:
        thr = det.thresholds[f"{want[f]['machine_type']}/{want[f]['section']}"]
        if abs(want[f]["score"] - thr) > TOL * max(1.0, abs(thr)):  # not within rounding of the threshold
            assert got[f]["decision"] == want[f]["decision"], f
    assert {(r["machine_type"], r["section"]) for r in got.values()} == det.known_sections


@pytest.mark.parametrize("overrides", BACKEND_CONFIGS)
def test_any_clip_length_and_batch(exported, overrides):
    det, _, path = exported(overrides)
    onnx_det = ex.load_onnx(path)
    rng = np.random.default_rng(1)
    n = det.num_samples
    sections = sorted(det.known_sections)
    for batch, length in ((1, n), (3, 1), (2, n // 3 + 1), (5, n - 1), (4, n + 1), (7, 2 * n + 13)):
        x = (0.05 * rng.standard_normal((batch, length))).astype(np.float32)
        mts = [sections[i % len(sections)][0] for i in range(batch)]
        secs = [sections[i % len(sections)][1] for i in range(batch)]
        want, _ = det.score_waveforms(torch.from_numpy(x), mts, secs, precision="float32")
        got, dec = onnx_det.score_waveforms(x, mts, secs)
        assert got.dtype == np.float64 and dec.dtype == np.int64 and got.shape == (batch,)
        _close(got, want)


def test_graph_uses_standard_operators_and_holds_metadata(exported):
    import onnx

    det, _, path = exported({"backend": "cosine"})
    model = onnx.load(path)
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    assert not model.functions  # no custom functions either
    assert {o.domain: o.version for o in model.opset_import}.get("", 0) == ex.DEFAULT_OPSET
    meta = ex.load_onnx(path).metadata
    assert meta["format"] == ex.ONNX_FORMAT and meta["ensemble_size"] == 2
    assert meta["sections"] == [str(k) for k in det.backends[0].sections_]
    assert meta["thresholds"] == [det.thresholds[k] for k in meta["sections"]]
    assert (meta["sample_rate"], meta["num_samples"]) == (16000, 8000)
    assert meta["backends"] == ["CosineBackend", "CosineBackend"]
    # the thresholds in the graph give the decisions
    onnx_det = ex.load_onnx(path)
    x = np.zeros((2, 8000), np.float32)
    mt, sec = meta["sections"][0].split("/")
    score, dec = onnx_det.score_waveforms(x, [mt, mt], [sec, sec])
    assert list(dec) == [int(s > meta["thresholds"][0]) for s in score]


def test_cosine_rule_with_reference_scale_and_shift(exported):
    """The local-density rule min_j scale_j (1 - cos) + shift_j, read from ref_scale_/ref_shift_
    when a backend has them (ones and zeros otherwise), against a float64 numpy evaluation."""
    det, _, _ = exported({"backend": "cosine"})
    backend = det.backends[0]
    rng = np.random.default_rng(2)
    emb = rng.standard_normal((6, backend.refs_.shape[1])).astype(np.float32)
    group = np.array([0, 1, 0, 1, 1, 0])
    module = ex._backend_module(backend, 0)
    plain = module(torch.from_numpy(emb), torch.from_numpy(group)).numpy()
    keys = [backend.sections_[g] for g in group]
    np.testing.assert_allclose(plain, backend.score_samples(emb, keys), atol=1e-6)

    scaled = copy.copy(backend)  # with what issue 14's backends add: float32 [M] per reference
    m = backend.refs_.shape[0]
    scaled.ref_scale_ = rng.uniform(0.5, 2.0, m).astype(np.float32)
    scaled.ref_shift_ = rng.uniform(-0.1, 0.1, m).astype(np.float32)
    got = ex._backend_module(scaled, 0)(torch.from_numpy(emb), torch.from_numpy(group)).numpy()
    xn = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    want = []
    for i, g in enumerate(group):
        lo, hi = backend.ref_offsets_[g], backend.ref_offsets_[g + 1]
        d = scaled.ref_scale_[lo:hi] * (1 - backend.refs_[lo:hi].astype(np.float64) @ xn[i]) + scaled.ref_shift_[lo:hi]
        want.append(d.min())
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_gmm_module_equals_sklearn_in_float64(exported):
    det, _, _ = exported({"backend": "gmm", "gmm_components": 2})
    backend = det.backends[1]
    rng = np.random.default_rng(3)
    dim = backend.gmms_[0].means_.shape[1]
    # points near the training embeddings (far-away points have NLLs of 1e5 and more)
    emb = backend.gmms_[0].means_[[0, 0, 1]] + 0.01 * rng.standard_normal((3, dim))
    emb = np.concatenate([emb, backend.gmms_[1].means_[[0, 1]]])
    group = np.array([0, 0, 0, 1, 1])
    got = ex._backend_module(backend, 1)(torch.from_numpy(emb), torch.from_numpy(group)).numpy()
    want = backend.score_samples(emb, [backend.sections_[g] for g in group])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("length,nbins", [(8000, 4000), (1024, 513), (160000, 80000), (1000, 501),
                                          (97, 48), (10007, 5003)])
def test_matmul_dft_equals_rfft(length, nbins):
    """|rfft| as matrix products (float32) against torch.fft.rfft in float64: 1e-6 of the largest
    bin (10007 is prime: the DFT operator's path)."""
    x = torch.randn(3, length, dtype=torch.float64)
    want = torch.fft.rfft(x, dim=1).abs()[:, :nbins]
    got = ex._MatmulRDFT(length, nbins)(x.float()).double()
    assert got.shape == want.shape
    assert float((got - want).abs().max() / want.abs().max()) < 1e-6


@pytest.mark.parametrize("overrides", [{}, {"spectrogram_type": "logmel"}, {"temporal_normalization": False},
                                       {"representation": "spectrum"}, {"representation": "spectrogram"}])
def test_export_frontend_equals_the_reference_frontend(overrides, monkeypatch):
    """The frontend the graph traces (matmul DFTs) against the frontend with the reference
    operators, both float32 (as every frontend computes): 1e-5 of the largest value."""
    from fastasd.frontend import Frontend

    monkeypatch.setenv("FASTASD_BACKEND", "reference")
    cfg = tiny_config(**overrides)
    x = 0.1 * torch.randn(3, cfg.num_samples)
    want = Frontend(cfg)(x)
    got = ex._ExportFrontend(cfg, cfg.num_samples)(x)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if w is not None:
            assert g.shape == w.shape
            assert float((g - w).abs().max()) <= 1e-5 * float(w.abs().max())


def test_export_errors_say_why(exported, tmp_path, monkeypatch):
    det, _, path = exported({"backend": "cosine"})
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        ex.export_onnx(tmp_path / "nope", tmp_path / "x.onnx")

    class OddBackend:
        sections_ = det.backends[0].sections_

    odd = fastasd.Detector(det.config, det.models[:1], det.encoder, [OddBackend()], det.thresholds, device="cpu")
    with pytest.raises(ValueError, match="member 0: cannot export a OddBackend backend"):
        ex.export_onnx(odd, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="opset 16 has no DFT"):
        ex.export_onnx(det, tmp_path / "x.onnx", opset=16)
    monkeypatch.setattr(ex, "_MAX_GRAPH_BYTES", 1000)
    with pytest.raises(ValueError, match="more than one ONNX file can hold"):
        ex.export_onnx(det, tmp_path / "x.onnx")
    monkeypatch.undo()
    assert not (tmp_path / "x.onnx").exists()

    # not an ONNX file / an ONNX file without our metadata
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match="onnxruntime cannot load it"):
        ex.load_onnx(bad)
    import onnx

    model = onnx.load(path)
    del model.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(model, plain)
    with pytest.raises(ValueError, match="not a fastasd ONNX export"):
        ex.load_onnx(plain)
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        ex.load_onnx(tmp_path / "missing.onnx")
    onnx_det = ex.load_onnx(path)
    with pytest.raises(KeyError, match="unknown section"):
        onnx_det.score_waveforms(np.zeros((1, 8000), np.float32), ["fan"], ["99"])
    with pytest.raises(ValueError, match="bf16"):
        onnx_det.score_waveforms(np.zeros((1, 8000), np.float32), ["fan"], ["00"], bf16=True)


def test_cli_score_onnx_is_the_score_job(exported, root, tmp_path, capsys):
    """`fastasd score --onnx`: the outputs, submission files and resume rules of `fastasd score`."""
    from fastasd.cli import main

    det, _, onnx_file = exported({"backend": "cosine"})
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "y.onnx")]) == 2  # a usage error
    assert "model folder not found" in capsys.readouterr().err

    common = ["--workers", "0", "--no-progress", "--batch-size", "5"]
    out = tmp_path / "onnx"
    assert main(["score", "--onnx", str(onnx_file), str(root), "--out", str(out), *common]) == 0
    want = {r["file"]: r for r in det.score(root, num_workers=0, progress=False, precision="float32")}
    got = {r["file"]: r for r in read_scores_csv(out / "scores.csv")}
    assert set(got) == set(want) and len(got) == 16
    _close([got[f]["score"] for f in sorted(got)], [want[f]["score"] for f in sorted(got)])
    subs = sorted(p.name for p in out.glob("anomaly_score_*.csv"))
    assert subs == ["anomaly_score_fan_section_00_test.csv", "anomaly_score_valve_section_00_test.csv"]
    # the same resume rules: refused without --resume (a usage error, one line), nothing scored twice with it
    capsys.readouterr()
    assert main(["score", "--onnx", str(onnx_file), str(root), "--out", str(out), *common]) == 2
    err = capsys.readouterr().err
    assert "scores.csv exists" in err and "Traceback" not in err
    assert main(["score", "--onnx", str(onnx_file), str(root), "--out", str(out), "--resume", *common]) == 0
    assert len(read_scores_csv(out / "scores.csv")) == 16
    assert main(["score", "--onnx", str(onnx_file), str(root), "--out", str(tmp_path / "o2"), "--bf16",
                 *common]) == 2
    assert main(["score", "--onnx", str(onnx_file), str(root), "--out", str(tmp_path / "o2"),
                 "--precision", "bfloat16", *common]) == 2


def test_readme_snippet_needs_only_onnxruntime_numpy_soundfile(exported, root, tmp_path):
    """The README's snippet for a device without PyTorch, run as written (torch, fastasd, scipy and
    scikit-learn made unimportable), gives the detector's score and decision of a clip."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- onnx-snippet -->")[1].split("<!-- /onnx-snippet -->")[0]
    code = block.split("```python")[1].split("```")[0]
    det, _, path = exported({"backend": "cosine"})
    clip = sorted((root / "fan" / "test").glob("*.wav"))[0]
    shutil.copy(path, tmp_path / "detector.onnx")
    shutil.copy(clip, tmp_path / "clip.wav")
    guard = "import sys\nfor m in ('torch', 'fastasd', 'scipy', 'sklearn'):\n    sys.modules[m] = None\n"
    run = subprocess.run([sys.executable, "-c", guard + code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    score, decision = run.stdout.split()
    want = det.score([clip], section="fan:00", num_workers=0, progress=False, precision="float32")[0]
    _close([float(score)], [want["score"]])
    assert int(decision) == want["decision"]


# --------------------------------------------------------------------------- issue 23


def test_export_never_replaces_a_file_silently_nor_the_models_own(exported, tmp_path, capsys):
    from fastasd.cli import main

    det, folder, path = exported({"backend": "cosine"})
    manifest = (folder / "manifest.json").read_bytes()
    for extra in ([], ["--overwrite"]):
        assert main(["export", str(folder), "--out", str(folder / "manifest.json"), *extra]) == 2
        assert "is a file of the model" in capsys.readouterr().err
    assert (folder / "manifest.json").read_bytes() == manifest
    fastasd.load(folder)  # still loads
    assert main(["export", str(folder), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "Traceback" not in err
    existing = tmp_path / "keep.onnx"
    existing.write_bytes(b"keep")
    assert main(["export", str(folder), "--out", str(existing)]) == 2
    assert "exists: pass overwrite=True (--overwrite)" in capsys.readouterr().err
    assert existing.read_bytes() == b"keep"
    assert main(["export", str(folder), "--out", str(existing), "--overwrite", "--no-verify"]) == 0
    assert ex.load_onnx(existing).num_samples == det.num_samples


def _edited(path: Path, tmp_path: Path, edit) -> Path:
    """A copy of the export whose fastasd metadata ``edit`` changed (the graph untouched)."""
    import json

    import onnx

    model = onnx.load(path)
    entry = next(p for p in model.metadata_props if p.key == "fastasd")
    meta = json.loads(entry.value)
    edit(meta)
    entry.value = json.dumps(meta)
    out = tmp_path / f"edited{len(list(tmp_path.glob('edited*')))}.onnx"
    onnx.save(model, out)
    return out


def test_onnx_metadata_that_disagrees_with_the_graph_is_refused(exported, tmp_path):
    """The sample rate and clip length of the metadata are what scoring decodes to: they must be
    the graph's (an edited file would score every clip on the wrong samples)."""
    _, _, path = exported({"backend": "cosine"})

    def length(factor):
        def edit(meta):
            meta["num_samples"] = int(meta["num_samples"] * factor)
            meta["config"]["clip_seconds"] *= factor  # consistent metadata: only the graph can tell
        return edit

    def rate(meta):
        meta["sample_rate"] = 8000

    def nan_threshold(meta):
        meta["thresholds"][0] = float("nan")

    with pytest.raises(ValueError, match="the graph ignores the last of them"):
        ex.load_onnx(_edited(path, tmp_path, length(2)))
    with pytest.raises(ValueError, match="the graph reads more"):
        ex.load_onnx(_edited(path, tmp_path, length(0.5)))
    with pytest.raises(ValueError, match="says 8000 Hz .* its config 16000 Hz"):
        ex.load_onnx(_edited(path, tmp_path, rate))
    with pytest.raises(ValueError, match="non-finite thresholds"):
        ex.load_onnx(_edited(path, tmp_path, nan_threshold))
    assert ex.load_onnx(_edited(path, tmp_path, lambda meta: None)).identity()["sha256"]  # unedited: loads
