"""Helpers of the fastasd benchmarks (used by ``conftest.py`` and the ``bench_*.py`` files):
device sync, the providers of each operator, the native-kernel probe, the timing loop and the
switch of ``fastasd.ops`` between native and reference for the end-to-end pipeline.

See ``conftest.py`` for what the providers are and how timing works.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
# Measure the checkout (with its in-place built extension), not some installed copy.
for _p in (str(BENCH_DIR), str(REPO)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402

OPS = ("stft_magnitude", "subcluster_adacos", "min_cosine_distance")
REF_EAGER, REF_COMPILED, OURS, MATMUL_MAX = ("reference-eager", "reference-compiled", "ours",
                                             "matmul+max-compiled")
# The pipeline's precision axis: ours in bfloat16 (scoring: the fused network's convolutions in
# bfloat16, weights converted once; training: bfloat16 autocast with channels-last weights).
OURS_BF16 = "ours-bf16"
ROTATE_BYTES = 256 << 20  # inputs rotated per case: several times any L2/L3 of the machines used


# ---- device helpers ------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def n_input_sets(bytes_per_set: float) -> int:
    """How many input sets to rotate among: ~``ROTATE_BYTES`` in all, 1 to 32 sets."""
    return max(1, min(32, math.ceil(ROTATE_BYTES / max(bytes_per_set, 1))))


# ---- native-kernel probe -------------------------------------------------------------------------

def _kernel_source(op_name: str, device: torch.device) -> str | None:
    """Where the kernel of ``fastasd::<op>`` for the device's dispatch key was registered."""
    try:
        dump = torch._C._dispatch_dump(op_name)
    except Exception:
        return None
    keys = ("CUDA",) if device.type == "cuda" else ("CPU",)
    keys += ("CompositeExplicitAutograd", "CompositeImplicitAutograd")
    for line in dump.splitlines():
        for k in keys:
            if line.startswith(f"{k}: registered at "):
                return line.split("registered at ", 1)[1].split(" :: ")[0]
    return None


def _is_native(source: str | None) -> bool:
    if not source:
        return False
    path = source.rsplit(":", 1)[0]
    return path.endswith((".cpp", ".cc", ".cu", ".cuh", ".h", ".hpp"))


def fastasd_ops_run(fn, device: torch.device) -> dict[str, bool]:
    """Run ``fn()`` under the profiler; return ``{fastasd op name: its kernel is C++/CUDA}`` for
    every ``fastasd::`` operator the dispatcher ran (nested calls included)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
        sync(device)
    names = {e.key for e in prof.key_averages() if e.key.startswith("fastasd::")}
    return {n: _is_native(_kernel_source(n, device)) for n in sorted(names)}


def backend_description() -> str:
    """What fastasd.ops runs in this process, for the results: ``FASTASD_BACKEND``, whether the
    extension is loaded (or why not) and which native kernels exist per device."""
    env = os.environ.get("FASTASD_BACKEND") or "(unset: auto)"
    try:
        from fastasd import _backend

        d = _backend.info()
    except Exception as e:  # an older checkout without the switch
        return f"FASTASD_BACKEND={env}; fastasd._backend unavailable ({type(e).__name__}: {e})"
    kernels = "; ".join(f"{op}: {', '.join(k for k, ok in devs.items() if ok) or 'none'}"
                        for op, devs in d["kernels"].items())
    ext = "loaded" if d["extension_loaded"] else f"NOT loaded ({d['extension_error']})"
    return f"FASTASD_BACKEND={env}; extension {ext}; native kernels: {kernels}"


def require_native(op: str, probe, device: torch.device) -> list[str]:
    """Skip unless calling ``probe()`` ran a native ``fastasd::<op>*`` kernel on ``device``.
    Returns the native fastasd ops that ran."""
    try:
        seen = fastasd_ops_run(probe, device)
    except Exception as e:  # FASTASD_BACKEND=native without a kernel raises
        msg = str(e).splitlines()[0] if str(e) else ""
        pytest.skip(f"ours: fastasd.ops.{op} raised on a small input: {type(e).__name__}: {msg}")
    native = [n for n, ok in seen.items() if ok]
    if not any(n.split("::", 1)[1].startswith(op) for n in native):
        ran = ", ".join(f"{n} ({'native' if ok else 'not native'})" for n, ok in seen.items()) or "none"
        pytest.skip(f"ours: fastasd.ops.{op} ran no native fastasd::{op} kernel on {device.type} "
                    f"(fastasd ops seen: {ran}; {backend_description()}): native op not built "
                    f"for this device or not wired into fastasd.ops")
    return native


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64 (NaN anywhere -> inf)."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(out).all():
        return math.inf
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


# ---- providers of an operator --------------------------------------------------------------------

_COMPILED: dict[tuple, object] = {}


def compiled(fn, key: str, dynamic: bool | None = False):
    """``torch.compile(fn)`` once per session and key (so size sets share the compile cache)."""
    k = (key, dynamic)
    if k not in _COMPILED:
        _COMPILED[k] = torch.compile(fn, dynamic=dynamic)
    return _COMPILED[k]


def op_callable(op: str, provider: str, device: torch.device):
    """The callable of ``provider`` for ``op`` (no probing; see :func:`require_native`)."""
    from fastasd import ops, reference

    ref = getattr(reference, op)
    if provider == REF_EAGER:
        return ref
    if provider == REF_COMPILED:
        # The search loops over groups with data-dependent sizes (graph breaks at .tolist() and
        # nonzero). Static shapes recompile per group size; automatic dynamic (None) was seen to
        # take minutes to compile at N=20000 and then run 20x slower than eager; dynamic=True
        # compiles once in seconds and runs at about eager speed: the fair choice.
        return compiled(ref, op, dynamic=True if op == "min_cosine_distance" else False)
    if provider == OURS:
        return getattr(ops, op)
    raise ValueError(f"unknown provider {provider!r}")


# ---- the timing loop -----------------------------------------------------------------------------

@dataclass
class Policy:
    """Rounds of one case: ``rounds = clamp(ceil(budget_s / t_call), min_rounds, max_rounds)``."""

    warmup: int
    min_rounds: int
    max_rounds: int
    budget_s: float


def op_policy(device: torch.device, quick: bool) -> Policy:
    if quick:
        return Policy(warmup=1, min_rounds=2, max_rounds=2, budget_s=0.0)
    if device.type == "cuda":
        return Policy(warmup=10, min_rounds=30, max_rounds=1000, budget_s=1.0)
    return Policy(warmup=2, min_rounds=5, max_rounds=50, budget_s=3.0)


class Runner:
    """Times one case with ``benchmark.pedantic`` (see the module docstring)."""

    def __init__(self, benchmark, device: torch.device):
        self.benchmark = benchmark
        self.device = device

    def run(self, fn, sets: list[tuple], policy: Policy, *, prepare=None, first_call: bool = True,
            compile_skip: bool = False, cuda_extras: bool = True, cuda_graph: bool = True,
            extra: dict | None = None):
        """Time ``fn(*sets[i])`` (inputs rotating) and record extra info.

        Args:
            fn: the call to time (its result is discarded; a device sync follows inside the timing).
            sets: argument tuples to rotate among.
            policy: warm-up and rounds.
            prepare: ``prepare(args)`` before each call, untimed (e.g. drop old gradients).
            first_call: time one call first on its own (compilation, loading) as ``first_call_s``.
            compile_skip: an exception in the first call skips the case (a provider that
                cannot compile) instead of failing it.
            cuda_extras: on CUDA also measure GPU time with CUDA events ...
            cuda_graph: ... and with CUDA-graph replays (False for code that syncs with the host).
            extra: more extra_info.
        """
        dev, counter = self.device, itertools.count()

        def setup():
            args = sets[next(counter) % len(sets)]
            if prepare is not None:
                prepare(args)
            sync(dev)
            return args, {}

        def timed(*args):
            fn(*args)
            sync(dev)

        info = dict(extra or {})
        t_call = None
        if first_call:
            args, _ = setup()
            t0 = time.perf_counter()
            try:
                timed(*args)
            except Exception as e:
                if compile_skip:
                    msg = (str(e).splitlines() or [""])[0][:300]
                    pytest.skip(f"torch.compile failed: {type(e).__name__}: {msg}")
                raise
            info["first_call_s"] = time.perf_counter() - t0
        if policy.budget_s > 0:  # one more call to size the rounds by the budget
            args, _ = setup()
            t0 = time.perf_counter()
            timed(*args)
            t_call = time.perf_counter() - t0
        if t_call is not None and policy.budget_s > 0:
            rounds = math.ceil(policy.budget_s / max(t_call, 1e-9))
        else:
            rounds = policy.min_rounds
        rounds = max(policy.min_rounds, min(policy.max_rounds, rounds))
        self.benchmark.pedantic(timed, setup=setup, rounds=rounds, warmup_rounds=policy.warmup,
                                iterations=1)
        info.update(rounds=rounds, warmup_rounds=policy.warmup, input_sets=len(sets),
                    device=str(dev), threads=torch.get_num_threads())
        if dev.type == "cuda" and cuda_extras:
            info.update(_cuda_extras(fn, sets, prepare, dev, quick=policy.budget_s == 0, graph=cuda_graph))
        self.benchmark.extra_info.update(info)


def _cuda_extras(fn, sets, prepare, dev, quick: bool, graph: bool = True) -> dict:
    """GPU time of one call: median over CUDA-event pairs around each call, and per call from
    replays of a CUDA graph that holds one call per input set (launch gaps removed)."""
    out = {}
    reps = 10 if quick else 200
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        args = sets[i % len(sets)]
        if prepare is not None:
            prepare(args)
        starts[i].record()
        fn(*args)
        ends[i].record()
    torch.cuda.synchronize(dev)
    out["gpu_event_median_s"] = statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) / 1e3
    if not graph:
        out["cuda_graph_error"] = "not attempted: the provider synchronizes with the host"
        return out
    k = min(len(sets), 16)
    try:
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs advises
            for args in sets[:k]:
                if prepare is not None:
                    prepare(args)
                fn(*args)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for args in sets[:k]:
                if prepare is not None:
                    prepare(args)
                fn(*args)
        graph.replay()
        torch.cuda.synchronize(dev)
        n = 5 if quick else 50
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for s, e in ev:
            s.record()
            graph.replay()
            e.record()
        torch.cuda.synchronize(dev)
        out["cuda_graph_median_s"] = statistics.median(s.elapsed_time(e) for s, e in ev) / 1e3 / k
        out["cuda_graph_calls_per_replay"] = k
        del graph
    except Exception as e:  # host syncs (.tolist(), .item()) cannot be captured: say so
        out["cuda_graph_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        with contextlib.suppress(Exception):
            torch.cuda.synchronize(dev)
    return out


def for_op(op: str):
    """Decorator: the test gets only the module's ``CASES`` of this op."""
    def deco(fn):
        fn.op = op
        return fn
    return deco


def describe_case(benchmark, case, provider: str, **more) -> None:
    """Name the case in the benchmark's group and extra info (read back by run.py)."""
    benchmark.group = case.name
    benchmark.extra_info.update(op=case.op, case=case.name, case_id=case.id, tags=list(case.tags),
                                provider=provider, params=dict(case.params), **more)


# ---- pipeline: switching fastasd.ops between native and reference -------------------------------

@contextlib.contextmanager
def ops_provider(provider: str):
    """Select what ``fastasd.ops`` runs for the duration, with the package's own switch
    (``FASTASD_BACKEND``, read by ``fastasd._backend`` at every call): ``ours`` -> ``native``
    (an op without a native kernel raises instead of falling back), ``reference-eager`` ->
    ``reference``. The previous value is restored afterwards. Callers verify what actually ran
    with :func:`fastasd_ops_run`."""
    value = {OURS: "native", OURS_BF16: "native", REF_EAGER: "reference"}.get(provider)
    if value is None:
        raise ValueError(f"unknown provider {provider!r} for fastasd.ops")
    old = os.environ.get("FASTASD_BACKEND")
    os.environ["FASTASD_BACKEND"] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FASTASD_BACKEND", None)
        else:
            os.environ["FASTASD_BACKEND"] = old


def check_pipeline_provider(provider: str, probe, device: torch.device) -> list[str]:
    """Run ``probe()`` (a small call through the same code path) and check the provider: ``ours``
    must run at least one native fastasd kernel (else skip: nothing native to measure; also when
    the native backend raises for a missing kernel), the reference none (else fail: the switch
    did not reach the system). Returns the native ops that ran."""
    ours = provider in (OURS, OURS_BF16)
    try:
        seen = fastasd_ops_run(probe, device)
    except Exception as e:
        if not ours:
            raise
        pytest.skip(f"ours: the pipeline cannot run natively on {device.type}: {type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''} ({backend_description()})")
    native = [n for n, ok in seen.items() if ok]
    if ours and not native:
        pytest.skip(f"ours: the pipeline ran no native fastasd kernel on {device.type} "
                    f"(fastasd ops seen: {sorted(seen) or 'none'}; {backend_description()}); "
                    f"it would only repeat the reference")
    if not ours and native:
        pytest.fail(f"reference: native kernels still ran ({native}): some code does not go "
                    f"through fastasd.ops")
    return native


def clone_module(m):
    """A deep copy (for probes that must not touch the benchmarked module's state)."""
    return copy.deepcopy(m)
