"""Backends: anomaly scores from embeddings, per section (higher = more anomalous).

Two scikit-learn-style estimators (``__init__`` only stores parameters, ``fit`` returns self,
learned state in attributes ending in ``_``):

- :class:`CosineBackend` (the paper): per section, on length-normalized embeddings, the
  references are the (re-normalized) k-means means of the section's source training embeddings
  plus every target-domain training embedding of the section; the score is the minimum cosine
  distance ``1 - max cos`` to the section's references, computed for all sections at once by one
  call of :func:`fastasd.ops.min_cosine_distance`.
- :class:`GMMBackend` (ablation): per section, a full-covariance Gaussian mixture on all the
  section's length-normalized training embeddings; score = negative log-likelihood.

Both set a decision threshold per section: the ``threshold_percentile``-th percentile of the
scores of the section's own training clips; ``decide`` returns 1 where ``score > threshold``.

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

__all__ = ["CosineBackend", "GMMBackend", "make_backend", "backend_from_state", "length_normalize"]

KMEANS_N_INIT = 10  # k-means restarts (sklearn's classic default, as in the author's environment)
_DOMAINS = ("source", "target")


def length_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (norm floored at 1e-12, as the ops), float64."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


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

    def _fit_thresholds(self, x: np.ndarray, sections: list) -> None:
        scores = self.score_samples(x, sections)
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
    """Minimum cosine distance to k-means means (source) and target training embeddings.

    Args:
        n_clusters: k-means clusters per section (``min(n_clusters, points)`` are used).
        kmeans_on: ``"source"`` (paper: the section's source training embeddings) or ``"all"``
            (author's code: source and target together).
        threshold_percentile: percentile of the section's training scores used as threshold.
        random_state: seed of k-means (``n_init=10`` restarts, k-means++).

    Fitted attributes: ``sections_`` (keys, order of first appearance), ``refs_`` float32
    ``[M, D]`` unit rows grouped by section, ``ref_offsets_`` int64 ``[G+1]``, ``n_kmeans_refs_``
    int64 ``[G]`` (the first ``n_kmeans_refs_[g]`` references of section g are k-means means, the
    rest target embeddings), ``thresholds_`` float64 ``[G]``.
    """

    def __init__(self, n_clusters: int = 16, kmeans_on: str = "source",
                 threshold_percentile: float = 90.0, random_state: int = 0):
        self.n_clusters = n_clusters
        self.kmeans_on = kmeans_on
        self.threshold_percentile = threshold_percentile
        self.random_state = random_state

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters."""
        return {"n_clusters": self.n_clusters, "kmeans_on": self.kmeans_on,
                "threshold_percentile": self.threshold_percentile, "random_state": self.random_state}

    def fit(self, embeddings, sections: Sequence[Hashable], domains: Sequence[str]) -> "CosineBackend":
        """Fit the references of every section from training embeddings ``[N, D]``."""
        from sklearn.cluster import KMeans
        from sklearn.exceptions import ConvergenceWarning

        if self.kmeans_on not in ("source", "all"):
            raise ValueError(f"CosineBackend: kmeans_on must be 'source' or 'all', got {self.kmeans_on!r}")
        if int(self.n_clusters) < 1:
            raise ValueError(f"CosineBackend: n_clusters must be >= 1, got {self.n_clusters}")
        x, sections = _check_inputs(embeddings, sections, domains)
        domains = np.asarray(list(domains))
        xn = length_normalize(x)
        refs, offsets, n_km, keys = [], [0], [], []
        for key, rows in _group_rows(sections).items():
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
        self._fit_thresholds(x, sections)
        return self

    def score_samples(self, embeddings, sections: Sequence[Hashable]) -> np.ndarray:
        """Anomaly scores float64 ``[N]``: min cosine distance (in [0, 2]) to the references of
        each row's section. Unknown section -> ``KeyError`` naming it."""
        self._check_fitted()
        x, sections = _check_inputs(embeddings, sections)
        group = self._section_index(sections)
        if x.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        if x.shape[1] != self.refs_.shape[1]:
            raise ValueError(f"embeddings have D={x.shape[1]}, the backend was fitted with "
                             f"D={self.refs_.shape[1]}")
        q = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        out = ops.min_cosine_distance(q, torch.from_numpy(self.refs_), torch.from_numpy(group),
                                      torch.from_numpy(self.ref_offsets_))
        return out.double().numpy()

    def get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)``: numeric state (for safetensors) and JSON-able metadata."""
        self._check_fitted()
        arrays = {"refs": self.refs_, "ref_offsets": self.ref_offsets_,
                  "n_kmeans_refs": self.n_kmeans_refs_, "thresholds": self.thresholds_}
        meta = {"type": "cosine", "params": self.get_params(),
                "sections": [_to_json_key(k) for k in self.sections_]}
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> "CosineBackend":
        """Rebuild a fitted backend from :meth:`get_state`'s output."""
        if meta.get("type") != "cosine":
            raise ValueError(f"CosineBackend.from_state: state type is {meta.get('type')!r}, not 'cosine'")
        self = cls(**meta["params"])
        self.sections_ = [_from_json_key(k) for k in meta["sections"]]
        self.refs_ = np.ascontiguousarray(arrays["refs"], dtype=np.float32)
        self.ref_offsets_ = np.asarray(arrays["ref_offsets"], dtype=np.int64)
        self.n_kmeans_refs_ = np.asarray(arrays["n_kmeans_refs"], dtype=np.int64)
        self.thresholds_ = np.asarray(arrays["thresholds"], dtype=np.float64)
        if len(self.ref_offsets_) != len(self.sections_) + 1 or len(self.thresholds_) != len(self.sections_):
            raise ValueError("CosineBackend.from_state: arrays do not match the section list")
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
                             threshold_percentile=config.threshold_percentile, random_state=config.seed)
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
