"""Backends: references, scores vs brute force, thresholds, GMM option, state round trip."""
from __future__ import annotations

import json

import numpy as np
import pytest

import fastasd.ops
from fastasd.backend import CosineBackend, GMMBackend, backend_from_state, make_backend
from fastasd.config import Config

D = 8


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _train_set(seed=0, sections=("fan/00", "fan/01"), n_source=40, n_target=3):
    rng = np.random.default_rng(seed)
    emb, sec, dom = [], [], []
    for i, s in enumerate(sections):
        center = rng.normal(size=D) * 3
        emb.append(center + rng.normal(size=(n_source, D)))
        sec += [s] * n_source
        dom += ["source"] * n_source
        emb.append(center + 2.0 + rng.normal(size=(n_target, D)))
        sec += [s] * n_target
        dom += ["target"] * n_target
    return np.concatenate(emb).astype(np.float32), sec, dom


def _brute_force(backend, queries, sections):
    out = []
    for q, s in zip(_unit(np.asarray(queries, np.float64)), sections):
        g = backend.sections_.index(s)
        refs = backend.refs_[backend.ref_offsets_[g]:backend.ref_offsets_[g + 1]].astype(np.float64)
        out.append(1.0 - np.max(_unit(refs) @ q))
    return np.asarray(out)


def test_cosine_references():
    x, sec, dom = _train_set()
    b = CosineBackend(n_clusters=5).fit(x, sec, dom)
    assert b.sections_ == ["fan/00", "fan/01"]
    assert b.n_kmeans_refs_.tolist() == [5, 5]
    assert b.ref_offsets_.tolist() == [0, 8, 16]  # 5 means + 3 target embeddings per section
    np.testing.assert_allclose(np.linalg.norm(b.refs_, axis=1), 1.0, atol=1e-6)  # re-normalized means
    # the target training embeddings themselves are references (rows 5..7 of each section)
    for g, s in enumerate(b.sections_):
        rows = [i for i in range(len(sec)) if sec[i] == s and dom[i] == "target"]
        start = b.ref_offsets_[g] + b.n_kmeans_refs_[g]
        np.testing.assert_allclose(b.refs_[start:b.ref_offsets_[g + 1]], _unit(x[rows].astype(np.float64)),
                                   atol=1e-6)
    # fewer source clips than clusters -> one mean per clip; kmeans_on="all" clusters all clips
    small = CosineBackend(n_clusters=16).fit(*_train_set(n_source=4, sections=("a",)))
    assert small.n_kmeans_refs_.tolist() == [4] and small.refs_.shape[0] == 4 + 3
    both = CosineBackend(n_clusters=16, kmeans_on="all").fit(*_train_set(n_source=4, sections=("a",)))
    assert both.n_kmeans_refs_.tolist() == [7] and both.refs_.shape[0] == 7 + 3
    # a section with target clips only has target references only
    only_target = CosineBackend().fit(x[:3], ["t"] * 3, ["target"] * 3)
    assert only_target.n_kmeans_refs_.tolist() == [0] and only_target.refs_.shape[0] == 3


def test_cosine_scores_equal_brute_force_with_one_op_call(monkeypatch):
    x, sec, dom = _train_set()
    b = CosineBackend(n_clusters=5).fit(x, sec, dom)
    rng = np.random.default_rng(1)
    q = rng.normal(size=(30, D)).astype(np.float32) * 3
    qs = [["fan/00", "fan/01"][i % 2] for i in range(30)]
    calls = []
    real = fastasd.ops.min_cosine_distance
    monkeypatch.setattr(fastasd.ops, "min_cosine_distance", lambda *a: calls.append(1) or real(*a))
    scores = b.score_samples(q, qs)
    assert len(calls) == 1  # all sections in one batched call
    assert scores.dtype == np.float64 and scores.shape == (30,)
    np.testing.assert_allclose(scores, _brute_force(b, q, qs), rtol=0, atol=1e-5)  # float32 op
    # target training clips are their own references: distance 0
    tgt = [i for i, d in enumerate(dom) if d == "target"]
    np.testing.assert_allclose(b.score_samples(x[tgt], [sec[i] for i in tgt]), 0.0, atol=1e-5)
    assert b.score_samples(np.zeros((0, D), np.float32), []).shape == (0,)


@pytest.mark.parametrize("backend", [CosineBackend(n_clusters=4, threshold_percentile=75.0),
                                     GMMBackend(n_components=2, threshold_percentile=75.0)])
def test_thresholds_are_percentiles_of_training_scores(backend):
    x, sec, dom = _train_set(seed=2)
    backend.fit(x, sec, dom)
    train_scores = backend.score_samples(x, sec)
    for g, s in enumerate(backend.sections_):
        mine = train_scores[[i for i in range(len(sec)) if sec[i] == s]]
        assert backend.thresholds_[g] == pytest.approx(np.percentile(mine, 75.0), rel=1e-12)
    dec = backend.decide(train_scores, sec)
    assert dec.dtype.kind == "i" and set(dec.tolist()) <= {0, 1}
    expected = (train_scores > backend.thresholds_[[backend.sections_.index(s) for s in sec]]).astype(int)
    np.testing.assert_array_equal(dec, expected)
    assert 0.15 < dec.mean() < 0.35  # about a quarter of training clips lie above the 75th percentile


def test_gmm_backend_scores_outliers_higher():
    x, sec, dom = _train_set(seed=3)
    b = GMMBackend(n_components=2, reg_covar=1e-3).fit(x, sec, dom)
    assert len(b.gmms_) == 2 and b.gmms_[0].covariance_type == "full"
    assert b.gmms_[0].reg_covar == 1e-3
    inlier = b.score_samples(x[:10], sec[:10])
    rng = np.random.default_rng(0)
    outlier = b.score_samples(rng.normal(size=(10, D)).astype(np.float32), sec[:10])
    assert np.isfinite(inlier).all() and np.median(outlier) > np.max(inlier)
    # negative log-likelihood of the length-normalized embeddings
    xn = _unit(x[:10].astype(np.float64))
    np.testing.assert_allclose(inlier, -b.gmms_[0].score_samples(xn), rtol=1e-12)


@pytest.mark.parametrize("backend", [CosineBackend(n_clusters=3), GMMBackend(n_components=2)])
def test_state_round_trip_identical_scores(backend):
    keys = [("fan", "00"), ("valve", "01")]  # tuple keys survive JSON as tuples
    x, sec, dom = _train_set(seed=4, sections=keys)
    backend.fit(x, sec, dom)
    arrays, meta = backend.get_state()
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    meta = json.loads(json.dumps(meta))  # JSON-able, as saved
    arrays = {k: np.array(v) for k, v in arrays.items()}
    clone = backend_from_state(arrays, meta)
    assert type(clone) is type(backend) and clone.sections_ == keys
    q = np.random.default_rng(5).normal(size=(12, D)).astype(np.float32)
    qs = [keys[i % 2] for i in range(12)]
    np.testing.assert_array_equal(clone.score_samples(q, qs), backend.score_samples(q, qs))
    np.testing.assert_array_equal(clone.thresholds_, backend.thresholds_)
    s = backend.score_samples(q, qs)
    np.testing.assert_array_equal(clone.decide(s, qs), backend.decide(s, qs))
    with pytest.raises(ValueError, match="state type"):
        type(backend).from_state(arrays, {**meta, "type": "other"})


@pytest.mark.parametrize("backend", [CosineBackend(n_clusters=2), GMMBackend(n_components=1)])
def test_unknown_section_and_bad_inputs(backend):
    x, sec, dom = _train_set(sections=("fan/00",), n_source=10)
    backend.fit(x, sec, dom)
    with pytest.raises(KeyError, match="pump/07"):
        backend.score_samples(x[:2], ["fan/00", "pump/07"])
    with pytest.raises(KeyError, match="pump/07"):
        backend.decide(np.zeros(1), ["pump/07"])
    with pytest.raises(ValueError, match="domains"):
        type(backend)().fit(x, sec, ["source"] * (len(sec) - 1) + ["unknown"])
    with pytest.raises(ValueError, match="sections"):
        backend.score_samples(x[:3], ["fan/00"])
    with pytest.raises(RuntimeError, match="not fitted"):
        type(backend)().score_samples(x[:1], ["fan/00"])


def test_make_backend_from_config():
    b = make_backend(Config(n_clusters=7, kmeans_on="all", threshold_percentile=80.0, seed=3))
    assert isinstance(b, CosineBackend)
    assert b.get_params() == {"n_clusters": 7, "kmeans_on": "all", "threshold_percentile": 80.0,
                              "random_state": 3}
    g = make_backend(Config(backend="gmm", gmm_components=4, gmm_reg=1e-2))
    assert isinstance(g, GMMBackend)
    assert g.get_params() == {"n_components": 4, "reg_covar": 1e-2, "threshold_percentile": 90.0,
                              "random_state": 0}
    assert not hasattr(g, "sections_")  # __init__ only stores parameters
