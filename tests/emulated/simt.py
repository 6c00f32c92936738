"""Build and call the SIMT-emulated CUDA kernels (csrc/cuda/*.cu run on the CPU).

The device code of every ``csrc/cuda/*.cu`` file is compiled with g++ against the test-only
emulator ``csrc/tests/simt_cpu.h`` together with its emulated launcher
(``csrc/tests/emulated/*_emu.cpp``, which calls the same launch-geometry functions as the CUDA
launcher) into one shared library, loaded with ctypes. The build is cached in
``build/emulated/<hash of sources and flags>/``.

Environment:
- ``FASTASD_EMULATED_CUDA_DIR``: take the ``.cu`` files from this folder instead of
  ``csrc/cuda`` (to check that broken copies of the kernels fail the tests);
- ``FASTASD_EMULATED_SANITIZE=thread``: a ThreadSanitizer build. The process must have
  ``libtsan`` loaded first: ``LD_PRELOAD=$(g++ -print-file-name=libtsan.so)``.
"""
from __future__ import annotations

import ctypes
import fcntl
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
DRIVERS = CSRC / "tests" / "emulated"
OPS = ("min_cosine_distance", "stft_magnitude", "subcluster_adacos")
OPS_TESTS = ROOT / "tests" / "ops"


def load_ops_module(name: str):
    """tests/ops/<name>.py as a module, so the emulated tests use the CPU operator tests' cases,
    inputs, tolerances and checks instead of copies (pytest collects that file on its own)."""
    key = f"_fastasd_ops_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, OPS_TESTS / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        spec.loader.exec_module(mod)
    return sys.modules[key]




class EmuDevice(ctypes.Structure):
    """The emulated GPU's properties (what the CUDA launchers query)."""

    _fields_ = [("sm_count", ctypes.c_int), ("smem_optin", ctypes.c_int), ("cc_major", ctypes.c_int),
                ("cluster", ctypes.c_int)]


# H100 SXM (sm_90: thread-block clusters) and A100 (sm_80: no clusters): 132 / 108 SMs, 227 / 163 KiB
# of opt-in shared memory per block.
H100 = EmuDevice(132, 232448, 9, 1)
A100 = EmuDevice(108, 166912, 8, 1)


class KernelError(RuntimeError):
    """An emulated launch failed (deadlock, bad shuffle mask, exception) or refused its input."""


def cuda_dir() -> Path:
    return Path(os.environ.get("FASTASD_EMULATED_CUDA_DIR") or CSRC / "cuda").resolve()


def sanitize() -> str:
    return os.environ.get("FASTASD_EMULATED_SANITIZE", "").strip()


def _flags() -> list[str]:
    flags = ["-std=c++20", "-pthread", "-fPIC", "-fno-strict-aliasing", "-Wall", "-Wno-unknown-pragmas",
             "-iquote", str(cuda_dir()), "-iquote", str(CSRC / "cuda"), "-iquote", str(CSRC / "tests")]
    if sanitize() == "thread":
        flags += ["-fsanitize=thread", "-O1", "-g"]
    elif sanitize():
        raise ValueError(f"FASTASD_EMULATED_SANITIZE={sanitize()!r}: only 'thread' is supported")
    else:
        flags += ["-O2"]
    return flags


def _inputs() -> list[Path]:
    files = [CSRC / "tests" / "simt_cpu.h", *sorted(DRIVERS.glob("*.h")), *sorted(DRIVERS.glob("*.cpp")),
             *sorted((CSRC / "cuda").glob("*.h"))]
    files += [cuda_dir() / f"{op}.cu" for op in OPS]
    files += sorted(p for p in cuda_dir().glob("*.h"))
    return files


def build() -> Path:
    """The emulated kernels' shared library (built if its sources or flags changed)."""
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise KernelError(f"no C++ compiler {cxx!r} (set CXX)")
    missing = [p for p in _inputs() if not p.exists()]
    if missing:
        raise KernelError(f"emulated build: missing {', '.join(map(str, missing))}")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    h = hashlib.sha256()
    for part in [version, *_flags()]:
        h.update(part.encode() + b"\0")
    for p in _inputs():
        h.update(str(p).encode() + b"\0" + p.read_bytes() + b"\0")
    out_dir = ROOT / "build" / "emulated" / h.hexdigest()[:16]
    lib = out_dir / "libfastasd_emulated.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if lib.exists():
            return lib

        def compile_one(src: Path) -> Path:
            obj = out_dir / (src.stem + ".o")
            r = subprocess.run([cxx, *_flags(), "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
            if r.returncode != 0:
                raise KernelError(f"emulated build of {src.name} failed:\n{r.stderr[-6000:]}")
            return obj

        with ThreadPoolExecutor(max_workers=2) as pool:
            objs = list(pool.map(compile_one, sorted(DRIVERS.glob("*.cpp"))))
        tmp = out_dir / "libfastasd_emulated.so.tmp"
        r = subprocess.run([cxx, *_flags(), "-shared", *map(str, objs), "-o", str(tmp)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise KernelError(f"emulated link failed:\n{r.stderr[-6000:]}")
        os.replace(tmp, lib)
    return lib


_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_INT = ctypes.c_int
_DEV = ctypes.POINTER(EmuDevice)
_MSG = ctypes.c_char_p


def load() -> ctypes.CDLL:
    """Build (if needed) and load the library, with the C signatures declared."""
    lib = ctypes.CDLL(str(build()))
    lib.fastasd_emu_min_cosine_distance.argtypes = [_P, _P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _INT, _DEV,
                                                    ctypes.POINTER(_INT), _MSG, _INT]
    lib.fastasd_emu_stft_magnitude.argtypes = [_P, _P, _I64, _I64, _I64, _I64, _INT, _INT, _DEV, _MSG, _INT]
    lib.fastasd_emu_subcluster_adacos.argtypes = [_P, _P, _P, ctypes.c_double, _I64, _I64, _I64, _I64, _INT, _INT,
                                                  _P, _P, _P, _P, _P, _P, _MSG, _INT]
    lib.fastasd_emu_subcluster_adacos_backward.argtypes = [_P, _P, _P, _P, _P, _P, _P, _P, _P, _I64, _I64, _I64,
                                                           _I64, _INT, _INT, _DEV, _P, _P, _MSG, _INT]
    for fn in (lib.fastasd_emu_min_cosine_distance, lib.fastasd_emu_stft_magnitude,
               lib.fastasd_emu_subcluster_adacos, lib.fastasd_emu_subcluster_adacos_backward):
        fn.restype = _INT
    return lib


def _check_tensor(t: torch.Tensor, dtype: torch.dtype | None = None) -> int:
    assert t.device.type == "cpu" and t.is_contiguous(), "emulated kernels take contiguous CPU tensors"
    if dtype is not None:
        assert t.dtype == dtype, (t.dtype, dtype)
    return t.data_ptr()


def _nan_like(shape, dtype) -> torch.Tensor:
    """An output buffer as at::empty gives it (filled with NaN, so unwritten elements show)."""
    return torch.full(shape, float("nan"), dtype=dtype)


def _call(fn, *args) -> str:
    msg = ctypes.create_string_buffer(4096)
    rc = fn(*args, msg, len(msg))
    text = msg.value.decode(errors="replace")
    if rc != 0:
        raise KernelError(text)
    return text


class Kernels:
    """The emulated CUDA operators on CPU tensors; each returns its outputs and a launch description."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib

    def min_cosine_distance(self, queries, refs, query_group, ref_offsets, ref_scale=None, ref_shift=None,
                            device: EmuDevice = H100):
        """-> (out [N], error flags of the kernel's value checks, launch description)."""
        N, D = queries.shape
        per_ref = [None if t is None else _check_tensor(t, queries.dtype) for t in (ref_scale, ref_shift)]
        G = ref_offsets.shape[0] - 1
        out = _nan_like((N,), queries.dtype)
        flags = _INT(0)
        info = _call(self.lib.fastasd_emu_min_cosine_distance, _check_tensor(queries), _check_tensor(refs, queries.dtype),
                     _check_tensor(query_group, torch.int64), _check_tensor(ref_offsets, torch.int64),
                     *per_ref, out.data_ptr(), N, refs.shape[0], D, G, int(queries.dtype == torch.float64),
                     ctypes.byref(device), ctypes.byref(flags))
        return out, flags.value, info

    def stft_magnitude(self, waveforms, n_fft: int, hop: int, normalize: bool, device: EmuDevice = H100):
        """-> (out [B, T, F], launch description)."""
        B, N = waveforms.shape
        out = _nan_like((B, 1 + (N - n_fft) // hop, n_fft // 2 + 1), waveforms.dtype)
        info = _call(self.lib.fastasd_emu_stft_magnitude, _check_tensor(waveforms), out.data_ptr(), B, N, n_fft, hop,
                     int(normalize), int(waveforms.dtype == torch.float64), ctypes.byref(device))
        return out, info

    def subcluster_adacos(self, emb, centers, targets, scale: float, K: int, update_scale: bool):
        """-> (loss, scale, lse_total, lse_class, cos, col_inv_norms), launch description."""
        B, D = emb.shape
        CK = centers.shape[1]
        C = CK // K
        dt = emb.dtype
        outs = [_nan_like((), dt), _nan_like((), dt), _nan_like((B,), dt), _nan_like((B, C), dt),
                _nan_like((B, CK), dt), _nan_like((CK,), dt)]
        info = _call(self.lib.fastasd_emu_subcluster_adacos, _check_tensor(emb), _check_tensor(centers, dt),
                     _check_tensor(targets, dt), float(scale), B, D, C, K, int(update_scale), int(dt == torch.float64),
                     *[o.data_ptr() for o in outs])
        return tuple(outs), info

    def subcluster_adacos_backward(self, grad_loss, emb, centers, targets, s, lse_total, lse_class, cos, rw, K: int,
                                   centers_grad: bool, device: EmuDevice = H100):
        """-> (grad embeddings, grad centers or None), launch description."""
        B, D = emb.shape
        CK = centers.shape[1]
        dt = emb.dtype
        gx = _nan_like((B, D), dt)
        gw = _nan_like((D, CK), dt) if centers_grad else torch.empty(0, dtype=dt)
        ptrs = [_check_tensor(t, dt) for t in (grad_loss, emb, centers, targets, s, lse_total, lse_class, cos, rw)]
        info = _call(self.lib.fastasd_emu_subcluster_adacos_backward, *ptrs, B, D, CK // K, K, K and int(centers_grad),
                     int(dt == torch.float64), ctypes.byref(device), gx.data_ptr(), gw.data_ptr() if centers_grad else None)
        return (gx, gw if centers_grad else None), info
