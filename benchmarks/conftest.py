"""pytest-benchmark harness of fastasd: options, case/provider parametrization, outcome
collection and fixtures. The helpers (providers, CUDA sync, native-kernel probe, timing loop) are
in ``harness.py``; the cases and their sizes in ``sizes.py``; bytes and FLOPs in ``floors.py``.

Run through ``python benchmarks/run.py`` (which also measures the machine's ceilings and writes
``benchmarks/results/<device>.json|md``), or directly::

    python -m pytest -o python_files='bench_*.py' benchmarks --device cpu --sizes paper,target

Options: ``--device cpu|cuda``, ``--sizes`` (comma list of ``paper``, ``target``, ``large``; see
``benchmarks/sizes.py``), ``--quick`` (tiny rounds, to check the harness end to end),
``--outcomes-json PATH`` (where every case's outcome, with skip reasons, is written).

Providers of an operator: ``reference-eager`` (``fastasd.reference.<op>``), ``reference-compiled``
(the same under ``torch.compile``), ``ours`` (``fastasd.ops.<op>``, valid only if a native C++/CUDA
``fastasd::`` kernel actually ran: checked with the profiler on a small input) and, for the
search on CUDA, ``matmul+max-compiled``. A provider that cannot run (native op not built or not
wired into ``fastasd.ops``, ``torch.compile`` failing) is SKIPPED with the reason, which
``run.py`` puts into the results; nothing is dropped silently.

Timing (``/work/.library/device/METHOD.md``): every timed call ends with a device synchronize;
a first call (compilation, module load) is timed separately as ``first_call_s``; then
``benchmark.pedantic`` runs explicit warm-up rounds and rounds (one call each) and reports the
median. Inputs rotate among several sets (~256 MB in all) so that repeated calls do not measure
a warm cache. On CUDA the extra info also has the median GPU time of one call from CUDA events
(``gpu_event_median_s``) and, where capture works, from CUDA-graph replays (``cuda_graph_median_s``).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import MATMUL_MAX, REF_COMPILED, Runner, ops_provider  # noqa: E402  (also puts the checkout first on sys.path)
from sizes import SIZE_SETS, select  # noqa: E402

import torch  # noqa: E402


# ---- options -------------------------------------------------------------------------------------

def pytest_addoption(parser):
    g = parser.getgroup("fastasd benchmarks")
    g.addoption("--device", default="cpu", choices=("cpu", "cuda"), help="device to benchmark on")
    g.addoption("--sizes", default="paper,target",
                help=f"comma list of size sets: {', '.join(SIZE_SETS)} (large is big: opt-in)")
    g.addoption("--quick", action="store_true", help="tiny rounds: check the harness, not the numbers")
    g.addoption("--outcomes-json", default=None, help="write every case's outcome (with skip reasons) here")


def _sizes(config) -> set[str]:
    sizes = {s.strip() for s in config.getoption("--sizes").split(",") if s.strip()}
    bad = sizes - set(SIZE_SETS)
    if bad or not sizes:
        raise pytest.UsageError(f"--sizes: unknown {sorted(bad) or '(empty)'}; choose from {SIZE_SETS}")
    return sizes


def pytest_generate_tests(metafunc):
    """Parametrize ``case`` by the module's ``CASES`` (filtered by ``--sizes``) and ``provider`` by
    the module's ``providers(device)``."""
    cfg = metafunc.config
    if not hasattr(metafunc.module, "CASES"):  # other scripts in benchmarks/ (e.g. bench_archive.py)
        return
    if "case" in metafunc.fixturenames:
        cases = select(metafunc.module.CASES, _sizes(cfg))
        op = getattr(metafunc.function, "op", None)  # set by harness.for_op: one op per test
        if op is not None:
            cases = [c for c in cases if c.op == op]
        metafunc.parametrize("case", cases, ids=[c.id for c in cases])
    if "provider" in metafunc.fixturenames:
        provs = metafunc.module.providers(cfg.getoption("--device"))
        metafunc.parametrize("provider", provs, ids=provs)


# ---- outcomes (so that skips and failures reach the results with their reasons) -----------------

_OUTCOMES: dict[str, dict] = {}


def pytest_collection_modifyitems(config, items):
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        case = params.get("case")
        _OUTCOMES[item.nodeid] = {"nodeid": item.nodeid, "case": case.name if case is not None else item.name,
                                  "op": case.op if case is not None else None,
                                  "tags": list(case.tags) if case is not None else [],
                                  "provider": params.get("provider"), "outcome": None, "reason": None}


def pytest_deselected(items):
    for item in items:  # -k / -m deselections are not part of the run
        _OUTCOMES.pop(item.nodeid, None)


def _reason(report) -> str:
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:  # skip: (file, line, "Skipped: reason")
        return str(lr[2]).removeprefix("Skipped: ")
    crash = getattr(lr, "reprcrash", None)
    if crash is not None:
        return crash.message
    return str(lr).strip().splitlines()[-1] if lr else ""


def pytest_runtest_logreport(report):
    rec = _OUTCOMES.setdefault(report.nodeid, {"nodeid": report.nodeid, "case": report.nodeid,
                                               "op": None, "tags": [], "provider": None,
                                               "outcome": None, "reason": None})
    if rec["outcome"] in ("failed", "skipped"):
        return  # keep the first non-pass (a teardown error after a failure adds nothing)
    if report.skipped:
        rec.update(outcome="skipped", reason=_reason(report))
    elif report.failed:
        rec.update(outcome="failed", reason=f"{report.when}: {_reason(report)}")
    elif report.when == "call":
        rec["outcome"] = "passed"


def pytest_sessionfinish(session, exitstatus):
    path = session.config.getoption("--outcomes-json")
    if path:
        import json

        Path(path).write_text(json.dumps(list(_OUTCOMES.values()), indent=1))


# ---- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def device(request) -> torch.device:
    """The torch device of the run (skips everything when CUDA is asked for but absent)."""
    name = request.config.getoption("--device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"--device cuda but torch {torch.__version__} sees no CUDA device")
    return torch.device(name)


@pytest.fixture(scope="session")
def quick(request) -> bool:
    return bool(request.config.getoption("--quick"))


@pytest.fixture
def runner(benchmark, device) -> Runner:
    return Runner(benchmark, device)


@pytest.fixture(autouse=True)
def backend_switch(request):
    """``FASTASD_BACKEND`` for the test's provider: ``native`` for ``ours``, ``reference`` for
    ``reference-eager`` (so the pipeline's whole system follows), unchanged otherwise."""
    provider = getattr(getattr(request.node, "callspec", None), "params", {}).get("provider")
    if provider is None or provider in (REF_COMPILED, MATMUL_MAX):
        yield
        return
    with ops_provider(provider):
        yield
