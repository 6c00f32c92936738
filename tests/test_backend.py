"""Backends: references, scores vs brute force, thresholds, GMM option, state round trip, and the
local-density normalization (scores against a float64 implementation of its formulas)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import fastasd.ops
from fastasd.backend import (CosineBackend, GMMBackend, backend_from_state, density_scale_shift,
                             local_density, make_backend)
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
                              "random_state": 3, "references": "kmeans", "score_normalization": "none",
                              "density_pooling": "knn", "density_k": 1, "density_gwrp_r": 0.5,
                              "density_form": "ratio"}
    d = make_backend(Config.preset("balanced").replace(density_pooling="gwrp", density_gwrp_r=0.25,
                                                       density_form="difference", density_k=3))
    assert {k: v for k, v in d.get_params().items() if k.startswith(("density", "score", "ref"))} == {
        "references": "clips", "score_normalization": "local_density", "density_pooling": "gwrp",
        "density_k": 3, "density_gwrp_r": 0.25, "density_form": "difference"}
    g = make_backend(Config(backend="gmm", gmm_components=4, gmm_reg=1e-2))
    assert isinstance(g, GMMBackend)
    assert g.get_params() == {"n_components": 4, "reg_covar": 1e-2, "threshold_percentile": 90.0,
                              "random_state": 0}
    assert not hasattr(g, "sections_")  # __init__ only stores parameters


# --- local-density normalization ----------------------------------------------------------------

def _formula_scores(refs_by_section, queries, sections, *, form, pooling, k=1, r=0.5):
    """The local-density scores spelled out in float64 (no duplicates in the references):
    d = (1 - cos) / 2; rho_j = mean of the K nearest other d (knn) or sum r^(i-1) d_(i) /
    sum r^(i-1) over all others (gwrp); score = min_j d / rho_j (ratio) or min_j d - rho_j."""
    rho = {}
    for s, refs in refs_by_section.items():
        u = _unit(np.asarray(refs, np.float64))
        dist = (1.0 - u @ u.T) / 2.0
        out = []
        for j in range(len(u)):
            others = np.sort(np.delete(dist[j], j))
            if pooling == "knn":
                out.append(others[:k].mean())
            else:
                w = r ** np.arange(len(others))
                out.append((w * others).sum() / w.sum())
        rho[s] = np.asarray(out)
    scores = []
    for q, s in zip(_unit(np.asarray(queries, np.float64)), sections):
        d = (1.0 - _unit(np.asarray(refs_by_section[s], np.float64)) @ q) / 2.0
        scores.append(np.min(d / rho[s] if form == "ratio" else d - rho[s]))
    return np.asarray(scores), rho


DENSITY_CASES = [  # (form, pooling, K, r)
    ("ratio", "knn", 1, 0.5),
    ("difference", "knn", 1, 0.5),
    ("ratio", "knn", 4, 0.5),
    ("difference", "knn", 4, 0.5),
    ("ratio", "gwrp", 1, 0.7),
    ("difference", "gwrp", 1, 0.3),
]


@pytest.mark.parametrize("references", ["clips", "kmeans"])
@pytest.mark.parametrize("form,pooling,k,r", DENSITY_CASES)
def test_local_density_scores_equal_float64_formulas(references, form, pooling, k, r):
    x, sec, dom = _train_set(seed=6, n_source=30, n_target=4)
    b = CosineBackend(n_clusters=6, references=references, score_normalization="local_density",
                      density_pooling=pooling, density_k=k, density_gwrp_r=r, density_form=form).fit(x, sec, dom)
    if references == "clips":  # the references are the training clips themselves, as given
        refs = {s: x[[i for i in range(len(sec)) if sec[i] == s]] for s in b.sections_}
        assert b.n_kmeans_refs_.tolist() == [0, 0] and b.ref_offsets_.tolist() == [0, 34, 68]
    else:  # the k-means means (not the formula under test) and the target clips
        refs = {s: b.refs_[b.ref_offsets_[g]:b.ref_offsets_[g + 1]] for g, s in enumerate(b.sections_)}
    rng = np.random.default_rng(7)
    q = np.concatenate([x[::3], rng.normal(size=(20, D)).astype(np.float32) * 3])
    qs = sec[::3] + [b.sections_[i % 2] for i in range(20)]
    expected, rho = _formula_scores(refs, q, qs, form=form, pooling=pooling, k=k, r=r)
    got = b.score_samples(q, qs)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-6 * scale)  # float32 kernel
    # rho from the float32 references (rounded once more than the clips): float32 agreement
    np.testing.assert_allclose(b.ref_density_, np.concatenate([rho[s] for s in b.sections_]), rtol=1e-5)
    # the thresholds are percentiles of the training clips' scores; with the clips as references
    # each clip is scored without itself (leave-one-out), else every training score would be 0
    if references == "clips":
        train = []
        for i, (v, s) in enumerate(zip(_unit(x.astype(np.float64)), sec)):
            own = [j for j in range(len(sec)) if sec[j] == s]
            g = b.sections_.index(s)
            rho_s = rho[s]
            d = (1.0 - _unit(x[own].astype(np.float64)) @ v) / 2.0
            val = d / rho_s if form == "ratio" else d - rho_s
            val[own.index(i)] = np.inf
            train.append(val.min())
        train = np.asarray(train)
    else:
        train = b.score_samples(x, sec)
    np.testing.assert_allclose(b.train_scores_, train, rtol=1e-5, atol=2e-6 * np.abs(train).max())
    for g, s in enumerate(b.sections_):
        assert b.thresholds_[g] == pytest.approx(np.percentile(b.train_scores_[np.asarray(sec) == s], 90.0))


def test_local_density_ref_scale_shift_reproduce_the_scores():
    # what an exporter computes from ref_scale_/ref_shift_ alone, without knowing the method
    x, sec, dom = _train_set(seed=8)
    q = np.random.default_rng(9).normal(size=(25, D)).astype(np.float32)
    qs = [["fan/00", "fan/01"][i % 2] for i in range(25)]
    for params in [{}, {"score_normalization": "local_density"},
                   {"score_normalization": "local_density", "density_form": "difference", "references": "clips"}]:
        b = CosineBackend(n_clusters=4, **params).fit(x, sec, dom)
        M = b.refs_.shape[0]
        for name in ("ref_scale_", "ref_shift_"):
            a = getattr(b, name)
            assert a.dtype == np.float32 and a.shape == (M,)
        if not params:
            assert (b.ref_scale_ == 1).all() and (b.ref_shift_ == 0).all() and b.ref_density_ is None
        out = []
        for v, s in zip(_unit(q.astype(np.float64)), qs):
            g = b.sections_.index(s)
            lo, hi = b.ref_offsets_[g], b.ref_offsets_[g + 1]
            cos = _unit(b.refs_[lo:hi].astype(np.float64)) @ v
            out.append(np.min(b.ref_scale_[lo:hi] * (1 - cos) + b.ref_shift_[lo:hi]))
        np.testing.assert_allclose(b.score_samples(q, qs), out, rtol=1e-5, atol=1e-6)


def test_gwrp_limits_are_nearest_and_mean():
    refs = np.random.default_rng(10).normal(size=(9, D))
    nearest = local_density(refs, k=1, pooling="knn")
    np.testing.assert_allclose(local_density(refs, pooling="gwrp", r=0.0), nearest, rtol=1e-12)
    np.testing.assert_allclose(local_density(refs, pooling="gwrp", r=1.0),
                               local_density(refs, k=8, pooling="knn"), rtol=1e-12)
    # K beyond the other references: all of them
    np.testing.assert_allclose(local_density(refs, k=50), local_density(refs, k=8), rtol=1e-12)
    with pytest.raises(ValueError, match="pooling"):
        local_density(refs, pooling="median")
    with pytest.raises(ValueError, match="CosineBackend: density_form"):
        CosineBackend(score_normalization="local_density", density_form="log").fit(*_train_set())


@pytest.mark.parametrize("form", ["ratio", "difference"])
def test_local_density_invariant_to_reference_order(form):
    x, sec, dom = _train_set(seed=11, n_source=25)
    perm = np.random.default_rng(12).permutation(len(sec))
    kw = dict(references="clips", score_normalization="local_density", density_k=3, density_form=form)
    a = CosineBackend(**kw).fit(x, sec, dom)
    b = CosineBackend(**kw).fit(x[perm], [sec[i] for i in perm], [dom[i] for i in perm])
    q = np.random.default_rng(13).normal(size=(30, D)).astype(np.float32)
    qs = [["fan/00", "fan/01"][i % 2] for i in range(30)]
    np.testing.assert_allclose(a.score_samples(q, qs), b.score_samples(q, qs), rtol=1e-6, atol=1e-7)
    for g, key in enumerate(a.sections_):  # the permutation may reorder the sections
        assert b.thresholds_[b.sections_.index(key)] == pytest.approx(a.thresholds_[g], rel=1e-6)
    assert sorted(a.ref_density_.tolist()) == pytest.approx(sorted(b.ref_density_.tolist()), rel=1e-9)


@pytest.mark.parametrize("form", ["ratio", "difference"])
def test_local_density_degenerate_cases(form):
    kw = dict(references="clips", score_normalization="local_density", density_form=form)
    x, sec, dom = _train_set(seed=14, sections=("a",), n_source=12, n_target=2)
    plain = CosineBackend(**kw).fit(x, sec, dom)
    # duplicated references (every clip twice): duplicates are skipped, rho is as without them
    twice = CosineBackend(**kw).fit(np.concatenate([x, x]), sec * 2, dom * 2)
    assert np.isfinite(twice.ref_density_).all() and (twice.ref_density_ > 0).all()
    np.testing.assert_allclose(twice.ref_density_, np.tile(plain.ref_density_, 2), rtol=1e-6)
    q = np.random.default_rng(15).normal(size=(10, D)).astype(np.float32)
    np.testing.assert_allclose(twice.score_samples(q, ["a"] * 10), plain.score_samples(q, ["a"] * 10), rtol=1e-5)
    # a section with a single reference, and one whose references are all one point: rho is
    # undefined (NaN) and the section is scored by the plain d = (1 - cos) / 2
    one = np.random.default_rng(16).normal(size=(1, D)).astype(np.float32)
    for refs in (one, np.repeat(one, 3, axis=0)):
        b = CosineBackend(**kw).fit(np.concatenate([x, refs]), sec + ["single"] * len(refs),
                                    dom + ["target"] * len(refs))
        g = b.sections_.index("single")
        lo, hi = b.ref_offsets_[g], b.ref_offsets_[g + 1]
        assert np.isnan(b.ref_density_[lo:hi]).all()
        assert (b.ref_scale_[lo:hi] == 0.5).all() and (b.ref_shift_[lo:hi] == 0).all()
        d = (1 - _unit(q.astype(np.float64)) @ _unit(one.astype(np.float64))[0]) / 2
        np.testing.assert_allclose(b.score_samples(q, ["single"] * 10), d, rtol=1e-5, atol=1e-7)
        assert np.isfinite(b.thresholds_).all()


def test_density_scale_shift_forms():
    rho = np.array([0.1, 0.25, np.nan])
    sc, sh = density_scale_shift(rho, "ratio")
    np.testing.assert_allclose(sc, [5.0, 2.0, 0.5]) and np.testing.assert_array_equal(sh, 0)
    sc, sh = density_scale_shift(rho, "difference")
    np.testing.assert_array_equal(sc, 0.5) and np.testing.assert_allclose(sh, [-0.1, -0.25, 0.0])


def test_local_density_state_round_trip_and_old_states():
    keys = [("fan", "00"), ("valve", "01")]
    x, sec, dom = _train_set(seed=17, sections=keys)
    b = CosineBackend(n_clusters=3, score_normalization="local_density", density_k=2).fit(x, sec, dom)
    arrays, meta = b.get_state()
    assert {"ref_scale", "ref_shift", "ref_density"} <= set(arrays)
    clone = backend_from_state({k: np.array(v) for k, v in arrays.items()}, json.loads(json.dumps(meta)))
    q = np.random.default_rng(18).normal(size=(12, D)).astype(np.float32)
    qs = [keys[i % 2] for i in range(12)]
    np.testing.assert_array_equal(clone.score_samples(q, qs), b.score_samples(q, qs))
    np.testing.assert_array_equal(clone.ref_density_, b.ref_density_)
    assert clone.get_params() == b.get_params()
    # a state saved before the option existed: no new arrays, no new params -> the plain backend
    plain = CosineBackend(n_clusters=3).fit(x, sec, dom)
    arrays, meta = plain.get_state()
    old_arrays = {k: v for k, v in arrays.items() if k not in ("ref_scale", "ref_shift")}
    old_meta = {**meta, "params": {k: meta["params"][k] for k in
                                   ("n_clusters", "kmeans_on", "threshold_percentile", "random_state")}}
    old = backend_from_state(old_arrays, old_meta)
    assert old.score_normalization == "none" and old.ref_density_ is None
    assert (old.ref_scale_ == 1).all() and (old.ref_shift_ == 0).all()
    np.testing.assert_array_equal(old.score_samples(q, qs), plain.score_samples(q, qs))
    # a normalized state must carry its scales; wrong lengths are named
    arrays, meta = b.get_state()
    with pytest.raises(ValueError, match="ref_scale"):
        backend_from_state({k: v for k, v in arrays.items() if k != "ref_scale"}, meta)
    with pytest.raises(ValueError, match="ref_shift"):
        backend_from_state({**arrays, "ref_shift": arrays["ref_shift"][:-1]}, meta)
