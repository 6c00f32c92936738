"""Run fastasd's benchmarks and write ``benchmarks/results/<device>.json`` and ``.md``.

The one command (see README.md, "Benchmarks")::

    python benchmarks/run.py --device cpu --subset stft,loss,search,pipeline --sizes paper,target

``--subset``: any of ``stft`` (stft_magnitude), ``loss`` (subcluster_adacos), ``search``
(min_cosine_distance), ``pipeline`` (training step, epoch, scoring from WAV files), ``archive``
(batch scoring from a zip vs the model's pure forward: ``bench_archive.py`` in a subprocess, 2,000
10-s clips, or 64 with ``--quick``; it writes its own ``results/archive_<device>.json|md``).
``--sizes``: any of ``paper``, ``target``, ``large`` (large is opt-in: B=1024 10-s clips).
``--quick``: tiny rounds to check the harness; written as ``<device>-quick.json|md``.
``-k EXPR``: pytest's selection (e.g. ``-k ours`` or ``-k "stft and 32"``; ``=`` is not allowed).
``--device all``: cpu, then cuda when visible. ``--note TEXT``: a line on top of the .md.

What it does: measures the machine's ceilings once (memory bandwidth from a large copy, float32
matmul rate: ``floors.measure_ceilings``), runs pytest-benchmark on the chosen ``bench_*.py``
files in this process (``--benchmark-json`` to a temporary file), then writes per case and
provider: median and IQR, speedups over the reference (eager and compiled; on CUDA also over
the compiled matmul+max search), achieved GB/s and GFLOP/s, the floor and how far above it the
median is, skipped/failed providers with their reasons, the performance targets, and the run's
device, torch/CUDA versions, commit (and whether the tree is dirty) and date.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
for _p in (str(BENCH_DIR), str(REPO)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

SUBSETS = {
    "stft": "bench_stft_magnitude.py",
    "loss": "bench_subcluster_adacos.py",
    "search": "bench_min_cosine_distance.py",
    "pipeline": "bench_pipeline.py",
    "archive": "bench_archive.py",  # a standalone script, not pytest: run as a subprocess
}
SCHEMA = "fastasd.benchmarks/1"
BASELINES = ("reference-eager", "reference-compiled", "matmul+max-compiled")

# The performance targets of the benchmark issue: (device type, case, provider, metric, op, bound, text).
# Metrics: speedup_vs.<provider>, x_floor (median / floor), gpu_time_s (CUDA graph replay if
# captured, else CUDA events).
TARGETS = [
    ("cpu", "stft_magnitude[B=32,N=160000]", "ours", "speedup_vs.reference-eager", ">=", 3.0,
     "CPU, 2 cores: stft_magnitude at B=32 >= 3x reference eager"),
    ("cpu", "subcluster_adacos[fwd+bwd,B=64,D=256,CK=5472]", "ours", "speedup_vs.reference-eager", ">=", 2.0,
     "CPU, 2 cores: subcluster_adacos fwd+bwd at B=64 >= 2x reference eager"),
    ("cpu", "min_cosine_distance[N=20000,G=42,R=26,D=256]", "ours", "speedup_vs.reference-eager", ">=", 5.0,
     "CPU, 2 cores: min_cosine_distance, 20k queries over 42x26 >= 5x reference eager"),
    ("cpu", "score_wav[clips=64,10s]", "ours", "speedup_vs.reference-eager", ">=", 1.5,
     "CPU, 2 cores: end-to-end scoring from WAV >= 1.5x reference"),
    ("cuda", "stft_magnitude[B=1024,N=160000]", "ours", "x_floor", "<=", 1.5,
     "H100: stft_magnitude at B=1024 within 1.5x of the memory floor"),
    ("cuda", "stft_magnitude[B=1024,N=160000]", "ours", "speedup_vs.reference-compiled", ">=", 2.0,
     "H100: stft_magnitude at B=1024 >= 2x reference compiled"),
    ("cuda", "subcluster_adacos[fwd+bwd,B=64,D=256,CK=5472]", "ours", "gpu_time_s", "<=", 20e-6,
     "H100: subcluster_adacos fwd+bwd at B=64 <= 20 us GPU time"),
    ("cuda", "subcluster_adacos[fwd+bwd,B=64,D=256,CK=5472]", "ours", "speedup_vs.reference-compiled", ">=", 3.0,
     "H100: subcluster_adacos fwd+bwd at B=64 >= 3x reference compiled"),
    ("cuda", "min_cosine_distance[N=20000,G=42,R=26,D=256]", "ours", "x_floor", "<=", 2.0,
     "H100: min_cosine_distance (20k x 42x26) within 2x of its floor"),
    ("cuda", "min_cosine_distance[N=20000,G=42,R=26,D=256]", "ours", "speedup_vs.matmul+max-compiled", ">", 1.0,
     "H100: min_cosine_distance (20k x 42x26) ahead of compiled matmul+max"),
    ("cuda", "min_cosine_distance[N=100000,G=42,R=1000,D=256]", "ours", "x_floor", "<=", 2.0,
     "H100: min_cosine_distance (100k x 42x1000) within 2x of its floor"),
    ("cuda", "min_cosine_distance[N=100000,G=42,R=1000,D=256]", "ours", "speedup_vs.matmul+max-compiled", ">", 1.0,
     "H100: min_cosine_distance (100k x 42x1000) ahead of compiled matmul+max"),
]


# ---- metadata ------------------------------------------------------------------------------------

def slug(text: str) -> str:
    """Lower-case, ``[a-z0-9-]`` only: ``"Intel(R) Xeon(R) Processor"`` -> ``intel-xeon-processor``."""
    text = re.sub(r"\((r|tm|c)\)", "", text, flags=re.I)
    text = re.sub(r"@.*$", "", text)
    text = re.sub(r"\bcpu\b", "", text, flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def device_info(device: str) -> dict:
    """Name (used for the result file names) and description of the benchmarked device."""
    import torch

    if device == "cuda":
        i = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(i)
        name = torch.cuda.get_device_name(i)
        return {"type": "cuda", "name": slug(name), "description": name,
                "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                "memory_GiB": round(props.total_memory / 2**30, 1),
                "multiprocessors": props.multi_processor_count,
                "host_cpu": cpu_model(), "host_cores": cpu_cores(), "host_cpu_flags": _host_flags()}
    from fastasd.precision import cpu_description

    cores = cpu_cores()
    model = cpu_model()
    return {"type": "cpu", "name": f"cpu-{slug(model)}-{cores}cores", "description": model,
            "cores": cores, "torch_threads": torch.get_num_threads(), "cpu": cpu_description()}


def _host_flags() -> dict:
    from fastasd.precision import cpu_description

    return cpu_description()


def _git(*args: str) -> str | None:
    try:  # --no-optional-locks: never write the index (read-only use of git)
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()
    except Exception:
        return None


def short_commit() -> str:
    """HEAD's abbreviated hash, or "" outside a git checkout (for the other benchmarks' headers)."""
    return _git("rev-parse", "--short", "HEAD") or ""


def commit_info() -> dict:
    sha = _git("rev-parse", "HEAD")
    # results files are no change to what is measured (a rerun finds the last run's files)
    status = _git("status", "--porcelain", "--untracked-files=normal", "--", ".", ":!benchmarks/results")
    return {"sha": sha, "dirty": None if status is None else bool(status),
            "changed_files": None if status is None else len(status.splitlines())}


def versions() -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "cudnn": None, "platform": platform.platform()}
    if torch.cuda.is_available():
        out["cudnn"] = torch.backends.cudnn.version()
    try:
        import pytest_benchmark

        out["pytest_benchmark"] = pytest_benchmark.__version__
    except Exception:
        pass
    return out


def build_info() -> dict | None:
    """The extension's build metadata (``fastasd/_build_info.json``), if it was built."""
    p = REPO / "fastasd" / "_build_info.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


# ---- results ------------------------------------------------------------------------------------

def _get(d: dict, dotted: str):
    for k in dotted.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def build_rows(bench_json: dict, outcomes: list[dict], ceilings: dict | None) -> list[dict]:
    """One row per (case, provider): outcome, stats, speedups and floors."""
    from floors import Cost, floor_entry
    from sizes import CASES_BY_NAME

    stats_by_node = {b["fullname"]: b for b in bench_json.get("benchmarks", [])}
    rows = []
    for oc in outcomes:
        b = stats_by_node.get(oc["nodeid"])
        row = {"case": oc["case"], "op": oc["op"], "tags": oc["tags"], "provider": oc["provider"],
               "status": {"passed": "ok"}.get(oc["outcome"], oc["outcome"] or "not run"),
               "reason": oc["reason"], "nodeid": oc["nodeid"]}
        if b is not None:
            st, extra = b["stats"], dict(b.get("extra_info", {}))
            row.update(median_s=st["median"], iqr_s=st["iqr"], q1_s=st["q1"], q3_s=st["q3"],
                       min_s=st["min"], max_s=st["max"], mean_s=st["mean"], stddev_s=st["stddev"],
                       rounds=st["rounds"])
            for k in ("params", "first_call_s", "warmup_rounds", "input_sets", "threads", "native_ops",
                      "check_rel_error", "gpu_event_median_s", "cuda_graph_median_s",
                      "cuda_graph_calls_per_replay", "cuda_graph_error", "items_per_call", "items",
                      "batch_size", "num_workers", "query_order", "precision", "flops"):
                if k in extra:
                    row[k] = extra[k]
            if row.get("items_per_call"):
                row["items_per_s"] = row["items_per_call"] / st["median"]
            gpu = extra.get("cuda_graph_median_s") or extra.get("gpu_event_median_s")
            if gpu:
                row["gpu_time_s"] = gpu
        case = CASES_BY_NAME.get(oc["case"])
        cost = case.cost() if case is not None else None
        if cost is None and row.get("flops"):  # pipeline cases: the network's FLOPs, no byte floor
            cost = Cost(bytes=0.0, flops=row["flops"])
        if cost is not None:
            # On CUDA the floor compares with the GPU time when measured (no host sync overhead).
            t = row.get("gpu_time_s") or row.get("median_s")
            row.update(floor_entry(cost, ceilings or {}, t, bf16=row.get("precision") == "bfloat16"))
            if "gpu_time_s" in row:
                row["floor_basis"] = "gpu_time_s"
            elif "median_s" in row:
                row["floor_basis"] = "median_s"
        rows.append(row)
    # speedups: baseline median / this median, within each case
    by_case: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_case.setdefault(r["case"], {})[r["provider"]] = r
    for provs in by_case.values():
        for r in provs.values():
            if "median_s" not in r:
                continue
            r["speedup_vs"] = {base: provs[base]["median_s"] / r["median_s"]
                               for base in BASELINES if base in provs and "median_s" in provs[base]}
            if r["provider"] == "ours-bf16" and "median_s" in provs.get("ours", {}):
                r["speedup_vs"]["ours"] = provs["ours"]["median_s"] / r["median_s"]
            gpu_base = {base: provs[base]["gpu_time_s"] / r["gpu_time_s"]
                        for base in BASELINES if base in provs and provs[base].get("gpu_time_s")
                        and r.get("gpu_time_s")}
            if gpu_base:
                r["gpu_speedup_vs"] = gpu_base
    return rows


def evaluate_targets(rows: list[dict], dev: dict) -> list[dict]:
    """The issue's performance targets that apply to this device type, with their status."""
    out = []
    by_key = {(r["case"], r["provider"]): r for r in rows}
    for dtype, case, prov, metric, opname, bound, text in TARGETS:
        if dtype != dev["type"]:
            continue
        r = by_key.get((case, prov))
        value = _get(r, metric) if r is not None else None
        if r is None:
            status = "not run"
        elif value is None:
            status = f"not measured ({r['status']}{': ' + r['reason'] if r.get('reason') else ''})"
        else:
            ok = {">=": value >= bound, "<=": value <= bound, ">": value > bound}[opname]
            status = "met" if ok else "missed"
        note = ""
        if dtype == "cpu" and dev.get("torch_threads") != 2:
            note = f"measured with {dev.get('torch_threads')} threads, the target says 2 cores"
        if dtype == "cuda" and "h100" not in dev["name"]:
            note = f"measured on {dev['description']}, the target says H100"
        out.append({"target": text, "case": case, "provider": prov, "metric": metric, "op": opname,
                    "bound": bound, "value": value, "status": status, "note": note})
    return out


def fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _num(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def _metric_str(metric: str, v) -> str:
    if v is None:
        return "-"
    if metric == "gpu_time_s":
        return fmt_time(v)
    return f"{v:.2f}x" if metric.startswith("speedup") or metric == "x_floor" else f"{v:.3g}"


def render_md(res: dict) -> str:
    dev, ver, com, ceil = res["device"], res["versions"], res["commit"], res.get("ceilings")
    L = [f"# fastasd benchmarks: {dev['name']}", ""]
    if res.get("note"):
        L += [f"**Note: {res['note']}**", ""]
    if res["options"]["quick"]:
        L += ["**Quick run (`--quick`): tiny rounds to check the harness; the numbers mean nothing.**", ""]
    L += [f"- Device: {dev['description']}"
          + (f", {dev['cores']} cores, torch threads {dev['torch_threads']}" if dev["type"] == "cpu"
             else f" (sm {dev.get('capability')}, {dev.get('memory_GiB')} GiB); host {dev.get('host_cpu')}"),
          f"- torch {ver['torch']}, CUDA {ver['cuda'] or '(none)'}"
          + (f", cuDNN {ver['cudnn']}" if ver.get("cudnn") else "") + f", Python {ver['python']}",
          f"- Commit {com['sha'] or '(unknown)'}"
          + (" (working tree dirty: uncommitted changes measured)" if com.get("dirty") else
             " (clean tree)" if com.get("dirty") is False else ""),
          f"- Date {res['date']}; wall time {res['wall_s']:.0f} s; command `{res['command']}`",
          "- Backend switch: `ours` runs with FASTASD_BACKEND=native, the pipeline's `reference-eager` "
          "with FASTASD_BACKEND=reference",
          f"- At start: {res['backend']}; native build: "
          + (f"CPU {res['build']['with_cpu']}, CUDA {res['build']['with_cuda']}, sources "
             f"{', '.join(Path(s).name for s in res['build'].get('sources', []))}"
             if res.get("build") else "not built (no fastasd/_build_info.json)")]
    if ceil:
        L.append(f"- Ceilings (measured now): memory {ceil['memory_GBps']:.1f} GB/s ({ceil['memory_method']}); "
                 f"float32 matmul {ceil['matmul_GFLOPps']:.1f} GFLOP/s ({ceil['matmul_method']}, "
                 f"precision '{ceil['float32_matmul_precision']}')"
                 + (f"; bfloat16 matmul {ceil['matmul_bf16_GFLOPps']:.1f} GFLOP/s"
                    if ceil.get("matmul_bf16_GFLOPps") else ""))
    cpu = dev.get("cpu") or dev.get("host_cpu_flags")
    if cpu:
        L.append(f"- CPU flags: {' '.join(cpu['key_flags']) or '(none of note)'}; bfloat16 units: "
                 f"{', '.join(k for k, v in cpu['bf16_units'].items() if v) or 'none'}; `--precision auto` "
                 f"chooses {cpu['auto_precision']} here (fastasd.precision); every flag is in the .json")
    L += ["", "Speedup columns: baseline median / this median (> 1 = faster than the baseline). "
          "x floor: time / floor, floor = max(bytes / memory ceiling, FLOPs / matmul ceiling) "
          "(1.00x = at the floor; below 1.00x the measured ceiling is too low, e.g. a busy machine; "
          "formulas in benchmarks/NOTES.md). Pipeline rows (training step, epoch, scoring): the "
          "floor is the network's convolution and matmul FLOPs at the matmul ceiling of the row's "
          "precision (bfloat16 for `ours-bf16`, float32 otherwise); `vs ours (f32)`: the bfloat16 "
          "row against ours in float32"
          + ("; on CUDA the floor and GB/s use the GPU time (graph replay if captured, else events)."
             if dev["type"] == "cuda" else "."), ""]

    if res["targets"]:
        L += ["## Targets", "", "| target | measured | status | note |", "|---|---:|---|---|"]
        for t in res["targets"]:
            L.append(f"| {t['target']} | {_metric_str(t['metric'], t['value'])} | {t['status']} | {t['note']} |")
        L.append("")

    rows = res["rows"]
    cuda = dev["type"] == "cuda"
    ops_order = []
    for r in rows:
        if r["op"] not in ops_order:
            ops_order.append(r["op"])
    for op in ops_order:
        L += [f"## {op}", ""]
        measured = [r for r in rows if r["op"] == op and "median_s" in r]
        if not measured:
            L += ["Nothing measured (see Skipped and failed).", ""]
            continue
        pipeline = op in ("train_step", "train_epoch", "score_wav")
        head = ["case", "provider", "median", "IQR", "rounds", "vs eager"] + ([] if pipeline else ["vs compiled"])
        if any(r["provider"] == "ours-bf16" for r in measured):
            head.append("vs ours (f32)")
        if any(r["provider"] == "matmul+max-compiled" for r in rows if r["op"] == op):
            head.append("vs matmul+max")
        if cuda and not pipeline:
            head += ["GPU time", "vs eager (GPU)", "vs compiled (GPU)"]
        head += ["clips/s", "GFLOP/s", "x floor"] if pipeline else ["GB/s", "GFLOP/s", "x floor (bound)"]
        head.append("first call")
        L += ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|"]
        for r in measured:
            sv = r.get("speedup_vs", {})
            cells = [r["case"].split("[", 1)[1].rstrip("]"), r["provider"], fmt_time(r["median_s"]),
                     fmt_time(r["iqr_s"]), str(r["rounds"]), _x(sv.get("reference-eager"))]
            if not pipeline:
                cells.append(_x(sv.get("reference-compiled")))
            if "vs ours (f32)" in head:
                cells.append(_x(sv.get("ours")))
            if "vs matmul+max" in head:
                cells.append(_x(sv.get("matmul+max-compiled")))
            if cuda and not pipeline:
                gv = r.get("gpu_speedup_vs", {})
                cells += [fmt_time(r.get("gpu_time_s")), _x(gv.get("reference-eager")),
                          _x(gv.get("reference-compiled"))]
            if pipeline:  # floor: the network's FLOPs at the matmul ceiling of the row's precision
                cells += [_num(r.get("items_per_s")), _num(r.get("achieved_GFLOPps")),
                          f"{r['x_floor']:.2f}x" if r.get("x_floor") else "-"]
            else:
                fl = f"{r['x_floor']:.2f}x ({r['bound']})" if r.get("x_floor") else "-"
                cells += [_num(r.get("achieved_GBps")), _num(r.get("achieved_GFLOPps")), fl]
            cells.append(fmt_time(r.get("first_call_s")))
            L.append("| " + " | ".join(cells) + " |")
        L.append("")

    bad = [r for r in rows if r["status"] != "ok"]
    L += ["## Skipped and failed", ""]
    if bad:
        L += ["| case | provider | status | reason |", "|---|---|---|---|"]
        for r in bad:
            reason = (r.get("reason") or "").replace("|", "\\|").replace("\n", " ")
            L.append(f"| {r['case']} | {r['provider']} | {r['status']} | {reason} |")
    else:
        L.append("None: every provider of every selected case ran.")
    L.append("")
    notes = [r for r in rows if r.get("cuda_graph_error")]
    if notes:
        L += ["CUDA graph capture failed (GPU time from events instead):", ""]
        L += [f"- {r['case']} {r['provider']}: {r['cuda_graph_error']}" for r in notes]
        L.append("")
    return "\n".join(L)


# ---- main ----------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "all"),
                   help="all: cpu, then cuda when a GPU is visible (one result file each)")
    p.add_argument("--subset", default=",".join(SUBSETS),
                   help=f"comma list of {', '.join(SUBSETS)} (default: all)")
    p.add_argument("--sizes", default="paper,target", help="comma list of paper, target, large")
    p.add_argument("--quick", action="store_true", help="tiny rounds: check the harness end to end")
    p.add_argument("--out-dir", default=str(BENCH_DIR / "results"), help="where the .json and .md go")
    p.add_argument("--name", default=None, help="result file name (default: the device name)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before running")
    p.add_argument("-k", dest="keyword", default=None, help="pytest -k expression to select cases")
    p.add_argument("--no-ceilings", action="store_true", help="skip measuring the machine ceilings")
    p.add_argument("--note", default=None, help="a line for the top of the .md (e.g. the machine's state)")
    p.add_argument("--tune-allocator", action="store_true",
                   help="call fastasd.tune_allocator() first (glibc malloc settings the CLI uses for train/score; "
                        "default: the library as imported)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    subset = [s.strip() for s in args.subset.split(",") if s.strip()]
    unknown = [s for s in subset if s not in SUBSETS]
    if unknown or not subset:
        print(f"run.py: --subset: unknown {unknown or '(empty)'}; choose from {', '.join(SUBSETS)}",
              file=sys.stderr)
        return 2
    import torch

    if args.device == "all":  # one process per device: pytest runs once per process
        rest, it = [], iter(sys.argv[1:] if argv is None else argv)
        for a in it:  # drop "--device all" / "--device=all"
            if a == "--device":
                next(it, None)
            elif not a.startswith("--device="):
                rest.append(a)
        codes = [subprocess.run([sys.executable, __file__, "--device", d, *rest]).returncode
                 for d in ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])]
        return max(codes)
    code_archive = 0
    if "archive" in subset:  # the archive benchmark writes its own results file
        cmd = [sys.executable, str(BENCH_DIR / SUBSETS["archive"]), "--device", args.device]
        if args.quick:
            cmd += ["--count", "64", "--tag", f"{args.device}-quick"]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        print(f"run.py: {' '.join(cmd)}", file=sys.stderr)
        code_archive = subprocess.run(cmd).returncode
        subset = [s for s in subset if s != "archive"]
        if not subset:
            return code_archive
    import pytest

    from fastasd._io import atomic_write_json, atomic_write_text
    from floors import measure_ceilings
    from harness import backend_description

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tune_allocator:
        from fastasd.allocator import tune_allocator

        applied = tune_allocator()
        args.note = "; ".join(filter(None, [args.note, "fastasd.tune_allocator() " + (
            "applied (large blocks from glibc's heap)" if applied else "NOT applied (not glibc, or turned off)")]))
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"run.py: --device cuda but torch {torch.__version__} (CUDA {torch.version.cuda}) sees "
              f"no CUDA device", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    dev = device_info(args.device)
    ceilings = None
    if not args.no_ceilings:
        print(f"run.py: measuring the ceilings of {dev['name']} ...", file=sys.stderr)
        ceilings = measure_ceilings(args.device, quick=args.quick)
        print(f"run.py: memory {ceilings['memory_GBps']:.1f} GB/s, matmul "
              f"{ceilings['matmul_GFLOPps']:.1f} GFLOP/s", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="fastasd-bench-") as tmp:
        bench_json, outcomes_json = Path(tmp) / "bench.json", Path(tmp) / "outcomes.json"
        pytest_args = [str(BENCH_DIR / SUBSETS[s]) for s in subset] + [
            "-o", "python_files=bench_*.py", "-p", "no:cacheprovider", "-q", "-rsf",
            "--device", args.device, "--sizes", args.sizes, "--benchmark-json", str(bench_json),
            "--outcomes-json", str(outcomes_json), "--benchmark-columns", "median,iqr,rounds",
            "--benchmark-sort", "name"]
        if args.quick:
            pytest_args.append("--quick")
        if args.keyword:
            pytest_args += ["-k", args.keyword]
        code = int(pytest.main(pytest_args))
        bench = json.loads(bench_json.read_text()) if bench_json.exists() else {}
        outcomes = json.loads(outcomes_json.read_text()) if outcomes_json.exists() else []

    rows = build_rows(bench, outcomes, ceilings)
    res = {
        "schema": SCHEMA,
        "device": dev,
        "versions": versions(),
        "commit": commit_info(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]),
        "options": {"device": args.device, "subset": subset, "sizes": args.sizes.split(","),
                    "quick": args.quick, "keyword": args.keyword, "threads": torch.get_num_threads()},
        "note": args.note,
        "backend": backend_description(),
        "build": build_info(),
        "ceilings": ceilings,
        "pytest_exit_code": code,
        "wall_s": time.perf_counter() - t_start,
        "rows": rows,
    }
    res["targets"] = evaluate_targets(rows, dev)
    name = args.name or (dev["name"] + ("-quick" if args.quick else ""))
    out = Path(args.out_dir)
    atomic_write_json(out / f"{name}.json", res)
    atomic_write_text(out / f"{name}.md", render_md(res))
    n_ok = sum(r["status"] == "ok" for r in rows)
    print(f"run.py: {n_ok}/{len(rows)} cases ran; wrote {out / (name + '.json')} and "
          f"{out / (name + '.md')} ({res['wall_s']:.0f} s)", file=sys.stderr)
    # pytest exit 5 = nothing collected (e.g. -k matched nothing): an error for a benchmark run
    return max(code if code != 5 else 1, code_archive)


if __name__ == "__main__":
    sys.exit(main())
