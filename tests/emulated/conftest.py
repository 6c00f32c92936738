"""Fixtures of the emulated CUDA kernel tests (see simt.py and README "Emulated CUDA kernels").

``kernels``: the emulated operators (built on first use, cached by source hash).
``check_close``: as in tests/ops.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import simt  # noqa: E402

@pytest.fixture(scope="session")
def kernels() -> simt.Kernels:
    if simt.sanitize() == "thread" and "libtsan" not in Path("/proc/self/maps").read_text():
        pytest.fail("FASTASD_EMULATED_SANITIZE=thread needs libtsan loaded first: run with "
                    "LD_PRELOAD=$(g++ -print-file-name=libtsan.so)")
    return simt.Kernels(simt.load())


@pytest.fixture
def check_close():
    return simt.load_ops_module("conftest").assert_close_report
