"""Loading of the compiled operator library ``fastasd._C`` and the backend switch.

``FASTASD_BACKEND`` selects what :mod:`fastasd.ops` runs:

- ``auto`` (default): the native operators where the extension is loaded and has a kernel for the
  tensors' device, else the pure-PyTorch reference (logged once per operator and device);
- ``native``: the native operators, an error if they are unavailable;
- ``reference``: always :mod:`fastasd.reference`.

The build records what it built in ``_build_info.json`` beside the extension (see setup.py); a
library built for another torch or CUDA version is refused with a message that says both.
``fastasd info`` (:mod:`fastasd.cli.info`) prints all of it.
"""
from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "native", "reference")
ENV_VAR = "FASTASD_BACKEND"
OPS = ("stft_magnitude", "subcluster_adacos", "min_cosine_distance")
_BUILD_INFO = Path(__file__).with_name("_build_info.json")

_state: dict = {"loaded": None, "error": None}
_fallback_logged: set[tuple[str, str]] = set()


def backend_name() -> str:
    """The backend chosen by ``FASTASD_BACKEND`` (``auto`` when unset); ValueError when invalid."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={value!r} is not one of {', '.join(BACKENDS)}")
    return value


def switch_on(env_var: str) -> bool:
    """An on/off environment switch that is on unless set to 0, false, no or off (any case), read
    at every call (FASTASD_FUSED_INFERENCE, FASTASD_MALLOC_TUNING)."""
    return os.environ.get(env_var, "1").strip().lower() not in ("0", "false", "no", "off")


def build_info() -> dict | None:
    """What ``setup.py`` recorded when it built ``fastasd._C`` (None without a build)."""
    try:
        return json.loads(_BUILD_INFO.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _version_mismatch(info: dict | None) -> str | None:
    import torch

    if not info:
        return None
    built_torch, built_cuda = info.get("torch_version"), info.get("torch_cuda")
    if built_torch and built_torch.split("+")[0] != torch.__version__.split("+")[0]:
        return f"torch {built_torch}"
    if info.get("with_cuda") and built_cuda != torch.version.cuda:
        return f"torch with CUDA {built_cuda}"
    return None


def load_extension() -> bool:
    """Import ``fastasd._C`` once (registers ``torch.ops.fastasd.*``); True if it is loaded.

    A missing or incompatible library is not an error here: :func:`load_error` says why, and
    ``FASTASD_BACKEND=native`` turns it into one.
    """
    if _state["loaded"] is not None:
        return _state["loaded"]
    import torch

    info = build_info()
    mismatch = _version_mismatch(info)
    if mismatch is not None:
        _state["error"] = (
            f"fastasd._C was built for {mismatch}, but torch {torch.__version__} (CUDA "
            f"{torch.version.cuda}) is installed: rebuild it with "
            "`pip install --no-build-isolation -e .` (or `python setup.py build_ext --inplace`)"
        )
        _state["loaded"] = False
        return False
    try:
        importlib.import_module("fastasd._C")
    except ImportError as e:
        hint = ("" if info else " (not built: run `pip install --no-build-isolation -e .`)")
        if info and "undefined symbol" in str(e):
            hint = (f" (built for torch {info.get('torch_version')}, CUDA {info.get('torch_cuda')}; "
                    "rebuild it for this torch)")
        _state["error"] = f"cannot import fastasd._C: {e}{hint}"
        _state["loaded"] = False
        return False
    _state["loaded"] = True
    return True


def load_error() -> str | None:
    """Why the extension is not loaded (None when it is)."""
    load_extension()
    return _state["error"]


def has_kernel(op: str, device_type: str) -> bool:
    """True if the loaded library registered ``fastasd::<op>`` for this device type."""
    if not load_extension():
        return False
    import torch

    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None:
        return False
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"fastasd::{op}", key))
    except RuntimeError:  # op not registered at all
        return False


@functools.lru_cache(maxsize=None)
def _decide(op: str, device_type: str, backend: str) -> bool:
    if backend == "reference":
        return False
    if has_kernel(op, device_type):
        return True
    reason = load_error() or f"fastasd._C has no {device_type} kernel for {op}"
    if device_type == "cuda" and load_error() is None:
        info = build_info() or {}
        reason += f" (built without CUDA: {info.get('cuda_reason', 'unknown reason')})"
    if backend == "native":
        raise RuntimeError(f"fastasd::{op}: {ENV_VAR}=native but {reason}")
    if (op, device_type) not in _fallback_logged:
        _fallback_logged.add((op, device_type))
        logger.warning("fastasd::%s on %s: using the PyTorch reference (%s)", op, device_type, reason)
    return False


def use_native(op: str, device_type: str) -> bool:
    """Whether :mod:`fastasd.ops` runs the native kernel of ``op`` for tensors on ``device_type``.

    Decided by ``FASTASD_BACKEND`` (read at each call, so tests may change it) and by what the
    library provides. Under ``torch.compile`` the answer is a trace-time constant.
    """
    return _decide(op, device_type, backend_name())


def info() -> dict:
    """Everything ``fastasd info`` prints, as a dict."""
    import torch

    loaded = load_extension()
    built = build_info()
    try:
        active = backend_name()
    except ValueError as e:
        active = f"invalid ({e})"
    kernels = {op: {dev: has_kernel(op, dev) for dev in ("cpu", "cuda")} for op in OPS}
    cuda_available = torch.cuda.is_available()
    return {
        "fastasd_backend": active,
        "extension_loaded": loaded,
        "extension_error": _state["error"],
        "build": built,
        "kernels": kernels,
        "runtime": {
            "python": sys.version.split()[0],
            "torch_version": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "cuda_available": cuda_available,
            "gpu": torch.cuda.get_device_name(0) if cuda_available else None,
            "num_threads": torch.get_num_threads(),
        },
    }


def format_info(d: dict) -> str:
    """Human-readable form of :func:`info`."""
    b = d["build"] or {}
    rt = d["runtime"]
    lines = [f"active backend (FASTASD_BACKEND): {d['fastasd_backend']}"]
    if d["extension_loaded"]:
        lines.append("extension fastasd._C: loaded")
    else:
        lines.append(f"extension fastasd._C: NOT loaded ({d['extension_error']})")
    if b:
        lines.append(f"built: CPU {'yes' if b.get('with_cpu') else 'no'}, "
                     f"CUDA {'yes' if b.get('with_cuda') else 'no'} ({b.get('cuda_reason')})")
        if b.get("with_cuda"):
            lines.append(f"  CUDA archs: {b.get('cuda_archs')}, nvcc {b.get('nvcc_version')}")
        lines.append(f"  built for torch {b.get('torch_version')} (CUDA {b.get('torch_cuda')}), "
                     f"python {b.get('python')}, at {b.get('built_at')}")
    else:
        lines.append("built: no build record (_build_info.json missing)")
    lines.append(f"runtime: torch {rt['torch_version']} (CUDA {rt['torch_cuda']}), python {rt['python']}, "
                 f"GPU: {rt['gpu'] or 'none'}, CPU threads: {rt['num_threads']}")
    lines.append("native kernels:")
    for op, devs in d["kernels"].items():
        have = [dev for dev, ok in devs.items() if ok]
        lines.append(f"  {op}: {', '.join(have) if have else 'none (reference)'}")
    return "\n".join(lines)
