"""Shared helpers of the operator tests (fixtures: ``cuda_device``, ``check_close``).

CUDA tests ask for ``cuda_device``: without a GPU they are skipped with the reason, and
``FASTASD_REQUIRE_CUDA=1`` turns that skip into a failure (so a GPU CI job cannot pass by
skipping). ``check_close`` compares a result with a reference and, on failure, says how many
elements mismatch, where the worst ones are, and the values there.
"""
from __future__ import annotations

import os

import pytest
import torch


def cuda_or_skip() -> torch.device:
    """The current CUDA device, or skip the test (a failure when FASTASD_REQUIRE_CUDA=1)."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    reason = ("CUDA is not available" if torch.version.cuda else
              f"torch {torch.__version__} was built without CUDA")
    if os.environ.get("FASTASD_REQUIRE_CUDA", "") == "1":
        pytest.fail(f"FASTASD_REQUIRE_CUDA=1 but {reason}")
    pytest.skip(f"{reason} (set FASTASD_REQUIRE_CUDA=1 to make this a failure)")


def assert_close_report(actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float = 0.0,
                        what: str = "") -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise (NaN never passes).

    The failure message gives the number of mismatching elements, the largest error, and the
    indices and values of (up to) the five worst elements.
    """
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    err = (a - e).abs()
    bad = ~(err <= atol + rtol * e.abs())  # also catches NaN
    n_bad = int(bad.sum())
    if n_bad == 0:
        return
    flat = torch.where(bad, err.nan_to_num(float("inf")), torch.zeros_like(err)).flatten()
    worst = flat.topk(min(5, n_bad)).indices
    lines = []
    for i in worst.tolist():
        idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), a.shape)) if a.dim() else ()
        lines.append(f"  at {idx}: got {a.flatten()[i].item():.9g}, expected {e.flatten()[i].item():.9g}")
    raise AssertionError(
        f"{what}: {n_bad} of {a.numel()} elements differ by more than atol={atol:g} + rtol={rtol:g}*|expected| "
        f"(max error {err.nan_to_num(float('inf')).max().item():.3g}); worst:\n" + "\n".join(lines))


@pytest.fixture
def cuda_device() -> torch.device:
    """A CUDA device, or skip (FASTASD_REQUIRE_CUDA=1: fail) with the reason."""
    return cuda_or_skip()


@pytest.fixture
def check_close():
    """:func:`assert_close_report` as a fixture."""
    return assert_close_report
