"""Configuration of the fastasd system: every default of SPEC.md and every ablation switch.

A :class:`Config` is a plain dataclass (no torch import, so the CLI's ``--help`` stays fast).
Values are validated on construction, by :meth:`Config.replace` and by :meth:`Config.from_dict`;
a bad value raises ``ValueError`` naming the field (and the allowed values for a choice).

Presets (:meth:`Config.preset`):

- ``"paper"``: the presented system of the paper (the dataclass defaults).
- ``"standard"``: the paper's Table 7 "standard design choices": log-mel spectrograms, trainable
  cluster centers, bias terms and a GMM backend; everything else as in ``"paper"``.
- ``"demo"``: a small, fast configuration for the synthetic demo (owned by the demo stream).
- ``"balanced"``: the paper's training, with domain-balanced anomaly scores: local-density
  normalization (Wilkinghoff et al., ICASSP 2025 / TASLP 2025) in that method's default form:
  every training clip of the section is a reference, K = 1 nearest other reference, ratio
  ``d / rho``.

:data:`BACKEND_FIELDS` are the fields that act only after the embeddings exist (the backend and
its thresholds): changing them needs no retraining (``fastasd fit-backend``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["Config", "PRESETS", "BACKEND_FIELDS"]


def _f(default: Any, help: str, choices: tuple | None = None, minimum: float | None = None,
       exclusive_min: bool = False, maximum: float | None = None, special: tuple = ()) -> Any:
    """A dataclass field with its help text, allowed choices and numeric range in the metadata
    (``special``: words allowed besides numbers, e.g. ``clip_seconds="auto"``)."""
    return field(default=default, metadata={"help": help, "choices": choices, "min": minimum,
                                            "exclusive_min": exclusive_min, "max": maximum,
                                            "special": special})


@dataclass
class Config:
    """All settings of a fastasd system (frontend, network, loss, training, backend).

    Every field has a SPEC default; every design choice the paper ablates is a switch here so
    that the paper's tables 3-7 can be re-run. See :meth:`fields_help` for a listing.
    """

    # --- audio -----------------------------------------------------------------------------
    sample_rate: int = _f(16000, "Sample rate in Hz the audio is resampled to.", minimum=1)
    """Sample rate in Hz the audio is resampled to."""
    clip_seconds: float = _f(10.0, "Clip length in seconds (longer clips are cropped, shorter "
                             "ones zero-padded at the end), or auto: the most common length of "
                             "the training clips.", minimum=0.0, exclusive_min=True,
                             special=("auto",))
    """Clip length in seconds fed to the network (crop longer clips, zero-pad shorter ones), or
    ``"auto"``: training replaces it by the most common length of the training clips
    (:func:`fastasd.training.datacheck.resolve_clip_seconds`), so a saved model holds a number."""
    channel: Optional[int] = _f(None, "Audio channel to use; None = average all channels to mono.",
                                minimum=0)
    """Audio channel to use (0-based); ``None`` averages all channels to mono."""

    # --- frontend --------------------------------------------------------------------------
    n_fft: int = _f(1024, "STFT frame length = DFT length in samples (periodic Hann window).",
                    minimum=2)
    """STFT frame length in samples (= DFT length; periodic Hann window; no centering/padding)."""
    hop: int = _f(512, "STFT hop size in samples.", minimum=1)
    """STFT hop size in samples."""
    temporal_normalization: bool = _f(True, "Subtract per clip and frequency bin the mean over "
                                      "all frames of the spectrogram.")
    """Temporal mean normalization of the spectrogram (per clip and frequency bin)."""
    representation: str = _f("both", "Input representations: both branches, spectrogram only or "
                             "spectrum only.", choices=("both", "spectrogram", "spectrum"))
    """Which branches to use: ``both`` (spectrogram + spectrum), ``spectrogram`` or ``spectrum``."""
    combine: str = _f("concatenate", "How the two branch embeddings are combined.",
                      choices=("concatenate", "add"))
    """How the two branch embeddings form the file embedding: ``concatenate`` (2*E) or ``add`` (E)."""
    spectrogram_type: str = _f("linear", "Linear magnitude spectrogram or log-mel spectrogram.",
                               choices=("linear", "logmel"))
    """``linear`` magnitude spectrogram (paper) or ``logmel`` (log of a mel filterbank)."""
    n_mels: int = _f(128, "Number of mel bins when spectrogram_type=logmel.", minimum=1)
    """Number of mel bins of the log-mel option."""

    # --- network ---------------------------------------------------------------------------
    embedding_dim: int = _f(128, "Embedding size of each branch.", minimum=1)
    """Embedding size per branch (the file embedding is 2x this when concatenating both)."""
    use_bias: bool = _f(False, "Use bias terms in convolutional and dense layers.")
    """Bias terms in conv/dense layers (the paper uses none)."""
    bn_momentum: float = _f(0.01, "BatchNorm running-statistics momentum (PyTorch convention; "
                            "Keras 0.99).", minimum=0.0, maximum=1.0)
    """BatchNorm momentum in PyTorch's convention (0.01 = Keras momentum 0.99)."""
    bn_eps: float = _f(1e-3, "BatchNorm epsilon (Keras default).", minimum=0.0, exclusive_min=True)
    """BatchNorm epsilon (Keras default 1e-3)."""
    spectrum_dense_layers: int = _f(4, "Number of [dense -> BN -> ReLU] layers in the spectrum "
                                    "branch before the final linear layer.", minimum=0)
    """Number of ``dense -> BN -> ReLU`` layers of the spectrum branch (author's code: 4)."""

    # --- loss ------------------------------------------------------------------------------
    n_subclusters: int = _f(16, "Sub-clusters (centers) per class of the sub-cluster AdaCos loss.",
                            minimum=1)
    """Sub-clusters K per class of the sub-cluster AdaCos loss."""
    trainable_centers: bool = _f(False, "Train the loss's cluster centers (paper: fixed random).")
    """Train the cluster centers by gradient (the paper keeps them fixed at random values)."""
    scale_angle: str = _f("sum", "Angle to the own class in the AdaCos scale update: label-weighted "
                          "sum over sub-clusters (author's code) or nearest sub-cluster.",
                          choices=("sum", "nearest"))
    """Angle used in the AdaCos scale update: ``sum`` (author's code) or ``nearest`` sub-cluster."""
    mixup: bool = _f(True, "Mixup of waveforms and labels on every training batch.")
    """Mixup on every training batch (partner = the batch reversed, lambda ~ U(0, 1))."""
    mixup_label: str = _f("max", "Mixup label rule: element-wise max of lam*y1 and (1-lam)*y2 "
                          "(author's code) or their sum.", choices=("max", "sum"))
    """Mixup label rule: ``max`` (author's code, not renormalized) or ``sum``."""
    aux_classes: str = _f("paper", "Meta information that forms the auxiliary classes: machine type, "
                          "section, attributes and domain (paper); without the attributes; without "
                          "the domain; or machine type and section only.",
                          choices=("paper", "no_attributes", "no_domain", "section"))
    """Which meta information forms the auxiliary classes (:func:`fastasd.data.labels.class_key`):
    ``paper`` (machine type, section, attribute tail, domain), ``no_attributes``, ``no_domain``
    or ``section`` (machine type + section). Hide the attributes when the domain shift runs along
    one of them (e.g. a speed never seen in the source domain)."""
    loss: str = _f("subcluster_adacos", "Classification loss of the auxiliary task: sub-cluster "
                   "AdaCos (paper) or AdaProj (cosine to a class's linear subspace; Wilkinghoff, "
                   "DCASE 2024).", choices=("subcluster_adacos", "adaproj"))
    """``subcluster_adacos`` (paper) or ``adaproj`` (:class:`fastasd.loss.AdaProj`)."""
    adaproj_dim: int = _f(32, "Subspace dimension per class of the AdaProj loss.", minimum=1)
    """Dimension K of each class's subspace (AdaProj only; at most the embedding size)."""
    featex_prob: float = _f(0.0, "FeatEx feature exchange (Wilkinghoff, ICASSP 2024): the share of "
                            "training clips whose spectrogram sub-embedding is swapped with their "
                            "partner's for an extra classifier of original vs exchanged; 0 = off "
                            "(paper).", minimum=0.0, maximum=1.0)
    """Probability that a training clip's embedding is exchanged by FeatEx (0 = off, the paper's
    training). Needs both branches, concatenated. Training only: inference is unchanged."""
    featex_weight: float = _f(1.0, "Weight of the FeatEx loss added to the main loss.", minimum=0.0)
    """Weight of the FeatEx classifier's loss in the total loss (the author's code: 1)."""

    # --- training --------------------------------------------------------------------------
    epochs: int = _f(10, "Training epochs.", minimum=1)
    """Training epochs."""
    batch_size: int = _f(64, "Training batch size.", minimum=1)
    """Training batch size."""
    learning_rate: float = _f(1e-3, "Adam learning rate.", minimum=0.0, exclusive_min=True)
    """Adam learning rate."""
    l2: float = _f(1e-5, "L2 penalty factor: l2 * sum(w^2) over every conv/dense kernel is added "
                   "to the loss (= coupled weight decay 2*l2).", minimum=0.0)
    """L2 factor: ``l2 * sum(w**2)`` over all conv/dense kernels is added to the loss."""
    adam_eps: float = _f(1e-7, "Adam epsilon (Keras default).", minimum=0.0, exclusive_min=True)
    """Adam epsilon (Keras default 1e-7)."""
    ensemble_size: int = _f(1, "Number of independently trained models whose scores are summed "
                            "(paper: 5).", minimum=1)
    """Number of independently trained models; their anomaly scores are summed."""
    seed: int = _f(0, "Random seed (ensemble member i uses seed + i).", minimum=0)
    """Random seed for initialization, shuffling and mixup."""
    mixed_precision: bool = _f(False, "Train with bfloat16 autocast on GPU, and on CPUs where "
                               "bfloat16 is measured faster (else float32, with a warning).")
    """Automatic mixed precision (bfloat16 autocast; the loss and the optimizer in float32) on a
    GPU, or on a CPU with bfloat16 units that :mod:`fastasd.precision` measures faster (there
    with channels-last weights). Off in every preset: their figures are float32 figures."""
    device: str = _f("auto", "Torch device: auto (CUDA if available), cpu, cuda, cuda:N.")
    """Torch device string; ``auto`` = CUDA when available, else CPU."""
    num_workers: int = _f(0, "DataLoader worker processes for audio loading.", minimum=0)
    """DataLoader worker processes for audio loading."""

    # --- backend ---------------------------------------------------------------------------
    backend: str = _f("cosine", "Anomaly scoring backend: min cosine distance to k-means means "
                      "and target references, or a GMM.", choices=("cosine", "gmm"))
    """Scoring backend: ``cosine`` (paper) or ``gmm`` (ablation)."""
    n_clusters: int = _f(16, "k-means clusters per section for the source-domain references.",
                         minimum=1)
    """k-means clusters per section (cosine backend)."""
    kmeans_on: str = _f("source", "Embeddings k-means runs on: source training clips (paper) or "
                        "all training clips (author's code).", choices=("source", "all"))
    """k-means on the section's ``source`` training embeddings (paper) or ``all`` (author's code)."""
    gmm_components: int = _f(16, "GMM components per section (gmm backend).", minimum=1)
    """GMM components per section (gmm backend)."""
    gmm_reg: float = _f(1e-3, "Value added to the diagonal of the GMM covariances.", minimum=0.0)
    """Regularization added to the GMM covariance diagonal."""
    threshold_percentile: float = _f(90.0, "Decision threshold = this percentile of the section's "
                                     "training scores.", minimum=0.0, maximum=100.0)
    """Decision threshold per section: this percentile of the section's own training scores."""
    references: str = _f("kmeans", "References of the cosine backend per section: k-means means of "
                         "the source clips plus every target clip (paper), or every training clip.",
                         choices=("kmeans", "clips"))
    """Cosine backend references per section: ``kmeans`` (k-means means + target clips, paper) or
    ``clips`` (every training clip of the section, both domains)."""
    score_normalization: str = _f("none", "Cosine backend score: plain min cosine distance (paper), or "
                                  "local-density normalized per reference (domain-balanced scores, "
                                  "Wilkinghoff et al. 2025).", choices=("none", "local_density"))
    """``none``: min cosine distance (paper); ``local_density``: each reference's distance divided by
    (ratio) or reduced by (difference) its local density rho_j (see :mod:`fastasd.backend`)."""
    density_pooling: str = _f("knn", "Local density rho_j of a reference: mean distance to its "
                              "density_k nearest other references (knn), or their geometrically "
                              "weighted mean over all of them with ratio density_gwrp_r (gwrp).",
                              choices=("knn", "gwrp"))
    """How rho_j pools the distances to the other references: ``knn`` (mean of the K nearest) or
    ``gwrp`` (geometrically weighted rank pooling over all, ratio ``density_gwrp_r``)."""
    density_k: int = _f(1, "K of the knn local density (nearest other references averaged).",
                        minimum=1)
    """K of the K-NN local density (the paper's default: 1)."""
    density_gwrp_r: float = _f(0.5, "Ratio r of the gwrp local density: the i-th nearest other "
                               "reference has weight r^(i-1) (0 = nearest only, 1 = plain mean).",
                               minimum=0.0, maximum=1.0)
    """GWRP ratio r in [0, 1]: weight ``r**(i-1)`` for the i-th nearest other reference."""
    density_form: str = _f("ratio", "Local-density score: min_j d/rho_j (ratio) or min_j d - rho_j "
                           "(difference), with d = (1 - cos)/2.", choices=("ratio", "difference"))
    """``ratio``: ``min_j d(x, r_j) / rho_j`` (paper's default); ``difference``: ``min_j d - rho_j``."""

    # ---------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _validate(f, getattr(self, f.name)))
        if self.featex_prob > 0 and (self.representation != "both" or self.combine != "concatenate"):
            raise ValueError(f"Config: featex_prob={self.featex_prob} exchanges the two branches' "
                             f"sub-embeddings; it needs representation='both' and "
                             f"combine='concatenate' (got {self.representation!r}, {self.combine!r})")
        if self.clip_seconds != "auto" and self.n_fft > self.num_samples and self.representation != "spectrum":
            raise ValueError(f"Config: clip_seconds={self.clip_seconds} gives {self.num_samples} "
                             f"samples, fewer than n_fft={self.n_fft}")

    @property
    def num_samples(self) -> int:
        """Clip length in samples: ``round(clip_seconds * sample_rate)``."""
        if self.clip_seconds == "auto":
            raise ValueError("Config: clip_seconds='auto' has no length until training resolves "
                             "it from the training clips (fastasd.train does)")
        return int(round(self.clip_seconds * self.sample_rate))

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-able dict (field name -> value)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        """Build a Config from a (possibly partial) dict; missing fields keep their defaults.

        Raises ``ValueError`` naming unknown keys or invalid values.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"Config: unknown field(s) {unknown}")
        return cls(**d)

    def replace(self, **overrides: Any) -> "Config":
        """A copy with ``overrides`` applied and validated (unknown names -> ValueError)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"Config: unknown field(s) {unknown}")
        return dataclasses.replace(self, **overrides)

    @classmethod
    def preset(cls, name: str) -> "Config":
        """A named preset: ``paper`` (defaults), ``standard`` (Table 7) or ``demo``."""
        if name not in PRESETS:
            raise ValueError(f"Config.preset: unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**PRESETS[name])

    @classmethod
    def fields_help(cls) -> list[tuple[str, type, Any, str, Optional[tuple]]]:
        """``(name, type, default, help, choices)`` for every field, in declaration order.

        ``type`` is ``int``, ``float``, ``bool`` or ``str`` (``channel`` is ``int`` with default
        ``None``); ``choices`` is a tuple of allowed strings or ``None``. Use
        :meth:`parse_value` to turn command-line text into a value.
        """
        return [(f.name, _base_type(f), f.default, f.metadata["help"], f.metadata["choices"])
                for f in dataclasses.fields(cls)]

    @classmethod
    def parse_value(cls, name: str, text: str) -> Any:
        """Parse command-line ``text`` for field ``name`` (bools: true/false/1/0/yes/no/on/off;
        ``none`` for optional fields). Raises ``ValueError`` naming the field."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if name not in fields:
            raise ValueError(f"Config: unknown field {name!r}")
        f = fields[name]
        typ = _base_type(f)
        t = text.strip()
        if _optional(f) and t.lower() in ("none", "null", ""):
            return None
        if t.lower() in f.metadata.get("special", ()):
            return t.lower()
        try:
            if typ is bool:
                low = t.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(t)
            return typ(t)
        except ValueError:
            raise ValueError(f"Config.{name}: cannot parse {text!r} as {typ.__name__}") from None


_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "Optional[int]": int}


def _base_type(f: dataclasses.Field) -> type:
    return _TYPES[str(f.type)]


def _optional(f: dataclasses.Field) -> bool:
    return str(f.type).startswith("Optional")


def _validate(f: dataclasses.Field, value: Any) -> Any:
    """Check (and lightly coerce: int -> float for float fields) one field value."""
    name, typ, meta = f.name, _base_type(f), f.metadata
    if isinstance(value, str) and value in meta.get("special", ()):
        return value
    if value is None:
        if _optional(f):
            return None
        raise ValueError(f"Config.{name}: must not be None")
    if typ is bool:
        if not isinstance(value, bool):
            raise ValueError(f"Config.{name}: expected a bool, got {value!r}")
    elif typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ValueError(f"Config.{name}: expected an int, got {value!r}")
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"Config.{name}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"Config.{name}: must be finite, got {value!r}")
    elif typ is str:
        if not isinstance(value, str):
            raise ValueError(f"Config.{name}: expected a string, got {value!r}")
    choices = meta["choices"]
    if choices is not None and value not in choices:
        raise ValueError(f"Config.{name}: {value!r} is not one of {list(choices)}")
    lo, hi = meta["min"], meta["max"]
    if lo is not None and (value < lo or (meta["exclusive_min"] and value == lo)):
        rel = ">" if meta["exclusive_min"] else ">="
        raise ValueError(f"Config.{name}: must be {rel} {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ValueError(f"Config.{name}: must be <= {hi}, got {value!r}")
    return value


# Preset name -> overrides of the dataclass defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # Table 7 "standard design choices" (as in the 3rd-ranked DCASE 2021 system): log-mel
    # spectrograms, trainable cluster centers, bias terms and a GMM backend.
    "standard": {"spectrogram_type": "logmel", "trainable_centers": True, "use_bias": True,
                 "backend": "gmm"},
    # The synthetic demo (fastasd.cli.demo.DEMO_SYNTH, 1,680 training clips of 2 s): 2-s clips, the
    # paper's 10 epochs = 270 steps at batch 64, about 2 minutes on 2 CPU cores. The measured
    # score-vs-steps curve (benchmarks/results/steps_curve_cpu.md) peaks near 250 steps and falls
    # after; BatchNorm momentum 0.1 instead of 0.01 did not help (steps_curve_cpu-bn.md).
    "demo": {"clip_seconds": 2.0},
    # The paper's training with domain-balanced scores: local-density normalization in the default
    # form of Wilkinghoff et al. (2025): all training clips as references, K = 1, ratio d / rho_j.
    # FeatEx, AdaProj and other aux_classes stay off: with this backend none gained beyond the
    # seed spread in any label regime (benchmarks/results/labels_cpu.md).
    "balanced": {"score_normalization": "local_density", "references": "clips"},
}

# Config fields that act only after the embeddings are computed (backend and thresholds).
BACKEND_FIELDS: tuple[str, ...] = (
    "backend", "n_clusters", "kmeans_on", "gmm_components", "gmm_reg", "threshold_percentile",
    "references", "score_normalization", "density_pooling", "density_k", "density_gwrp_r",
    "density_form")
