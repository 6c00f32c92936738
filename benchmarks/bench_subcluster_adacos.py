"""Benchmark of ``subcluster_adacos`` (sub-cluster AdaCos loss with the adaptive scale update).

Two modes per size: ``fwd+bwd`` (the training use: loss forward with the scale update, then
``loss.backward()`` to the embeddings; centers fixed) timed together, and ``fwd`` alone (inputs
still require grad, as in training). Labels are mixup labels (max rule) of random classes.
Sizes: B=64 (paper = target) and B=1024 (large), D=256, C=342, K=16 (C*K=5472).
"""
from __future__ import annotations

import math

import pytest
import torch

from harness import (OURS, REF_COMPILED, REF_EAGER, describe_case, make_generator, n_input_sets,
                     op_callable, op_policy, rel_error, require_native)
from sizes import LOSS_CASES

OP = "subcluster_adacos"
CASES = LOSS_CASES
CHECK_TOL = 1e-4  # ours (float32) vs the float64 reference: loss and gradient, relative


def providers(device: str) -> list[str]:
    return [REF_EAGER, REF_COMPILED, OURS]


def make_inputs(B: int, D: int, C: int, K: int, gen: torch.Generator, device, dtype=torch.float32):
    """``(embeddings [B, D] requiring grad, centers [D, C*K] Glorot-uniform, mixup targets [B, C])``."""
    emb = torch.randn(B, D, generator=gen, device=device, dtype=dtype).requires_grad_(True)
    limit = math.sqrt(6.0 / (D + C * K))
    centers = (torch.rand(D, C * K, generator=gen, device=device, dtype=dtype) * 2 - 1) * limit
    y = torch.nn.functional.one_hot(torch.randint(0, C, (B,), generator=gen, device=device), C).to(dtype)
    lam = torch.rand(B, 1, generator=gen, device=device, dtype=dtype)
    targets = torch.maximum(lam * y, (1 - lam) * y.flip(0))
    return emb, centers, targets


def _check(fn, device, benchmark) -> None:
    from fastasd import reference

    B, D, C, K = 8, 32, 10, 4
    emb, centers, targets = make_inputs(B, D, C, K, make_generator(device, 1), device)
    scale = reference.adacos_initial_scale(C * K)
    native = require_native(OP, lambda: fn(emb, centers, targets, scale, K, True)[0].backward(), device)
    emb.grad = None
    loss, _ = fn(emb, centers, targets, scale, K, True)
    loss.backward()
    e64 = emb.detach().double().requires_grad_(True)
    ref, _ = reference.subcluster_adacos(e64, centers.double(), targets.double(), scale, K, True)
    ref.backward()
    errs = {"loss": rel_error(loss, ref), "grad": rel_error(emb.grad, e64.grad)}
    bad = {k: v for k, v in errs.items() if v > CHECK_TOL}
    if bad:
        pytest.fail(f"ours differs from the reference: relative errors {bad} > {CHECK_TOL}")
    benchmark.extra_info.update(native_ops=native, check_rel_error=max(errs.values()))


def test_subcluster_adacos(case, provider, device, quick, runner, benchmark):
    from fastasd import reference

    p = case.params
    B, D, C, K, mode = p["B"], p["D"], p["C"], p["K"], p["mode"]
    describe_case(benchmark, case, provider)
    fn = op_callable(OP, provider, device)
    if provider == OURS:
        _check(fn, device, benchmark)
    scale = reference.adacos_initial_scale(C * K)  # a fixed float: the compiled reference specializes on it
    gen = make_generator(device, 0)
    n_sets = 2 if quick else n_input_sets(4 * (B * D + D * C * K + B * C))
    sets = [make_inputs(B, D, C, K, gen, device) for _ in range(n_sets)]

    if mode == "fwd+bwd":
        def call(emb, centers, targets):
            loss, _ = fn(emb, centers, targets, scale, K, True)
            loss.backward()
    else:
        def call(emb, centers, targets):
            fn(emb, centers, targets, scale, K, True)

    def prepare(args):
        args[0].grad = None

    runner.run(call, sets, op_policy(device, quick), prepare=prepare,
               compile_skip=provider == REF_COMPILED)
