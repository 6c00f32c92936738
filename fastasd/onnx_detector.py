"""Scoring with a detector exported by :func:`fastasd.export.export_onnx`, on onnxruntime
(:class:`OnnxDetector`, :func:`load_onnx`); the graph and its metadata are described in
:mod:`fastasd.export`. Needs onnxruntime only: neither torch's exporter nor a saved model.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import types
from typing import Sequence

import numpy as np

__all__ = ["OnnxDetector", "load_onnx", "ONNX_FORMAT", "ONNX_VERSION", "METADATA_KEY"]

ONNX_FORMAT = "fastasd.onnx"
ONNX_VERSION = 1
METADATA_KEY = "fastasd"


class OnnxDetector:
    """A detector exported by :func:`fastasd.export.export_onnx`, run by onnxruntime (CPU).

    It has what :func:`fastasd.scoring.score_inputs` needs of a detector (``sample_rate``,
    ``num_samples``, ``config.channel``, ``device``, ``known_sections``, ``score_waveforms``),
    so ``fastasd score --onnx`` is the same job as ``fastasd score MODEL``.

    Args:
        model: the ``.onnx`` file (or its bytes).
        threads: onnxruntime's intra-op threads (None: onnxruntime's default).

    Attributes:
        metadata: the ``"fastasd"`` metadata (see the module docstring).
        sections: ``"machine_type/section"`` keys in index order; ``thresholds``: by key.

    Raises:
        ValueError: naming the file when it is not a fastasd ONNX export, or when its metadata
            and its graph disagree (:meth:`_check_metadata`: an edited file).
        ImportError: without onnxruntime.
    """

    def __init__(self, model: str | os.PathLike | bytes, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError(f"scoring an ONNX model needs onnxruntime: pip install onnxruntime ({e})") from e
        self.path = "<bytes>" if isinstance(model, bytes) else os.fspath(model)
        if not isinstance(model, bytes) and not os.path.isfile(model):
            raise FileNotFoundError(f"{self.path}: ONNX model not found")
        if not isinstance(model, bytes):
            with open(self.path, "rb") as f:
                model = f.read()  # read once: the session and the digest see the same bytes
        self.sha256 = hashlib.sha256(model).hexdigest()
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ValueError(f"{self.path}: onnxruntime cannot load it ({str(e).strip()[:300]})") from e
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        try:
            meta = json.loads(raw) if raw else None
        except ValueError:
            meta = None
        if not isinstance(meta, dict) or meta.get("format") != ONNX_FORMAT:
            raise ValueError(f"{self.path}: not a fastasd ONNX export (no '{METADATA_KEY}' metadata; "
                             "write one with `fastasd export MODEL_DIR --out FILE.onnx`)")
        if int(meta.get("version", 0)) > ONNX_VERSION:
            raise ValueError(f"{self.path}: fastasd ONNX format version {meta['version']} is newer than this "
                             f"fastasd ({ONNX_VERSION}); upgrade fastasd")
        self.metadata = meta
        try:
            self.sections = [str(s) for s in meta["sections"]]
            thresholds = [float(t) for t in meta["thresholds"]]
            self.sample_rate = int(meta["sample_rate"])
            self.num_samples = int(meta["num_samples"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{self.path}: the fastasd metadata is incomplete or malformed ({type(e).__name__}: "
                             f"{e}); export the model again") from None
        if len(thresholds) != len(self.sections) or not self.sections or self.sample_rate <= 0 or self.num_samples < 1:
            raise ValueError(f"{self.path}: the fastasd metadata lists {len(self.sections)} sections, "
                             f"{len(thresholds)} thresholds, {self.sample_rate} Hz and {self.num_samples} samples")
        self.thresholds = dict(zip(self.sections, thresholds))
        self._index = {k: i for i, k in enumerate(self.sections)}
        self.known_sections = {tuple(k.split("/", 1)) for k in self.sections}
        self.config = types.SimpleNamespace(channel=meta.get("channel"))
        self.device = "cpu"
        self._check_metadata()

    def identity(self) -> dict:
        """``{"path", "sha256"}`` of the ONNX file (see :meth:`fastasd.api.Detector.identity`)."""
        return {"path": self.path, "sha256": self.sha256}

    def _check_metadata(self) -> None:
        """The metadata must agree with itself and with the graph (ValueError naming the file):
        finite thresholds, one per section; ``num_samples = round(clip_seconds * sample_rate)``
        of the metadata's config, with the same rate; and the graph must read exactly that many
        samples: a clip's samples beyond ``num_samples`` must not change its score, its last 5 %
        must, and the graph's decisions must follow the metadata's thresholds."""
        meta, where = self.metadata, f"{self.path}: the fastasd metadata"
        bad = [k for k, t in self.thresholds.items() if not math.isfinite(t)]
        if bad:
            raise ValueError(f"{where} has non-finite thresholds for {bad}: the file is damaged")
        cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
        try:
            rate, seconds = int(cfg["sample_rate"]), float(cfg["clip_seconds"])
        except (KeyError, TypeError, ValueError):
            rate = seconds = None
        if rate is not None and (rate != self.sample_rate or int(round(seconds * rate)) != self.num_samples):
            raise ValueError(f"{where} says {self.sample_rate} Hz and {self.num_samples} samples, its config "
                             f"{rate} Hz and {seconds:g} s: the file was edited; export the model again")
        n = self.num_samples
        rng = np.random.default_rng(0)
        clip = (0.1 * rng.standard_normal(n)).astype(np.float32)
        tail = clip.copy()
        tail[n - max(1, n // 20):] = rng.standard_normal(max(1, n // 20))  # loud
        longer = np.concatenate([clip, rng.standard_normal(max(1, n // 20)).astype(np.float32)])
        section = self.sections[0].split("/", 1)
        (s_clip, s_tail), decisions = self.score_waveforms(np.stack([clip, tail]), [section[0]] * 2, [section[1]] * 2)
        (s_longer,), _ = self.score_waveforms(longer[None], [section[0]], [section[1]])
        tol = 1e-4 * max(1.0, abs(s_clip))
        if abs(s_longer - s_clip) > tol:
            raise ValueError(f"{where} says {n} samples per clip but the graph reads more: the file was edited; "
                             "export the model again")
        if not abs(s_tail - s_clip) > tol:
            raise ValueError(f"{where} says {n} samples per clip but the graph ignores the last of them: the file "
                             "was edited; export the model again")
        thr = self.thresholds[self.sections[0]]
        for score, decision in zip((s_clip, s_tail), decisions):
            if abs(score - thr) > 1e-6 * max(1.0, abs(thr)) and int(decision) != int(score > thr):
                raise ValueError(f"{where}'s threshold of {self.sections[0]} ({thr}) is not the graph's: the file "
                                 "was edited; export the model again")

    def __repr__(self) -> str:
        return (f"OnnxDetector({self.path!r}, {self.metadata.get('ensemble_size')} model(s), "
                f"{len(self.sections)} sections, backends={self.metadata.get('backends')})")

    def score_waveforms(self, waveforms, machine_types: Sequence[str], sections: Sequence[str], *,
                        bf16: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(scores float64 [B], decisions int64 [B])`` of waveforms ``[B, N]`` (numpy or torch,
        any N; cropped/zero-padded by the graph), as :meth:`fastasd.api.Detector.score_waveforms`.

        Raises:
            KeyError: naming any (machine type, section) the model does not know.
            ValueError: ``bf16`` (the graph is float32), or mismatched lengths.
        """
        if bf16:
            raise ValueError("bf16 is not available with an ONNX model (the graph computes in float32)")
        if len(machine_types) != len(sections):
            raise ValueError(f"machine_types has {len(machine_types)} entries, sections {len(sections)}")
        keys = [f"{m}/{s}" for m, s in zip(machine_types, sections)]
        unknown = sorted({k for k in keys if k not in self._index})
        if unknown:
            raise KeyError(f"unknown section(s) {unknown}: this model was trained on {self.sections}")
        x = waveforms.numpy() if hasattr(waveforms, "numpy") and not isinstance(waveforms, np.ndarray) else waveforms
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[0] != len(keys):
            raise ValueError(f"waveforms must be [{len(keys)}, N], got shape {x.shape}")
        if x.shape[0] == 0:
            return np.zeros(0, np.float64), np.zeros(0, np.int64)
        idx = np.array([self._index[k] for k in keys], dtype=np.int64)
        score, decision = self.session.run(["score", "decision"],
                                           {"waveform": np.ascontiguousarray(x), "section": idx})
        return np.asarray(score, dtype=np.float64), np.asarray(decision, dtype=np.int64)


def load_onnx(path: str | os.PathLike, threads: int | None = None) -> OnnxDetector:
    """Open an ONNX file written by :func:`fastasd.export.export_onnx` for scoring (see :class:`OnnxDetector`)."""
    return OnnxDetector(path, threads=threads)
