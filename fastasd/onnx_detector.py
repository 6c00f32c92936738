"""Scoring with a detector exported by :func:`fastasd.export.export_onnx`, on onnxruntime
(:class:`OnnxDetector`, :func:`load_onnx`); the graph and its metadata are described in
:mod:`fastasd.export`. Needs onnxruntime only: neither torch's exporter nor a saved model.
"""
from __future__ import annotations

import json
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
        ValueError: naming the file when it is not a fastasd ONNX export.
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
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(model if isinstance(model, bytes) else self.path, opts,
                                                providers=["CPUExecutionProvider"])
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
        self.sections = [str(s) for s in meta["sections"]]
        self.thresholds = dict(zip(self.sections, (float(t) for t in meta["thresholds"])))
        self._index = {k: i for i, k in enumerate(self.sections)}
        self.known_sections = {tuple(k.split("/", 1)) for k in self.sections}
        self.sample_rate = int(meta["sample_rate"])
        self.num_samples = int(meta["num_samples"])
        self.config = types.SimpleNamespace(channel=meta.get("channel"))
        self.device = "cpu"

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
