"""Backends: anomaly scores from embeddings, per section (higher = more anomalous).

Two scikit-learn-style estimators (``__init__`` only stores parameters, ``fit`` returns self,
learned state in attributes ending in ``_``):

- :class:`CosineBackend` (the paper): per section, on length-normalized embeddings, the
  references are the (re-normalized) k-means means of the section's source training embeddings
  plus every target-domain training embedding of the section (or, ``references="clips"``, every
  training embedding of the section); the score is the minimum cosine distance ``1 - max cos``
  to the section's references, computed for all sections at once by one call of
  :func:`fastasd.ops.min_cosine_distance`. Optionally (``score_normalization="local_density"``,
  Wilkinghoff et al., "Keeping the balance", ICASSP 2025, and "Local density-based anomaly score
  normalization for domain generalization", TASLP 2025) each reference's distance is normalized
  by its local density, so that sparse (target) and dense (source) regions score on one scale:
  with ``d(x, y) = (1 - x.y) / 2`` and ``rho_j`` the local density of reference ``r_j``
  (:func:`local_density`), the score is ``min_j d(x, r_j) / rho_j`` (ratio form) or
  ``min_j d(x, r_j) - rho_j`` (difference form). rho is computed once at fit time, without
  labels, and saved with the backend.
- :class:`GMMBackend` (ablation): per section, a full-covariance Gaussian mixture on all the
  section's length-normalized training embeddings; score = negative log-likelihood.

Both set a decision threshold per section: the ``threshold_percentile``-th percentile of the
scores of the section's own training clips (``train_scores_`` after ``fit``; with
``references="clips"`` every training clip is a reference and would score 0, so each one is
scored without itself: leave-one-out); ``decide`` returns 1 where ``score > threshold``.

Sections are hashable keys (the API uses ``"machine_type/section"`` strings); for saving they must
be JSON-representable: strings, ints or tuples of those (tuples come back as tuples).
Domains are ``"source"`` or ``"target"``.
"""
from __future__ import annotations

import warnings
from typing import Any, Hashable, Sequence

import numpy as np
import torch

from fastasd import ops

__all__ = ["CosineBackend", "GMMBackend", "make_backend", "backend_from_state", "length_normalize",
           "local_density", "density_scale_shift"]

KMEANS_N_INIT = 10  # k-means restarts (sklearn's classic default, as in the author's environment)
_DOMAINS = ("source", "target")
# Local density: other references closer than this (in d = (1 - cos) / 2; about what float32
# unit vectors resolve) are duplicates of the reference and do not count as its neighbours.
DUPLICATE_DISTANCE = 1e-6
_DENSITY_BLOCK_ENTRIES = 1 << 22  # pairwise distances per block (32 MiB of float64)


def length_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (norm floored at 1e-12, as the ops), float64."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def local_density(refs, k: int = 1, pooling: str = "knn", r: float = 0.5) -> np.ndarray:
    """Local density ``rho_j`` of each row of ``refs`` (the references of ONE section), float64.

    With ``d(x, y) = (1 - cos(x, y)) / 2`` and ``d_(1) <= d_(2) <= ... <= d_(n)`` the sorted
    distances from ``r_j`` to the other references that are not its duplicates:

    - ``pooling="knn"``: ``rho_j = mean(d_(1), ..., d_(K))`` with ``K = min(k, n)``;
    - ``pooling="gwrp"``: ``rho_j = sum_i r^(i-1) d_(i) / sum_i r^(i-1)`` over all ``n``
      (geometrically weighted rank pooling: ``r = 0`` is the nearest one, ``r = 1`` the mean).

    Degenerate cases (the documented rule): another reference at ``d <= DUPLICATE_DISTANCE``
    (1e-6) is a duplicate (for example two k-means means of identical clips) and is skipped, so
    duplicates never give ``rho = 0``. A reference with no non-duplicate other reference (a
    section with one reference, or whose references are all copies of one) gets ``rho = NaN``:
    "undefined", which :func:`density_scale_shift` turns into the plain distance ``d``.
    """
    x = length_normalize(refs)
    R = x.shape[0]
    if pooling not in ("knn", "gwrp"):
        raise ValueError(f"local_density: pooling must be 'knn' or 'gwrp', got {pooling!r}")
    if int(k) < 1:
        raise ValueError(f"local_density: k must be >= 1, got {k}")
    if not 0.0 <= float(r) <= 1.0:
        raise ValueError(f"local_density: r must lie in [0, 1], got {r}")
    rho = np.full(R, np.nan)
    if R < 2:
        return rho
    block = max(1, _DENSITY_BLOCK_ENTRIES // R)
    for b0 in range(0, R, block):
        d = (1.0 - x[b0:b0 + block] @ x.T) / 2.0          # [block, R]
        d[d <= DUPLICATE_DISTANCE] = np.inf               # itself and its duplicates
        d.sort(axis=1)
        n = np.isfinite(d).sum(axis=1)                    # non-duplicate neighbours per row
        if pooling == "knn":
            kk = min(int(k), R - 1)
            near = d[:, :kk]
            valid = np.isfinite(near)
            total = np.where(valid, near, 0.0).sum(axis=1)
            count = valid.sum(axis=1)
        else:
            w = float(r) ** np.arange(R)  # 0 ** 0 = 1: r = 0 keeps the nearest one
            valid = np.isfinite(d)
            total = (np.where(valid, d, 0.0) * w).sum(axis=1)
            count = (valid * w).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            rho[b0:b0 + block] = np.where(n > 0, total / count, np.nan)
    return rho


def density_scale_shift(rho: np.ndarray, form: str = "ratio") -> tuple[np.ndarray, np.ndarray]:
    """Per-reference ``(scale, shift)`` (float32) of :func:`fastasd.ops.min_cosine_distance` for
    local densities ``rho``: ``scale * (1 - cos) + shift`` is ``d / rho`` (ratio form: scale
    ``1 / (2 rho)``, shift 0) or ``d - rho`` (difference form: scale 1/2, shift ``-rho``), with
    ``d = (1 - cos) / 2``. An undefined ``rho`` (NaN, see :func:`local_density`) gives the plain
    ``d`` (scale 1/2, shift 0) in both forms."""
    rho = np.asarray(rho, dtype=np.float64)
    undefined = np.isnan(rho)
    if form == "ratio":
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(undefined, 0.5, 0.5 / rho)
        shift = np.zeros_like(rho)
    elif form == "difference":
        scale = np.full_like(rho, 0.5)
        shift = np.where(undefined, 0.0, -rho)
    else:
        raise ValueError(f"density_scale_shift: form must be 'ratio' or 'difference', got {form!r}")
    return scale.astype(np.float32), shift.astype(np.float32)


def _check_inputs(embeddings, sections, domains=None) -> tuple[np.ndarray, list]:
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {x.shape}")
    sections = list(sections)
    if len(sections) != x.shape[0]:
        raise ValueError(f"sections has {len(sections)} entries, embeddings has {x.shape[0]} rows")
    if domains is not None:
        domains = list(domains)
        if len(domains) != x.shape[0]:
            raise ValueError(f"domains has {len(domains)} entries, embeddings has {x.shape[0]} rows")
        bad = sorted({str(d) for d in domains if d not in _DOMAINS})
        if bad:
            raise ValueError(f"domains must be 'source' or 'target', got {bad}")
    if not np.all(np.isfinite(x)):
        raise ValueError("embeddings contain NaN or infinite values")
    return x, sections


def _group_rows(sections: list) -> dict[Hashable, np.ndarray]:
    """Section key -> row indices, keys in order of first appearance."""
    groups: dict[Hashable, list[int]] = {}
    for i, s in enumerate(sections):
        groups.setdefault(s, []).append(i)
    return {k: np.asarray(v, dtype=np.int64) for k, v in groups.items()}


def _to_json_key(k: Hashable) -> Any:
    if isinstance(k, tuple):
        return [_to_json_key(v) for v in k]
    if isinstance(k, (str, int)) and not isinstance(k, bool):
        return k
    raise TypeError(f"section key {k!r} cannot be saved (use str, int or tuples of those)")


def _from_json_key(k: Any) -> Hashable:
    return tuple(_from_json_key(v) for v in k) if isinstance(k, list) else k


class _SectionBackend:
    """Shared section bookkeeping, thresholds and decisions."""

    sections_: list
    thresholds_: np.ndarray

    def _section_index(self, sections: list) -> np.ndarray:
        index = {k: i for i, k in enumerate(self.sections_)}
        out = np.empty(len(sections), dtype=np.int64)
        for i, s in enumerate(sections):
            try:
                out[i] = index[s]
            except (KeyError, TypeError):
                raise KeyError(f"unknown section {s!r}; the backend was fitted on "
                               f"{self.sections_!r}") from None
        return out

    def _check_fitted(self) -> None:
        if not hasattr(self, "sections_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")

    def _training_scores(self, x: np.ndarray, sections: list) -> np.ndarray:
        return self.score_samples(x, sections)

    def _fit_thresholds(self, x: np.ndarray, sections: list) -> None:
        scores = self._training_scores(x, sections)
        self.train_scores_ = scores
        groups = _group_rows(sections)
        self.thresholds_ = np.array([np.percentile(scores[groups[k]], self.threshold_percentile)
                                     for k in self.sections_], dtype=np.float64)

    def decide(self, scores, sections: Sequence[Hashable]) -> np.ndarray:
        """Decisions ``int [N]``: 1 (anomalous) where ``score > threshold`` of the row's section."""
        self._check_fitted()
        scores = np.asarray(scores, dtype=np.float64)
        sections = list(sections)
        if scores.shape != (len(sections),):
            raise ValueError(f"scores must be [{len(sections)}], got shape {scores.shape}")
        return (scores > self.thresholds_[self._section_index(sections)]).astype(np.int64)


class CosineBackend(_SectionBackend):
    """Minimum cosine distance to k-means means (source) and target training embeddings,
    optionally normalized by each reference's local density.

    Args:
        n_clusters: k-means clusters per section (``min(n_clusters, points)`` are used).
        kmeans_on: ``"source"`` (paper: the section's source training embeddings) or ``"all"``
            (author's code: source and target together).
        threshold_percentile: percentile of the section's training scores used as threshold.
        random_state: seed of k-means (``n_init=10`` restarts, k-means++).
        references: ``"kmeans"`` (k-means means + target embeddings, paper) or ``"clips"``
            (every training embedding of the section, both domains; ``n_clusters`` and
            ``kmeans_on`` are then unused).
        score_normalization: ``"none"`` (paper: ``1 - max cos``) or ``"local_density"``.
        density_pooling, density_k, density_gwrp_r: how :func:`local_density` pools the
            distances to the other references (``"knn"`` with K, or ``"gwrp"`` with ratio r).
        density_form: ``"ratio"`` (``min_j d / rho_j``) or ``"difference"`` (``min_j d - rho_j``).

    Fitted attributes: ``sections_`` (keys, order of first appearance), ``refs_`` float32
    ``[M, D]`` unit rows grouped by section, ``ref_offsets_`` int64 ``[G+1]``, ``n_kmeans_refs_``
    int64 ``[G]`` (the first ``n_kmeans_refs_[g]`` references of section g are k-means means, the
    rest training embeddings), ``ref_scale_`` and ``ref_shift_`` float32 ``[M]`` (the score is
    ``min_j ref_scale_[j] * (1 - cos) + ref_shift_[j]`` over the section's references: ones and
    zeros without normalization, see :func:`density_scale_shift` with it), ``ref_density_``
    float64 ``[M]`` (rho; NaN where undefined; only with local density, else None),
    ``thresholds_`` float64 ``[G]``; after ``fit`` also ``train_scores_`` float64 ``[N]`` (the
    training clips' scores the thresholds come from, leave-one-out with ``references="clips"``).
    """

    def __init__(self, n_clusters: int = 16, kmeans_on: str = "source",
                 threshold_percentile: float = 90.0, random_state: int = 0,
                 references: str = "kmeans", score_normalization: str = "none",
                 density_pooling: str = "knn", density_k: int = 1, density_gwrp_r: float = 0.5,
                 density_form: str = "ratio"):
        self.n_clusters = n_clusters
        self.kmeans_on = kmeans_on
        self.threshold_percentile = threshold_percentile
        self.random_state = random_state
        self.references = references
        self.score_normalization = score_normalization
        self.density_pooling = density_pooling
        self.density_k = density_k
        self.density_gwrp_r = density_gwrp_r
        self.density_form = density_form

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters."""
        return {"n_clusters": self.n_clusters, "kmeans_on": self.kmeans_on,
                "threshold_percentile": self.threshold_percentile, "random_state": self.random_state,
                "references": self.references, "score_normalization": self.score_normalization,
                "density_pooling": self.density_pooling, "density_k": self.density_k,
                "density_gwrp_r": self.density_gwrp_r, "density_form": self.density_form}

    def _check_params(self) -> None:
        choices = {"kmeans_on": ("source", "all"), "references": ("kmeans", "clips"),
                   "score_normalization": ("none", "local_density"),
                   "density_pooling": ("knn", "gwrp"), "density_form": ("ratio", "difference")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"CosineBackend: {name} must be one of {list(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        if int(self.n_clusters) < 1:
            raise ValueError(f"CosineBackend: n_clusters must be >= 1, got {self.n_clusters}")
        if int(self.density_k) < 1:
            raise ValueError(f"CosineBackend: density_k must be >= 1, got {self.density_k}")
        if not 0.0 <= float(self.density_gwrp_r) <= 1.0:
            raise ValueError(f"CosineBackend: density_gwrp_r must lie in [0, 1], got {self.density_gwrp_r}")

    @property
    def normalized(self) -> bool:
        """Whether the scores are local-density normalized."""
        return self.score_normalization == "local_density"

    def _training_scores(self, x: np.ndarray, sections: list) -> np.ndarray:
        """The training clips' scores for the thresholds. With ``references="clips"`` clip i of
        a section is reference i of that section (fit order), so it is left out of its own
        minimum (a section of one clip keeps it: score 0)."""
        if self.references != "clips":
            return self.score_samples(x, sections)
        out = np.empty(len(sections), dtype=np.float64)
        for g, rows in enumerate(_group_rows(sections).values()):
            lo, hi = int(self.ref_offsets_[g]), int(self.ref_offsets_[g + 1])
            refs = length_normalize(self.refs_[lo:hi])
            scale = self.ref_scale_[lo:hi].astype(np.float64)
            shift = self.ref_shift_[lo:hi].astype(np.float64)
            q = length_normalize(x[rows])
            block = max(1, _DENSITY_BLOCK_ENTRIES // len(refs))
            for b0 in range(0, len(rows), block):
                val = scale * (1.0 - q[b0:b0 + block] @ refs.T) + shift
                if len(refs) > 1:
                    i = np.arange(b0, min(b0 + block, len(rows)))
                    val[i - b0, i] = np.inf
                out[rows[b0:b0 + block]] = val.min(axis=1)
        return out

    def fit(self, embeddings, sections: Sequence[Hashable], domains: Sequence[str]) -> "CosineBackend":
        """Fit the references of every section from training embeddings ``[N, D]``."""
        from sklearn.cluster import KMeans
        from sklearn.exceptions import ConvergenceWarning

        self._check_params()
        x, sections = _check_inputs(embeddings, sections, domains)
        domains = np.asarray(list(domains))
        xn = length_normalize(x)
        refs, offsets, n_km, keys = [], [0], [], []
        for key, rows in _group_rows(sections).items():
            if self.references == "clips":
                refs.append(xn[rows])
                offsets.append(offsets[-1] + len(rows))
                n_km.append(0)
                keys.append(key)
                continue
            is_target = domains[rows] == "target"
            km_rows = rows if self.kmeans_on == "all" else rows[~is_target]
            parts = []
            if len(km_rows) > 0:
                k = min(int(self.n_clusters), len(km_rows))
                with warnings.catch_warnings():
                    # fewer distinct points than clusters: duplicate means are harmless here
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    km = KMeans(n_clusters=k, n_init=KMEANS_N_INIT, random_state=self.random_state)
                    km.fit(xn[km_rows])
                parts.append(length_normalize(km.cluster_centers_))
            n_km.append(parts[0].shape[0] if parts else 0)
            parts.append(xn[rows[is_target]])
            section_refs = np.concatenate(parts, axis=0)
            refs.append(section_refs)
            offsets.append(offsets[-1] + section_refs.shape[0])
            keys.append(key)
        self.sections_ = keys
        self.refs_ = np.concatenate(refs, axis=0).astype(np.float32)
        self.ref_offsets_ = np.asarray(offsets, dtype=np.int64)
        self.n_kmeans_refs_ = np.asarray(n_km, dtype=np.int64)
        M = self.refs_.shape[0]
        if self.normalized:
            # rho from the stored float32 references (those the scores use)
            self.ref_density_ = np.concatenate([
                local_density(self.refs_[a:b], k=self.density_k, pooling=self.density_pooling,
                              r=self.density_gwrp_r)
                for a, b in zip(self.ref_offsets_[:-1], self.ref_offsets_[1:])])
            self.ref_scale_, self.ref_shift_ = density_scale_shift(self.ref_density_, self.density_form)
        else:
            self.ref_density_ = None
            self.ref_scale_, self.ref_shift_ = np.ones(M, np.float32), np.zeros(M, np.float32)
        self._fit_thresholds(x, sections)
        return self

    def score_samples(self, embeddings, sections: Sequence[Hashable]) -> np.ndarray:
        """Anomaly scores float64 ``[N]``: min cosine distance (in [0, 2]) to the references of
        each row's section, or with local density its normalized form
        ``min_j ref_scale_[j] * (1 - cos) + ref_shift_[j]``. Unknown section -> ``KeyError``
        naming it."""
        self._check_fitted()
        x, sections = _check_inputs(embeddings, sections)
        group = self._section_index(sections)
        if x.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        if x.shape[1] != self.refs_.shape[1]:
            raise ValueError(f"embeddings have D={x.shape[1]}, the backend was fitted with "
                             f"D={self.refs_.shape[1]}")
        q = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        # plain: no scale/shift, the kernel's original (fastest) path
        per_ref = ((torch.from_numpy(self.ref_scale_), torch.from_numpy(self.ref_shift_))
                   if self.normalized else ())
        out = ops.min_cosine_distance(q, torch.from_numpy(self.refs_), torch.from_numpy(group),
                                      torch.from_numpy(self.ref_offsets_), *per_ref)
        return out.double().numpy()

    def get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)``: numeric state (for safetensors) and JSON-able metadata."""
        self._check_fitted()
        arrays = {"refs": self.refs_, "ref_offsets": self.ref_offsets_,
                  "n_kmeans_refs": self.n_kmeans_refs_, "thresholds": self.thresholds_,
                  "ref_scale": self.ref_scale_, "ref_shift": self.ref_shift_}
        if self.ref_density_ is not None:
            arrays["ref_density"] = self.ref_density_
        meta = {"type": "cosine", "params": self.get_params(),
                "sections": [_to_json_key(k) for k in self.sections_]}
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> "CosineBackend":
        """Rebuild a fitted backend from :meth:`get_state`'s output. A state saved before the
        local-density option (no ``ref_scale`` / ``ref_shift`` arrays, fewer params) loads as the
        plain backend it was."""
        if meta.get("type") != "cosine":
            raise ValueError(f"CosineBackend.from_state: state type is {meta.get('type')!r}, not 'cosine'")
        self = cls(**meta["params"])
        self._check_params()
        self.sections_ = [_from_json_key(k) for k in meta["sections"]]
        self.refs_ = np.ascontiguousarray(arrays["refs"], dtype=np.float32)
        self.ref_offsets_ = np.asarray(arrays["ref_offsets"], dtype=np.int64)
        self.n_kmeans_refs_ = np.asarray(arrays["n_kmeans_refs"], dtype=np.int64)
        self.thresholds_ = np.asarray(arrays["thresholds"], dtype=np.float64)
        if len(self.ref_offsets_) != len(self.sections_) + 1 or len(self.thresholds_) != len(self.sections_):
            raise ValueError("CosineBackend.from_state: arrays do not match the section list")
        M = self.refs_.shape[0]
        if self.normalized and not ("ref_scale" in arrays and "ref_shift" in arrays):
            raise ValueError("CosineBackend.from_state: local-density state without ref_scale/ref_shift")
        self.ref_scale_ = np.ascontiguousarray(arrays.get("ref_scale", np.ones(M)), dtype=np.float32)
        self.ref_shift_ = np.ascontiguousarray(arrays.get("ref_shift", np.zeros(M)), dtype=np.float32)
        density = arrays.get("ref_density")
        self.ref_density_ = None if density is None else np.asarray(density, dtype=np.float64)
        for name in ("ref_scale_", "ref_shift_") + (("ref_density_",) if density is not None else ()):
            if getattr(self, name).shape != (M,):
                raise ValueError(f"CosineBackend.from_state: {name[:-1]} must be [{M}] (one value per "
                                 f"reference), got shape {getattr(self, name).shape}")
        return self


class GMMBackend(_SectionBackend):
    """Per-section Gaussian mixture (full covariance) on length-normalized embeddings.

    Args:
        n_components: components per section (``min(n_components, points)`` are used).
        reg_covar: added to the covariance diagonal.
        threshold_percentile: percentile of the section's training scores used as threshold.
        random_state: seed of the mixture's k-means initialization.

    Fitted attributes: ``sections_``, ``gmms_`` (one ``sklearn.mixture.GaussianMixture`` per
    section), ``thresholds_`` float64 ``[G]``. Score = ``-log p(x)`` (higher = more anomalous).
    """

    def __init__(self, n_components: int = 16, reg_covar: float = 1e-3,
                 threshold_percentile: float = 90.0, random_state: int = 0):
        self.n_components = n_components
        self.reg_covar = reg_covar
        self.threshold_percentile = threshold_percentile
        self.random_state = random_state

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters."""
        return {"n_components": self.n_components, "reg_covar": self.reg_covar,
                "threshold_percentile": self.threshold_percentile, "random_state": self.random_state}

    def fit(self, embeddings, sections: Sequence[Hashable], domains: Sequence[str]) -> "GMMBackend":
        """Fit one mixture per section on all its training embeddings (domains only checked)."""
        from sklearn.mixture import GaussianMixture

        x, sections = _check_inputs(embeddings, sections, domains)
        xn = length_normalize(x)
        self.sections_, self.gmms_ = [], []
        for key, rows in _group_rows(sections).items():
            k = min(int(self.n_components), len(rows))
            gmm = GaussianMixture(n_components=k, covariance_type="full", reg_covar=self.reg_covar,
                                  random_state=self.random_state)
            self.gmms_.append(gmm.fit(xn[rows]))
            self.sections_.append(key)
        self._fit_thresholds(x, sections)
        return self

    def score_samples(self, embeddings, sections: Sequence[Hashable]) -> np.ndarray:
        """Anomaly scores float64 ``[N]``: negative log-likelihood under the row's section GMM."""
        self._check_fitted()
        x, sections = _check_inputs(embeddings, sections)
        group = self._section_index(sections)
        out = np.zeros(x.shape[0], dtype=np.float64)
        xn = length_normalize(x)
        for g in np.unique(group):
            rows = group == g
            out[rows] = -self.gmms_[g].score_samples(xn[rows])
        return out

    def get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)``: per section ``g`` arrays ``gmm{g}.weights|means|covariances|
        precisions_cholesky`` and ``thresholds``; meta is JSON-able. No pickle."""
        self._check_fitted()
        arrays: dict[str, np.ndarray] = {"thresholds": self.thresholds_}
        for g, gmm in enumerate(self.gmms_):
            for name in ("weights", "means", "covariances", "precisions_cholesky"):
                arrays[f"gmm{g}.{name}"] = np.asarray(getattr(gmm, name + "_"), dtype=np.float64)
        meta = {"type": "gmm", "params": self.get_params(),
                "sections": [_to_json_key(k) for k in self.sections_]}
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> "GMMBackend":
        """Rebuild a fitted backend from :meth:`get_state`'s output (fitted mixtures restored
        from their parameters)."""
        from sklearn.mixture import GaussianMixture

        if meta.get("type") != "gmm":
            raise ValueError(f"GMMBackend.from_state: state type is {meta.get('type')!r}, not 'gmm'")
        self = cls(**meta["params"])
        self.sections_ = [_from_json_key(k) for k in meta["sections"]]
        self.thresholds_ = np.asarray(arrays["thresholds"], dtype=np.float64)
        self.gmms_ = []
        for g in range(len(self.sections_)):
            w = np.asarray(arrays[f"gmm{g}.weights"], dtype=np.float64)
            gmm = GaussianMixture(n_components=len(w), covariance_type="full",
                                  reg_covar=self.reg_covar, random_state=self.random_state)
            gmm.weights_ = w
            gmm.means_ = np.asarray(arrays[f"gmm{g}.means"], dtype=np.float64)
            gmm.covariances_ = np.asarray(arrays[f"gmm{g}.covariances"], dtype=np.float64)
            gmm.precisions_cholesky_ = np.asarray(arrays[f"gmm{g}.precisions_cholesky"], dtype=np.float64)
            # precisions_ = P P^T with P the (upper-triangular) precision Cholesky factor
            gmm.precisions_ = np.einsum("kij,klj->kil", gmm.precisions_cholesky_, gmm.precisions_cholesky_)
            gmm.converged_, gmm.n_iter_, gmm.lower_bound_ = True, 0, float("nan")
            gmm.n_features_in_ = gmm.means_.shape[1]
            self.gmms_.append(gmm)
        return self


def make_backend(config) -> CosineBackend | GMMBackend:
    """The backend a :class:`fastasd.config.Config` asks for (unfitted); seed = ``config.seed``."""
    if config.backend == "cosine":
        return CosineBackend(n_clusters=config.n_clusters, kmeans_on=config.kmeans_on,
                             threshold_percentile=config.threshold_percentile, random_state=config.seed,
                             references=config.references, score_normalization=config.score_normalization,
                             density_pooling=config.density_pooling, density_k=config.density_k,
                             density_gwrp_r=config.density_gwrp_r, density_form=config.density_form)
    if config.backend == "gmm":
        return GMMBackend(n_components=config.gmm_components, reg_covar=config.gmm_reg,
                          threshold_percentile=config.threshold_percentile, random_state=config.seed)
    raise ValueError(f"make_backend: unknown backend {config.backend!r}; choose 'cosine' or 'gmm'")


def backend_from_state(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> CosineBackend | GMMBackend:
    """Rebuild whichever backend ``meta["type"]`` names from :meth:`get_state` output."""
    kinds = {"cosine": CosineBackend, "gmm": GMMBackend}
    kind = meta.get("type")
    if kind not in kinds:
        raise ValueError(f"backend_from_state: unknown backend type {kind!r}; expected {sorted(kinds)}")
    return kinds[kind].from_state(arrays, meta)
