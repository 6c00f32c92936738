"""Deploy a trained detector without PyTorch: one ONNX graph, scored with onnxruntime.

Command line (:mod:`fastasd.cli.export`)::

    fastasd export MODEL_DIR --out detector.onnx [--opset N] [--no-verify]
    fastasd score --onnx detector.onnx INPUT... --out DIR      # the same job as `fastasd score MODEL`

Python: :func:`export_onnx` (a :class:`~fastasd.api.Detector` or a saved model folder -> file)
and :func:`load_onnx` (file -> :class:`OnnxDetector`, which :func:`fastasd.scoring.score_inputs`
takes in place of a Detector).

The graph (standard ONNX operators only, opset 18 by default, never fastasd's custom operators),
from waveform to anomaly score:

* inputs ``waveform`` float32 ``[batch, samples]`` (mono at the model's sample rate; any batch
  and any length >= 1: like :class:`~fastasd.api.Detector` and the audio loader the graph crops
  the end of a longer clip and zero-pads a shorter one to the model's ``num_samples``) and
  ``section`` int64 ``[batch]``: each clip's index into the metadata's ``sections``;
* the frontend of every ensemble member as :mod:`fastasd.reference` defines it (STFT magnitude
  with temporal mean normalization, or log-mel, and the full-clip magnitude spectrum; their DFTs
  as matrix products, see :class:`_MatmulRDFT`, because onnxruntime's ``DFT`` operator is slow
  for lengths that are not powers of two), its embedding network (BatchNorm in eval mode) and its
  backend:

  - cosine: ``min over the section's references j of ref_scale[j] * (1 - cos(x, ref_j)) +
    ref_shift[j]`` (``ref_scale``/``ref_shift`` are the backend's ``ref_scale_``/``ref_shift_``
    where it has them, else ones and zeros: the paper's minimum cosine distance), float32;
  - gmm: the negative log-likelihood of the section's full-covariance mixture on the
    length-normalized embedding, in float64 (as scikit-learn computes it);

* outputs ``score`` float64 ``[batch]`` (the SUM of the members' scores, higher = more
  anomalous, as :meth:`~fastasd.api.Detector.score_waveforms`) and ``decision`` int64
  ``[batch]`` (1 where the score exceeds the section's threshold).

The per-section thresholds are in the graph (for ``decision``) and in the metadata: the model's
``metadata_props`` entry ``"fastasd"`` is JSON with ``format`` (``"fastasd.onnx"``),
``version``, ``sections`` (``"machine_type/section"`` in index order), ``thresholds`` (same order),
``sample_rate``, ``num_samples``, ``channel``, ``ensemble_size``, ``backends``, ``opset``, the
model's ``config`` and the fastasd/torch versions. A device with only onnxruntime and numpy reads
it with ``json.loads(session.get_modelmeta().custom_metadata_map["fastasd"])`` (README).

The export traces a copy of each network whose frontend is :class:`_ExportFrontend` (pure
PyTorch), needs the ``onnx`` extra (``onnx``, ``onnxscript`` for ``torch.onnx.export``,
``onnxruntime``) and, unless ``verify=False``, checks the graph with onnxruntime against
:meth:`~fastasd.api.Detector.score_waveforms` on clips of three lengths before it writes the file
(atomically). What cannot be exported (a backend other than the two above, a GMM that is not
full-covariance, a network other than :class:`~fastasd.model.EmbeddingNet`) raises
``ValueError`` saying why.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from fastasd.frontend import Frontend
from fastasd.onnx_detector import METADATA_KEY, ONNX_FORMAT, ONNX_VERSION, OnnxDetector, load_onnx

logger = logging.getLogger(__name__)

__all__ = ["export_onnx", "load_onnx", "OnnxDetector", "ONNX_FORMAT", "ONNX_VERSION", "DEFAULT_OPSET",
           "VERIFY_RTOL"]

DEFAULT_OPSET = 18
# Export-time check (and the tests): ONNX scores match Detector.score_waveforms to this relative
# tolerance (of the largest |score| of the batch; float32 networks computed in another order).
VERIFY_RTOL = 1e-4
_MISSING_EXTRA = "ONNX export needs the onnx extra: pip install 'fastasd[onnx]' (onnx, onnxscript, onnxruntime)"


# --------------------------------------------------------------------------- the graph's modules


def _cosine_module(backend, member: int):
    """The cosine backend as a module ``(emb [B, D] float32, section [B]) -> float64 [B]``."""
    refs = np.asarray(backend.refs_, dtype=np.float32)
    offsets = np.asarray(backend.ref_offsets_, dtype=np.int64)
    m = refs.shape[0]
    scale = getattr(backend, "ref_scale_", None)
    shift = getattr(backend, "ref_shift_", None)
    scale = np.ones(m, np.float32) if scale is None else np.asarray(scale, dtype=np.float32)
    shift = np.zeros(m, np.float32) if shift is None else np.asarray(shift, dtype=np.float32)
    if scale.shape != (m,) or shift.shape != (m,):
        raise ValueError(f"member {member}: cosine backend has {m} references but ref_scale_ "
                         f"{scale.shape} / ref_shift_ {shift.shape}")
    if len(offsets) != len(backend.sections_) + 1 or offsets[0] != 0 or offsets[-1] != m \
            or np.any(np.diff(offsets) < 1):
        raise ValueError(f"member {member}: cosine backend's ref_offsets_ {offsets.tolist()} do not "
                         f"split its {m} references into {len(backend.sections_)} non-empty sections")
    # additive mask [G, M]: 0 for the section's own references, +inf for the others
    mask = np.full((len(offsets) - 1, m), np.inf, dtype=np.float32)
    for g in range(len(offsets) - 1):
        mask[g, offsets[g]:offsets[g + 1]] = 0.0
    return _CosineScore(torch.from_numpy(refs), torch.from_numpy(scale), torch.from_numpy(shift),
                        torch.from_numpy(mask))


def _gmm_module(backend, member: int):
    """The GMM backend as a module ``(emb [B, D], section [B]) -> float64 [B]`` (NLL, float64)."""
    chols, mus, consts, owner = [], [], [], []
    for g, gmm in enumerate(backend.gmms_):
        if getattr(gmm, "covariance_type", "full") != "full":
            raise ValueError(f"member {member}: the GMM of section {backend.sections_[g]!r} has "
                             f"covariance_type={gmm.covariance_type!r}; only 'full' is exported")
        w = np.asarray(gmm.weights_, dtype=np.float64)
        mu = np.asarray(gmm.means_, dtype=np.float64)                # [K, D]
        p = np.asarray(gmm.precisions_cholesky_, dtype=np.float64)   # [K, D, D]
        d = mu.shape[1]
        # scikit-learn's _estimate_log_gaussian_prob: y = x P - mu P, log N = -(D log 2pi + |y|^2) / 2
        # + sum log diag P; plus the log weight
        consts.append(np.log(w) - 0.5 * d * math.log(2 * math.pi)
                      + np.log(np.diagonal(p, axis1=1, axis2=2)).sum(axis=1))
        mus.append(np.einsum("kd,kde->ke", mu, p))
        chols.append(p)
        owner.extend([g] * len(w))
    p = np.concatenate(chols)                                         # [Ktot, D, D]
    ktot, d = p.shape[0], p.shape[1]
    owner = np.asarray(owner)
    mask = np.where(owner[None, :] == np.arange(len(backend.gmms_))[:, None], 0.0, -np.inf)  # [G, Ktot]
    return _GMMScore(torch.from_numpy(np.ascontiguousarray(p.transpose(1, 0, 2).reshape(d, ktot * d))),
                     torch.from_numpy(np.concatenate(mus)), torch.from_numpy(np.concatenate(consts)),
                     torch.from_numpy(mask), ktot, d)


def _backend_module(backend, member: int):
    from fastasd.backend import CosineBackend, GMMBackend

    if isinstance(backend, CosineBackend):
        return _cosine_module(backend, member)
    if isinstance(backend, GMMBackend):
        return _gmm_module(backend, member)
    raise ValueError(f"member {member}: cannot export a {type(backend).__name__} backend (the ONNX "
                     f"graph knows CosineBackend and GMMBackend)")


# protobuf caps an ONNX file at 2 GiB; leave room for the graph itself
_MAX_GRAPH_BYTES = int(1.9e9)
# Above this many multiply-adds per output bin (n1 + n2 of the factorization), a DFT is left to
# the DFT operator (a length with a large prime factor); see _MatmulRDFT.
_MAX_MATMUL_DFT = 8192


class _MatmulRDFT(torch.nn.Module):
    """``|rfft(x)|[..., :nbins]`` of real ``x [..., L]`` as matrix products (the four-step FFT).

    ``L = n1 * n2`` with ``n1`` the divisor of ``L`` nearest below ``sqrt(L)``: a real DFT of
    length ``n1`` (one MatMul), twiddle factors, a complex DFT of length ``n2`` restricted to the
    bins needed (one MatMul), magnitude, reorder. About ``2 L (n1 + n2)`` multiply-adds per row:
    onnxruntime's DFT operator takes 141 ms for one 160,000-sample clip (its lengths that are not a
    power of two are slow), this 4 ms. Float32 error below 1e-6 of the largest bin (tests)."""

    def __init__(self, length: int, nbins: int):
        super().__init__()
        n1 = max(d for d in range(1, math.isqrt(length) + 1) if length % d == 0)
        n2 = length // n1
        self.length, self.nbins = length, nbins
        self.use_fft = n1 + n2 > _MAX_MATMUL_DFT
        if self.use_fft:
            return
        k2 = -(-nbins // n1)
        self.n1, self.n2, self.k2 = n1, n2, k2
        ang = 2 * np.pi * np.outer(np.arange(n1), np.arange(n1)) / n1
        inner = np.concatenate([np.cos(ang), -np.sin(ang)])                   # [2 n1, n1]
        tw = 2 * np.pi * np.outer(np.arange(n1), np.arange(n2)) / length      # [n1, n2]
        e = 2 * np.pi * np.outer(np.arange(n2), np.arange(k2)) / n2          # [n2, k2]
        ec, es = np.cos(e), -np.sin(e)
        for name, v in (("inner", inner), ("tw_re", np.cos(tw)), ("tw_im", -np.sin(tw)),
                        ("outer", np.block([[ec, es], [-es, ec]]))):
            self.register_buffer(name, torch.from_numpy(v.astype(np.float32)))

    def forward(self, x):
        if self.use_fft:
            return torch.fft.rfft(x, dim=-1).abs()[..., : self.nbins]
        lead = x.shape[:-1]
        x = x.reshape(-1, self.n1, self.n2)          # x[r, a, b] = x[r, n2 * a + b]
        y = self.inner @ x                           # DFT over a: [r, 2 n1 (k1: re, im), n2 (b)]
        yr, yi = y[:, : self.n1], y[:, self.n1:]
        zr = yr * self.tw_re - yi * self.tw_im       # times exp(-2 pi i k1 b / L)
        zi = yr * self.tw_im + yi * self.tw_re
        out = torch.cat([zr, zi], dim=2) @ self.outer  # DFT over b: [r, n1 (k1), 2 k2 (re, im)]
        mag = torch.sqrt(out[..., : self.k2] ** 2 + out[..., self.k2:] ** 2)
        mag = mag.transpose(1, 2).reshape(-1, self.k2 * self.n1)[:, : self.nbins]  # bin k1 + n1 k2
        return mag.reshape(*lead, self.nbins)


class _ExportFrontend(Frontend):
    """The :class:`~fastasd.frontend.Frontend` with its two spectra as standard ONNX operators:
    the STFT of :func:`fastasd.reference.stft_magnitude` (frames times the periodic Hann window,
    magnitude, temporal mean subtracted) and the full-clip spectrum, their DFTs as
    :class:`_MatmulRDFT`."""

    def __init__(self, config, num_samples: int):
        super().__init__(config)
        if self.use_spectrogram:
            self.register_buffer("window", torch.hann_window(config.n_fft, periodic=True, dtype=torch.float32))
            self.frame_dft = _MatmulRDFT(config.n_fft, config.n_fft // 2 + 1)
        if self.use_spectrum:
            self.clip_dft = _MatmulRDFT(num_samples, num_samples // 2)

    def stft_magnitude(self, w, normalize: bool):
        mag = self.frame_dft(w.unfold(1, self.config.n_fft, self.config.hop) * self.window)
        return mag - mag.mean(dim=1, keepdim=True) if normalize else mag

    def full_spectrum(self, w):
        return self.clip_dft(w)


class _CosineScore(torch.nn.Module):
    def __init__(self, refs, scale, shift, mask):
        super().__init__()
        self.register_buffer("refs_t", refs.t().contiguous())
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)
        self.register_buffer("mask", mask)

    def forward(self, emb, section):
        x = emb.float()
        x = x / torch.clamp(torch.linalg.vector_norm(x, dim=1, keepdim=True), min=1e-12)
        d = self.scale * (1.0 - x @ self.refs_t) + self.shift + self.mask[section]
        return d.amin(dim=1).to(torch.float64)


class _GMMScore(torch.nn.Module):
    def __init__(self, chol, mu_chol, const, mask, ktot, dim):
        super().__init__()
        self.register_buffer("chol", chol)
        self.register_buffer("mu_chol", mu_chol)
        self.register_buffer("const", const)
        self.register_buffer("mask", mask)
        self.ktot, self.dim = ktot, dim

    def forward(self, emb, section):
        x = emb.to(torch.float64)
        x = x / torch.clamp(torch.linalg.vector_norm(x, dim=1, keepdim=True), min=1e-12)
        y = (x @ self.chol).reshape(-1, self.ktot, self.dim) - self.mu_chol
        logp = self.const - 0.5 * (y * y).sum(dim=2) + self.mask[section]
        top = logp.amax(dim=1, keepdim=True)
        return -(top[:, 0] + torch.log(torch.exp(logp - top).sum(dim=1)))


class _DetectorGraph(torch.nn.Module):
    """``(waveform [B, L] float32, section [B] int64) -> (score float64 [B], decision int64 [B])``."""

    def __init__(self, models, scorers, thresholds, num_samples):
        super().__init__()
        self.models = torch.nn.ModuleList(models)
        self.scorers = torch.nn.ModuleList(scorers)
        self.register_buffer("thresholds", thresholds)
        self.num_samples = num_samples

    def forward(self, waveform, section):
        n = self.num_samples
        # crop the end / zero-pad the end to n samples, for any length, without a branch
        x = torch.cat([waveform, waveform.new_zeros((waveform.shape[0], n))], dim=1)[:, :n]
        total = None
        for model, scorer in zip(self.models, self.scorers):
            s = scorer(model(x), section)
            total = s if total is None else total + s
        return total, (total > self.thresholds[section]).to(torch.int64)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's progress lines (stdout) go to stderr; its warnings about what the graph
    does not use (torchvision, axis names, deprecations inside torch) are silenced."""
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        onnx_log.setLevel(level)


def _graph_module(detector):
    """The detector as one torch module, and the section keys in index order."""
    from fastasd.model import EmbeddingNet

    for i, model in enumerate(detector.models):
        if type(model) is not EmbeddingNet:
            raise ValueError(f"member {i}: cannot export a {type(model).__name__} network (only "
                             f"fastasd.model.EmbeddingNet: its forward is what the graph traces)")
    sections = [str(k) for k in detector.backends[0].sections_]
    scorers = [_backend_module(b, i) for i, b in enumerate(detector.backends)]
    models = []
    for m in detector.models:
        m = copy.deepcopy(m).cpu().float().eval()
        m.frontend = _ExportFrontend(m.config, m.num_samples)
        models.append(m)
    thresholds = torch.tensor([detector.thresholds[k] for k in sections], dtype=torch.float64)
    graph = _DetectorGraph(models, scorers, thresholds, int(detector.num_samples)).eval()
    size = sum(t.numel() * t.element_size() for t in list(graph.parameters()) + list(graph.buffers()))
    if size > _MAX_GRAPH_BYTES:
        backend_size = sum(t.numel() * t.element_size() for sc in scorers for t in sc.buffers())
        raise ValueError(f"the graph would hold {size / 1e9:.2f} GB of constants ({backend_size / 1e9:.2f} GB in "
                         f"the backends: a GMM holds components x D x D float64 per section), more than "
                         f"one ONNX file can hold ({_MAX_GRAPH_BYTES / 1e9:.1f} GB)")
    return graph, sections


def _metadata(detector, sections: list[str], opset: int) -> dict:
    import fastasd

    return {
        "format": ONNX_FORMAT,
        "version": ONNX_VERSION,
        "sections": sections,
        "thresholds": [float(detector.thresholds[k]) for k in sections],
        "sample_rate": int(detector.sample_rate),
        "num_samples": int(detector.num_samples),
        "channel": detector.config.channel,
        "ensemble_size": len(detector.models),
        "backends": [type(b).__name__ for b in detector.backends],
        "opset": int(opset),
        "inputs": {"waveform": "float32 [batch, samples]", "section": "int64 [batch], index into sections"},
        "outputs": {"score": "float64 [batch], higher = more anomalous",
                    "decision": "int64 [batch], score > thresholds[section]"},
        "config": detector.config.to_dict(),
        "fastasd": fastasd.__version__,
        "torch": torch.__version__,
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{_MISSING_EXTRA}; {e}") from e


def export_onnx(detector, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET, verify: bool = True,
                overwrite: bool = False) -> Path:
    """Write ``detector`` (a :class:`~fastasd.api.Detector` or a saved model folder) to ``path``
    as one ONNX graph from waveform and section index to anomaly score and decision (see the
    module docstring for the graph's inputs, outputs and metadata).

    Args:
        detector: the detector, or the folder ``fastasd train --out`` wrote.
        path: the ``.onnx`` file to write (atomically; its folder is created).
        opset: the ONNX opset (>= 17, the first with ``DFT``/``STFT``).
        verify: score a few clips of several lengths with onnxruntime and with
            :meth:`~fastasd.api.Detector.score_waveforms`, and refuse to write the file unless
            the scores agree within :data:`VERIFY_RTOL`.
        overwrite: replace an existing file at ``path`` (never one of the model's own files).

    Returns:
        the path written.

    Raises:
        ValueError: what the graph cannot hold (named member and reason), or a failed check.
        FileExistsError: ``path`` exists and not ``overwrite``, or is a file of the model.
        IsADirectoryError: ``path`` is a folder.
        ImportError: without the ``onnx`` extra.
    """
    from fastasd._io import atomic_write_bytes
    from fastasd.api import Detector, load

    if opset < 17:
        raise ValueError(f"export_onnx: opset {opset} has no DFT operator; use opset >= 17")
    model_dir = getattr(detector, "path", None) if isinstance(detector, Detector) else detector
    _check_out_path(Path(path), model_dir, overwrite=overwrite)  # before the minutes of an export
    det = detector if isinstance(detector, Detector) else load(detector, device="cpu")
    onnx = _require("onnx")
    _require("onnxscript")
    graph, sections = _graph_module(det)
    batch = torch.export.Dim("batch", min=1)
    length = torch.export.Dim("samples", min=1)
    example = (torch.zeros(2, det.num_samples), torch.zeros(2, dtype=torch.int64))
    try:
        with torch.inference_mode(False), torch.no_grad(), _quiet_exporter():
            program = torch.onnx.export(
                graph, example, dynamo=True, opset_version=opset, input_names=["waveform", "section"],
                output_names=["score", "decision"],
                dynamic_shapes={"waveform": {0: batch, 1: length}, "section": {0: batch}},
                optimize=True, verbose=False)
    except Exception as e:
        raise ValueError(f"export_onnx: torch.onnx.export failed for this detector ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from e
    proto = program.model_proto
    meta = _metadata(det, sections, opset)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    proto.producer_name, proto.producer_version = "fastasd", meta["fastasd"]
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    if verify:
        _verify(det, data, sections)
    out = Path(path)
    atomic_write_bytes(out, data)
    logger.info("exported %s (%d member(s), %d sections, %.1f MB) to %s", type(det).__name__,
                len(det.models), len(sections), len(data) / 1e6, out)
    return out


def _check_out_path(out: Path, model_dir, *, overwrite: bool) -> None:
    """Where the ONNX file may go: not a folder, never a file of the model (its manifest, or a
    file the manifest lists: the model would no longer load), another existing file only with
    ``overwrite``."""
    from fastasd.api import MANIFEST

    if out.is_dir():
        raise IsADirectoryError(f"{out} is a folder: give the file to write, e.g. {out / 'detector.onnx'}")
    if not os.path.lexists(out):
        return
    if model_dir is not None and Path(model_dir).is_dir():
        root = Path(model_dir)
        own = {MANIFEST}
        try:
            own |= set(json.loads((root / MANIFEST).read_text(encoding="utf-8")).get("files", {}))
        except (OSError, ValueError, AttributeError):
            pass  # an unreadable manifest: its name alone is protected
        if any(os.path.realpath(root / name) == os.path.realpath(out) for name in own):
            raise FileExistsError(f"{out} is a file of the model {root}: writing the export there would destroy "
                                  "the model; choose another path")
    if not overwrite:
        raise FileExistsError(f"{out} exists: pass overwrite=True (--overwrite) to replace it")


def _verify(det, data: bytes, sections: list[str]) -> None:
    """Score clips of several lengths both ways; raise if they differ beyond :data:`VERIFY_RTOL`."""
    onnx_det = OnnxDetector(data)
    rng = np.random.default_rng(0)
    keys = [s.split("/", 1) for s in sections]
    n = det.num_samples
    for length, b in ((n, 3), (n // 2 + 1, 2), (n + 37, 1)):
        x = (0.1 * rng.standard_normal((b, length))).astype(np.float32)
        picks = [keys[i % len(keys)] for i in range(b)]
        mts, secs = [k[0] for k in picks], [k[1] for k in picks]
        # the graph computes in float32: compare with the detector's float32 scores
        want, _ = det.score_waveforms(torch.from_numpy(x), mts, secs, precision="float32")
        got, _ = onnx_det.score_waveforms(x, mts, secs)
        err = float(np.max(np.abs(got - want)))
        bound = VERIFY_RTOL * max(1.0, float(np.max(np.abs(want))))
        if not err <= bound:
            raise ValueError(f"export_onnx: the ONNX graph's scores differ from the detector's by {err:.3g} "
                             f"(allowed {bound:.3g}) on {b} clip(s) of {length} samples; not written")
