"""Fixtures of the emulated CUDA kernel tests (see simt.py and README "Emulated CUDA kernels").

``kernels``: the emulated operators (built on first use, cached by source hash). ``ops_helpers``
loads a module of tests/ops, so these tests use the CPU operator tests' cases, inputs and
tolerances instead of copies of them. ``check_close``: as in tests/ops.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import simt  # noqa: E402

OPS_TESTS = Path(__file__).resolve().parents[1] / "ops"


def load_ops_module(name: str):
    """tests/ops/<name>.py as a module (for its helpers; pytest collects it on its own)."""
    key = f"_fastasd_ops_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, OPS_TESTS / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        spec.loader.exec_module(mod)
    return sys.modules[key]


@pytest.fixture(scope="session")
def kernels() -> simt.Kernels:
    if simt.sanitize() == "thread" and "libtsan" not in Path("/proc/self/maps").read_text():
        pytest.fail("FASTASD_EMULATED_SANITIZE=thread needs libtsan loaded first: run with "
                    "LD_PRELOAD=$(g++ -print-file-name=libtsan.so)")
    return simt.Kernels(simt.load())


@pytest.fixture
def check_close():
    return load_ops_module("conftest").assert_close_report
