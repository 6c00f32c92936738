"""Build script for fastasd: the Python package plus the ``fastasd._C`` operator library.

``fastasd._C`` is built with ``torch.utils.cpp_extension`` from ``csrc/``: the C++ (CPU) sources
always, the CUDA sources whenever torch was built with CUDA and nvcc is found. The decision looks
at ``torch.version.cuda`` and ``CUDA_HOME``, never at a visible GPU, so a GPU-less build machine
still builds the CUDA kernels. Overrides: ``FASTASD_NO_CUDA=1`` (C++ only) and
``FASTASD_FORCE_CUDA=1`` (CUDA even where the checks say no; fails if it cannot). Target GPUs:
``TORCH_CUDA_ARCH_LIST`` (default ``8.0;9.0+PTX``: A100, H100, and PTX for newer GPUs).

torch must already be installed: ``pip install --no-build-isolation .`` (an isolated build would
download another torch, and the extension must match the torch it runs with). What was built is
recorded in ``fastasd/_build_info.json`` beside the extension (see ``fastasd info``).
"""
from __future__ import annotations

import datetime
import glob
import json
import os
import platform
import re
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0+PTX"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _nvcc_version(cuda_home: str | None) -> str | None:
    if not cuda_home:
        return None
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def _decide_cuda(torch, cuda_home: str | None) -> tuple[bool, str]:
    """(build CUDA?, why) from torch's CUDA version and the toolkit found, not from a GPU."""
    if _flag("FASTASD_NO_CUDA"):
        return False, "FASTASD_NO_CUDA=1"
    if _flag("FASTASD_FORCE_CUDA"):
        return True, "FASTASD_FORCE_CUDA=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} was built without CUDA"
    if cuda_home is None:
        return False, "no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)"
    nvcc = _nvcc_version(cuda_home)
    if nvcc is None:
        return False, f"no working nvcc under CUDA_HOME={cuda_home}"
    if nvcc.split(".")[0] != torch.version.cuda.split(".")[0]:
        # torch refuses to build across CUDA major versions; building C++-only keeps the package
        # installable (FASTASD_FORCE_CUDA=1 tries anyway).
        return False, (f"nvcc {nvcc} at {cuda_home} does not match torch's CUDA {torch.version.cuda} "
                       "(major versions differ)")
    return True, f"torch CUDA {torch.version.cuda}, nvcc {nvcc} at {cuda_home}"


def _extensions_and_cmdclass():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    with_cuda, why = _decide_cuda(torch, CUDA_HOME)
    print(f"fastasd: building fastasd._C with{'' if with_cuda else 'out'} CUDA ({why})", file=sys.stderr)
    if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        # Without a visible GPU torch cannot guess the architectures, so always set them.
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS

    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = ["csrc/ops.cpp", *rel("csrc/cpu/*.cpp")]
    if with_cuda:
        sources += rel("csrc/cuda/*.cu")
    debug = _flag("FASTASD_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # ATen's at::parallel_for is an inline OpenMP region: compile it with OpenMP (the library then
    # links libgomp.so.1, which resolves to the copy torch has already loaded).
    cxx = [*opt, "-fopenmp", "-fno-math-errno", "-Wno-psabi", "-DFASTASD_PYTHON_MODULE"]
    nvcc = [*opt, "-lineinfo", "--use_fast_math", "-DFASTASD_PYTHON_MODULE"]
    ext_cls = CUDAExtension if with_cuda else CppExtension
    ext = ext_cls(
        name="fastasd._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx, "nvcc": nvcc} if with_cuda else {"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )

    info = {
        "fastasd_version": "0.1.0",
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "with_cpu": True,
        "with_cuda": with_cuda,
        "cuda_reason": why,
        "nvcc_version": _nvcc_version(CUDA_HOME) if with_cuda else None,
        "cuda_home": CUDA_HOME if with_cuda else None,
        "cuda_archs": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
        "debug": debug,
        "sources": sources,
    }

    class BuildExtensionWithInfo(BuildExtension):
        """Builds the extension, then records what was built next to it (``_build_info.json``)."""

        def run(self):
            super().run()
            target_dir = os.path.dirname(self.get_ext_fullpath("fastasd._C"))
            os.makedirs(target_dir, exist_ok=True)
            path = os.path.join(target_dir, "_build_info.json")
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(info, f, indent=2)
                f.write("\n")
            os.replace(tmp, path)

    return [ext], {"build_ext": BuildExtensionWithInfo.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions_and_cmdclass()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
