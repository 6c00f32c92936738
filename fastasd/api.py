"""The user-facing API: train a detector, score clips, save and load.

::

    import fastasd
    det = fastasd.train("dev_data", out_dir="model")     # paper configuration
    records = det.score("dev_data")                        # one dict per test clip
    det = fastasd.load("model")

A :class:`Detector` is an ensemble of ``config.ensemble_size`` embedding networks (member ``i``
trained with seed ``config.seed + i``), one fitted backend per member (per section: k-means means
of the source training embeddings + every target training embedding, or a GMM), and one decision
threshold per section. The anomaly score of a clip is the SUM of the members' scores (higher =
more anomalous); its decision is 1 where the score exceeds the ``threshold_percentile``-th
percentile of the summed scores of the section's own training clips.

A saved model folder holds only JSON and safetensors files (nothing is ever unpickled)::

    manifest.json                 format, versions, SHA-256 of every file below
    config.json                   the Config
    encoder.json                  the auxiliary classes (ClassEncoder)
    thresholds.json               decision threshold per section ("machine_type/section")
    model_<i>.safetensors         weights and BatchNorm statistics of member i
    backend_<i>.safetensors/.json numeric state / metadata of member i's backend
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

import fastasd
from fastasd._io import atomic_write_bytes, atomic_write_json
from fastasd.config import Config
from fastasd.training.backend_fit import backend_domain as _backend_domain  # noqa: F401  (studies use it)
from fastasd.training.backend_fit import fit_backends, section_key
from fastasd.training.loop import resolve_device

logger = logging.getLogger(__name__)

__all__ = ["Detector", "train", "load", "score", "section_key"]

MODEL_FORMAT = "fastasd.Detector"
MODEL_VERSION = 1
MANIFEST = "manifest.json"


def _as_config(config: Config | dict | str | None, overrides: dict) -> Config:
    if config is None:
        cfg = Config()
    elif isinstance(config, Config):
        cfg = config
    elif isinstance(config, str):
        cfg = Config.preset(config)
    elif isinstance(config, dict):
        cfg = Config.from_dict(config)
    else:
        raise TypeError(f"config must be a Config, a dict, a preset name or None, got {type(config).__name__}")
    return cfg.replace(**overrides) if overrides else cfg


class Detector:
    """A trained anomalous sound detector (ensemble of embedding networks + backends).

    Attributes:
        config: the :class:`~fastasd.config.Config` it was trained with.
        models: the ensemble members (:class:`fastasd.model.EmbeddingNet`, eval mode).
        encoder: the :class:`~fastasd.data.labels.ClassEncoder` of the auxiliary task.
        backends: one fitted backend per member (:mod:`fastasd.backend`).
        thresholds: ``{"machine_type/section": threshold}`` for the summed score.
        sample_rate, num_samples: what the networks take (Hz; samples per clip).
        device: where the networks run.
        precision: what the networks compute in when scoring: ``"auto"`` (the default: bfloat16
            on a CPU that computes it faster, :mod:`fastasd.precision`; else float32),
            ``"float32"`` or ``"bfloat16"``. Settable; every scoring call can override it.
        known_sections: ``{(machine_type, section)}`` the backends were fitted on.
        info: training metadata (clip counts, per-member history, seconds).
    """

    def __init__(self, config: Config, models: Sequence[torch.nn.Module], encoder, backends: Sequence,
                 thresholds: dict[str, float], info: dict | None = None,
                 device: str | torch.device | None = None, precision: str = "auto"):
        if len(models) != len(backends) or not models:
            raise ValueError(f"Detector: need one backend per model, got {len(models)} models and "
                             f"{len(backends)} backends")
        self.config = config
        self.models = list(models)
        self.encoder = encoder
        self.backends = list(backends)
        self.thresholds = {str(k): float(v) for k, v in thresholds.items()}
        self.info = dict(info or {})
        self.sample_rate = int(config.sample_rate)
        self.num_samples = int(config.num_samples)
        keys = [str(k) for k in self.backends[0].sections_]
        for b in self.backends[1:]:
            if [str(k) for k in b.sections_] != keys:
                raise ValueError("Detector: the members' backends were fitted on different sections")
        missing = sorted(set(keys) - set(self.thresholds))
        if missing:
            raise ValueError(f"Detector: no threshold for section(s) {missing}")
        self.known_sections = {tuple(k.split("/", 1)) for k in keys}
        self.device = torch.device("cpu")
        # The folder it was loaded from or saved to, and its files' SHA-256 (see identity()).
        self.path: str | None = None
        self._file_digests: dict[str, str] | None = None
        # (member, compute dtype) -> (weights fingerprint, inference module): see inference_model()
        self._inference_cache: dict[tuple, tuple] = {}
        self.precision = precision
        for m in self.models:
            m.eval()
        self.to(_default_device() if device is None else device)

    # ------------------------------------------------------------------ basics
    def __repr__(self) -> str:
        return (f"Detector({len(self.models)} model(s), {len(self.encoder)} classes, "
                f"{len(self.known_sections)} sections, {self.config.clip_seconds:g} s clips, "
                f"backend={self.config.backend}, device={self.device})")

    def to(self, device: str | torch.device) -> "Detector":
        """Move the networks to ``device`` (returns self)."""
        self.device = resolve_device(device)
        for m in self.models:
            m.to(self.device)
        self._inference_cache = {}  # the fused modules hold copies of the weights on the old device
        return self

    @property
    def precision(self) -> str:
        """The default precision of scoring: ``"auto"``, ``"float32"`` or ``"bfloat16"``."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        from fastasd.precision import check_precision

        self._precision = check_precision(value, "Detector.precision")

    def compute_dtype(self, precision: str | None = None, bf16: bool | None = None) -> torch.dtype:
        """The dtype the networks compute in on this detector's device: for ``precision`` if
        given, else ``bf16`` (True: bfloat16, False: float32) if given, else :attr:`precision`.
        ``auto`` is resolved by :func:`fastasd.precision.resolve_precision` (the machine), and is
        float32 for backends where bfloat16 failed or skipped the accuracy check
        (:func:`fastasd.precision.auto_allows_bfloat16`: local-density scores, the GMM)."""
        from fastasd.precision import auto_allows_bfloat16, resolve_precision

        if precision is None:
            precision = self.precision if bf16 is None else ("bfloat16" if bf16 else "float32")
        if precision == "auto" and not auto_allows_bfloat16(self.config.backend,
                                                            self.config.score_normalization):
            precision = "float32"
        return resolve_precision(precision, self.device)

    @property
    def ensemble_size(self) -> int:
        """Number of ensemble members."""
        return len(self.models)

    # ------------------------------------------------------------------ waveforms
    def _prepare(self, waveforms) -> torch.Tensor:
        x = torch.as_tensor(waveforms)
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() != 2:
            raise ValueError(f"waveforms must be [B, N], got shape {tuple(x.shape)}")
        n = self.num_samples
        if x.shape[1] != n:  # as the audio loader: crop at the end / zero-pad at the end
            x = x[:, :n] if x.shape[1] > n else torch.nn.functional.pad(x, (0, n - x.shape[1]))
        # contiguous: a cropped view is strided, and the native stft_magnitude wants contiguous rows
        return x.to(self.device, dtype=torch.float32, non_blocking=True).contiguous()

    def inference_model(self, member: int = 0, dtype: torch.dtype | None = None) -> torch.nn.Module:
        """The module that embeds for ensemble member ``member`` when scoring, computing in
        ``dtype`` (default: :meth:`compute_dtype`).

        With the native/auto backend this is the member's network fused for inference
        (:func:`fastasd.inference.fuse_for_inference`: BatchNorms folded, faster on CPU, the same
        embeddings up to float32 rounding), built on first use and cached. The cache is dropped by
        :meth:`to` and the module is rebuilt whenever the member's weights or statistics change
        (they are compared by :func:`fastasd.inference.weights_fingerprint` at every call). It is
        the plain network itself with ``FASTASD_BACKEND=reference`` (the reference system stays
        pure PyTorch end to end), with ``FASTASD_FUSED_INFERENCE=0``, and while the network is in
        training mode (the fused module only knows eval statistics). In bfloat16 the fused
        module holds its convolution weights converted once (one cached module per dtype); the
        plain network computes in float32 and :meth:`embed_waveforms` runs it under autocast.
        """
        from fastasd.inference import fused_enabled, inference_module, weights_fingerprint

        model = self.models[member]
        if model.training or not fused_enabled():
            return model
        dtype = self.compute_dtype() if dtype is None else dtype
        cache = self._inference_cache
        fingerprint = weights_fingerprint(model)
        hit = cache.get((member, dtype))
        if hit is not None and fingerprint is not None and hit[0] == fingerprint:
            return hit[1]
        module = inference_module(model, dtype)
        if fingerprint is not None:  # None: weights without version counters, never cached
            cache[(member, dtype)] = (fingerprint, module)
        return module

    @torch.inference_mode()
    def embed_waveforms(self, waveforms: torch.Tensor, *, member: int = 0, bf16: bool | None = None,
                        precision: str | None = None) -> torch.Tensor:
        """Embeddings ``[B, D]`` (float32, CPU) of waveforms ``[B, N]`` by ensemble member
        ``member`` (eval mode). ``N`` should be ``num_samples``; others are cropped/zero-padded at
        the end. ``precision`` (``"auto"``, ``"float32"``, ``"bfloat16"``; default
        :attr:`precision`), or the older ``bf16`` (True: ``"bfloat16"``, False: ``"float32"``):
        see :meth:`compute_dtype`. The frontend always computes in float32. Runs
        :meth:`inference_model` (the fused network unless the reference backend is selected)."""
        x = self._prepare(waveforms)
        dtype = self.compute_dtype(precision, bf16)
        model = self.inference_model(member, dtype)
        # the fused module computes in its own dtype; the plain network needs autocast for bf16
        autocast = getattr(model, "compute_dtype", torch.float32) != dtype
        with torch.autocast(device_type=self.device.type, dtype=dtype, enabled=autocast):
            emb = model(x)
        return emb.float().cpu()

    def _keys(self, machine_types: Sequence[str], sections: Sequence[str]) -> list[str]:
        if len(machine_types) != len(sections):
            raise ValueError(f"machine_types has {len(machine_types)} entries, sections {len(sections)}")
        keys = [section_key(m, s) for m, s in zip(machine_types, sections)]
        unknown = sorted({k for k in keys if k not in self.thresholds})
        if unknown:
            raise KeyError(f"unknown section(s) {unknown}: this detector was trained on "
                           f"{sorted(self.thresholds)}")
        return keys

    @torch.inference_mode()
    def score_waveforms(self, waveforms: torch.Tensor, machine_types: Sequence[str],
                        sections: Sequence[str], *, bf16: bool | None = None,
                        precision: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly scores and decisions of a batch of clips.

        Args:
            waveforms: ``[B, N]`` float (any device), mono at ``sample_rate``.
            machine_types, sections: per clip (sections as in the names, e.g. ``"00"``).
            precision, bf16: what the networks compute in (:meth:`compute_dtype`; default
                :attr:`precision`). The backends always compute in float32 and float64.

        Returns:
            ``(scores float64 [B], decisions int64 [B])``: the sum of the members' scores (higher
            = more anomalous) and 1 where it exceeds the section's threshold.

        Raises:
            KeyError: naming any (machine type, section) the detector was not trained on.
        """
        keys = self._keys(machine_types, sections)
        x = self._prepare(waveforms)
        if x.shape[0] != len(keys):
            raise ValueError(f"waveforms has {x.shape[0]} rows but {len(keys)} sections were given")
        total = np.zeros(len(keys), dtype=np.float64)
        for i, backend in enumerate(self.backends):
            emb = self.embed_waveforms(x, member=i, bf16=bf16, precision=precision)
            total += backend.score_samples(emb.numpy(), keys)
        thr = np.array([self.thresholds[k] for k in keys], dtype=np.float64)
        return total, (total > thr).astype(np.int64)

    # ------------------------------------------------------------------ files
    def score(self, inputs, **kwargs) -> list[dict]:
        """Score audio files, folders or DCASE roots (the test clips of a root).

        Delegates to :func:`fastasd.scoring.score_inputs` (see there for the keyword arguments:
        ``out_dir``, ``batch_size``, ``submission``, ``ground_truth`` ...). Returns one dict per
        clip: ``file``, ``file_name``, ``machine_type``, ``section``, ``domain`` and ``label``
        (``"unknown"`` when not known), ``score``, ``decision``.
        """
        from fastasd.scoring import score_inputs

        return score_inputs(self, inputs, **kwargs)

    # ------------------------------------------------------------------ backend
    def refit_backend(self, data_root, out_dir: str | os.PathLike | None = None, *,
                      preset: str | None = None, ground_truth=None, progress: bool | None = None,
                      device: str | torch.device | None = None, **backend_overrides: Any) -> "Detector":
        """A detector with these trained networks and a backend fitted anew, without retraining.

        The training clips of ``data_root`` (as for :func:`train`: one or more DCASE roots) are
        embedded once by every member, then each member's backend and the per-section decision
        thresholds are fitted on them, exactly as :func:`train` does after training. Compare
        backends on one trained model in minutes, e.g.
        ``det.refit_backend("dev_data", "model_balanced", preset="balanced")``.

        Args:
            data_root: the DCASE root(s) whose training clips fit the backend (normally those the
                networks were trained on).
            out_dir: if given, the new detector is saved there (a complete model folder).
            preset: take the backend settings (:data:`fastasd.config.BACKEND_FIELDS`) of this
                :class:`Config` preset, e.g. ``"balanced"`` or ``"paper"``.
            ground_truth, progress, device: as for :func:`train`.
            **backend_overrides: backend settings (``BACKEND_FIELDS`` only), applied last.

        Returns:
            a new :class:`Detector` (sharing this one's networks and encoder) whose config differs
            from this one's in the backend settings only.
        """
        from fastasd.config import BACKEND_FIELDS
        from fastasd.data.layout import discover

        bad = sorted(set(backend_overrides) - set(BACKEND_FIELDS))
        if bad:
            raise ValueError(f"refit_backend: {bad} are not backend settings (these change the "
                             f"networks: retrain); backend settings are {list(BACKEND_FIELDS)}")
        changes = {}
        if preset is not None:
            base = Config.preset(preset)
            changes = {k: getattr(base, k) for k in BACKEND_FIELDS}
        changes.update(backend_overrides)
        config = self.config.replace(**changes)
        clips = discover(data_root, ground_truth=ground_truth, splits=("train",))
        t0 = time.perf_counter()
        info = {k: v for k, v in self.info.items() if k != "unreadable_train_files"}
        info["refit_backend"] = {
            "preset": preset, "overrides": {k: v for k, v in changes.items() if getattr(self.config, k) != v},
            "n_train_clips": len(clips), "seconds": None}
        det = fit_detector(config, self.models, self.encoder, clips,
                           device=self.device if device is None else device, progress=progress, info=info)
        det.info["refit_backend"]["seconds"] = time.perf_counter() - t0
        if out_dir is not None:
            det.save(out_dir)
            logger.info("saved the detector with the refitted backend to %s", out_dir)
        return det

    # ------------------------------------------------------------------ persistence
    def identity(self) -> dict:
        """``{"path", "sha256"}``: the folder this detector was loaded from or saved to (``""``
        if neither) and one SHA-256 over its saved files' SHA-256s (those of the manifest; for a
        detector never saved, of the files :meth:`save` would write). A scoring run records it
        in ``run.json`` and refuses to resume with another model."""
        if self._file_digests is None:
            self._file_digests = {name: hashlib.sha256(data).hexdigest() for name, data in self._files().items()}
        listing = "".join(f"{name}\t{digest}\n" for name, digest in sorted(self._file_digests.items()))
        return {"path": self.path or "", "sha256": hashlib.sha256(listing.encode()).hexdigest()}

    def _files(self) -> dict[str, bytes]:
        """The files of a saved model (but the manifest): name -> bytes."""
        from safetensors.numpy import save as np_save
        from safetensors.torch import save as torch_save

        files: dict[str, bytes] = {
            "config.json": _json_bytes(self.config.to_dict()),
            "encoder.json": _json_bytes(self.encoder.to_dict()),
            "thresholds.json": _json_bytes(self.thresholds),
        }
        for i, (model, backend) in enumerate(zip(self.models, self.backends)):
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            files[f"model_{i}.safetensors"] = torch_save(state, metadata={"format": MODEL_FORMAT})
            arrays, meta = backend.get_state()
            files[f"backend_{i}.safetensors"] = np_save(
                {k: np.ascontiguousarray(v) for k, v in arrays.items()})
            files[f"backend_{i}.json"] = _json_bytes(meta)
        return files

    def save(self, path: str | os.PathLike) -> None:
        """Write the detector to folder ``path`` (created if needed): JSON + safetensors only,
        every file written atomically, the manifest (with SHA-256 of each file) last."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        files = self._files()
        for name, data in files.items():
            atomic_write_bytes(out / name, data)
        manifest = {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "fastasd": fastasd.__version__,
            "torch": torch.__version__,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "ensemble_size": len(self.models),
            "sample_rate": self.sample_rate,
            "num_samples": self.num_samples,
            "sections": sorted(self.thresholds),
            "info": _jsonable(self.info),
            "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        }
        atomic_write_json(out / MANIFEST, manifest)
        self.path, self._file_digests = str(out), dict(manifest["files"])

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> "Detector":
        """Read a detector written by :meth:`save` (safetensors and JSON only; no pickle).

        Raises:
            FileNotFoundError: naming the folder or the missing file.
            ValueError: naming the file that is corrupt, does not match the manifest, or holds
                a value that is not a finite number where scores are computed from it
                (weights, references, mixtures, thresholds): such a model would score every
                clip NaN.
        """
        from safetensors.numpy import load as np_load
        from safetensors.torch import load as torch_load

        from fastasd.backend import backend_from_state
        from fastasd.data.labels import ClassEncoder
        from fastasd.model import EmbeddingNet

        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: model folder not found")
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise FileNotFoundError(f"{mpath}: missing; {root} is not a saved fastasd model")
        manifest = _read_json(mpath, _file_bytes(mpath))
        if not isinstance(manifest, dict) or manifest.get("format") != MODEL_FORMAT:
            raise ValueError(f"{mpath}: not a fastasd model manifest")
        if int(manifest.get("version", 0)) > MODEL_VERSION:
            raise ValueError(f"{mpath}: model format version {manifest['version']} is newer than this "
                             f"fastasd ({MODEL_VERSION}); upgrade fastasd")
        digests: dict[str, str] = manifest.get("files", {})
        n = int(manifest.get("ensemble_size", 0))
        needed = ["config.json", "encoder.json", "thresholds.json"] + [
            f"{p}_{i}.{e}" for i in range(n) for p, e in (("model", "safetensors"),
                                                          ("backend", "safetensors"), ("backend", "json"))]

        def read(name: str) -> bytes:
            f = root / name
            if name not in digests:
                raise ValueError(f"{mpath}: lists no {name}")
            if not f.is_file():
                raise FileNotFoundError(f"{f}: missing from the saved model")
            data = _file_bytes(f)
            if hashlib.sha256(data).hexdigest() != digests[name]:
                raise ValueError(f"{f}: corrupt (its SHA-256 does not match {MANIFEST})")
            return data

        blobs = {name: read(name) for name in needed}
        try:
            config = Config.from_dict(_read_json(root / "config.json", blobs["config.json"]))
        except ValueError as e:
            raise ValueError(f"{root / 'config.json'}: {e}") from e
        try:
            encoder = ClassEncoder.from_dict(_read_json(root / "encoder.json", blobs["encoder.json"]))
        except ValueError as e:
            raise ValueError(f"{root / 'encoder.json'}: {e}") from e
        thresholds = _check_thresholds(root / "thresholds.json",
                                       _read_json(root / "thresholds.json", blobs["thresholds.json"]))
        models, backends = [], []
        for i in range(n):
            name = f"model_{i}.safetensors"
            try:
                state = torch_load(blobs[name])
                model = EmbeddingNet(config)
                model.load_state_dict(state, strict=True)
            except Exception as e:
                raise ValueError(f"{root / name}: cannot load the weights ({e})") from e
            _check_finite(root / name, state)
            models.append(model)
            name = f"backend_{i}.safetensors"
            try:
                arrays = np_load(blobs[name])
                meta = _read_json(root / f"backend_{i}.json", blobs[f"backend_{i}.json"])
                backends.append(backend_from_state(arrays, meta))
            except Exception as e:
                raise ValueError(f"{root / name}: cannot load the backend ({e})") from e
            # ref_density may hold NaN by design (a reference without neighbours keeps the plain distance)
            _check_finite(root / name, {k: v for k, v in arrays.items() if k != "ref_density"})
        det = cls(config, models, encoder, backends, thresholds, info=manifest.get("info"), device=device)
        det.path, det._file_digests = str(root), {k: str(v) for k, v in digests.items()}
        return det


# ---------------------------------------------------------------------- helpers
def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _check_thresholds(path: Path, thresholds) -> dict:
    """``thresholds.json``: an object of finite numbers by section, else ValueError naming the file."""
    if not isinstance(thresholds, dict):
        raise ValueError(f"{path}: expected an object of thresholds by section "
                         f"(\"machine_type/section\": number), got a {type(thresholds).__name__}")
    for key, value in thresholds.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise ValueError(f"{path}: the threshold of section {key!r} is not a finite number: {value!r}")
    return thresholds


def _check_finite(path: Path, arrays: dict) -> None:
    """ValueError naming ``path`` and the array when a floating-point array (numpy or torch)
    holds NaN or inf."""
    for key, value in arrays.items():
        if isinstance(value, torch.Tensor):
            bad = int((~torch.isfinite(value)).sum()) if value.is_floating_point() else 0
        else:
            a = np.asarray(value)
            bad = int((~np.isfinite(a)).sum()) if a.dtype.kind in "fc" else 0
        if bad:
            raise ValueError(f"{path}: {key} holds {bad} value(s) that are not finite numbers (NaN or inf): "
                             "every score would be NaN; the model is damaged")


def _file_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _read_json(path: Path, data: bytes):
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def fit_detector(config: Config, models: Sequence[torch.nn.Module], encoder, train_clips: Sequence,
                 device: torch.device | None = None, progress: bool | None = None,
                 info: dict | None = None) -> Detector:
    """Embed the training clips with every member (eval mode), fit one backend per member on
    them (sections ``"machine_type/section"``, domains source/target) and set the per-section
    thresholds on the summed training scores (:func:`fastasd.training.backend_fit.fit_backends`)."""
    dev = resolve_device(device, config)
    backends, thresholds, unreadable = fit_backends(config, models, train_clips, dev, progress)
    info = dict(info or {})
    if unreadable:
        info["unreadable_train_files"] = unreadable
    return Detector(config, models, encoder, backends, thresholds, info=info, device=dev)


def train(data_root, out_dir: str | os.PathLike | None = None, config: Config | dict | str | None = None,
          ground_truth=None, progress: bool | None = None, *, resume: bool = False,
          device: str | torch.device | None = None, data_parallel: bool = False,
          **overrides: Any) -> Detector | None:
    """Train a detector on the training clips of one or more DCASE roots.

    Args:
        data_root: a DCASE root (``<root>/<machine_type>/train``), a machine-type folder, or a
            list of roots (development + evaluation sets: all their training clips define the
            auxiliary classes, as in the paper).
        out_dir: if given, the detector is saved there (and per-epoch training checkpoints go to
            ``out_dir/checkpoints``).
        config: a :class:`Config`, a dict of fields, a preset name (``"paper"``, ``"standard"``,
            ``"demo"``) or None (= the paper's configuration).
        ground_truth: ground-truth folder(s) for :func:`fastasd.data.layout.discover`.
        progress: progress bars (None: only on a terminal; under torchrun on rank 0 only).
        resume: continue interrupted trainings from ``out_dir/checkpoints``.
        device: torch device (default ``config.device``; under torchrun ``cuda:LOCAL_RANK``).
        data_parallel: under torchrun, train each member data-parallel over all processes
            instead of spreading the members over them (see below).
        **overrides: Config fields, e.g. ``epochs=20, ensemble_size=5``.

    Under ``torchrun`` (``WORLD_SIZE > 1``; :mod:`fastasd.training.distributed`) every process calls this
    with the same arguments. By default rank ``r`` trains members ``r, r + W, ...`` (their
    checkpoints are written by that rank), rank 0 receives every member, fits the backends and
    saves the detector: the same detector as one process trains. With ``data_parallel`` the
    members are trained one after the other, each with ``DistributedDataParallel`` over all
    ranks (:func:`fastasd.training.train_model`). Rank 0 returns the detector; the other ranks
    return None once rank 0 has saved it.

    Returns:
        the trained :class:`Detector` (ensemble of ``config.ensemble_size`` members), or None on
        a torchrun rank other than 0.
    """
    from fastasd.training.ensemble import train_ensemble

    cfg = _as_config(config, overrides)
    if cfg.clip_seconds == "auto":  # the most common training clip length, saved with the model
        from fastasd.training.datacheck import resolve_clip_seconds

        cfg = resolve_clip_seconds(cfg, data_root, ground_truth)
    t0 = time.perf_counter()

    def finish(models, encoder, clips, histories, dev, progress):
        return _fit_and_save(cfg, models, encoder, clips, dev, progress, histories, out_dir, t0)

    return train_ensemble(data_root, cfg, finish, out_dir=out_dir, ground_truth=ground_truth,
                          progress=progress, resume=resume, device=device, data_parallel=data_parallel)


def _fit_and_save(cfg: Config, models, encoder, clips, dev, progress, histories, out_dir, t0) -> Detector:
    # the per-step losses stay in the checkpoints; the manifest keeps the per-epoch summaries
    histories = [[{k: v for k, v in h.items() if k != "losses"} for h in hist] for hist in histories]
    info = {"n_train_clips": len(clips), "n_classes": len(encoder), "history": histories,
            "train_seconds": None}
    det = fit_detector(cfg, models, encoder, clips, device=dev, progress=progress, info=info)
    det.info["train_seconds"] = time.perf_counter() - t0
    if out_dir is not None:
        det.save(out_dir)
        logger.info("saved the detector to %s", out_dir)
    return det


def load(path: str | os.PathLike, device: str | torch.device | None = None) -> Detector:
    """Load a detector saved by :meth:`Detector.save` (or ``fastasd train --out``)."""
    return Detector.load(path, device=device)


def score(model: Detector | str | os.PathLike, inputs, **kwargs) -> list[dict]:
    """Score ``inputs`` (files, folders, DCASE roots) with a :class:`Detector` or a saved model
    folder; see :meth:`Detector.score`."""
    det = model if isinstance(model, Detector) else load(model)
    return det.score(inputs, **kwargs)
