"""Scoring throughput: the ONNX export on onnxruntime (CPU) against the PyTorch detector.

For each clip length in ``--seconds``, the detector is the paper's network (``Config(clip_seconds=
s)``, random weights: the cost of a forward pass does not depend on them) with a cosine backend
fitted on random embeddings (:func:`bench_archive.random_detector`). It is exported with
:func:`fastasd.export.export_onnx` (timed), then the same batch of ``--batch`` clips already in
memory is scored ``--rounds`` times by each, alternating:

* **pytorch**: ``Detector.score_waveforms`` as ``fastasd score MODEL --precision float32`` runs it
  (the network fused for inference, fastasd's native operators), ``torch.set_num_threads(--threads)``;
* **pytorch-bf16**: the same with ``precision="bfloat16"`` (the fused network's convolutions in
  bfloat16), what ``--precision auto`` runs on a CPU with bfloat16 units that gain;
* **onnxruntime**: :class:`fastasd.export.OnnxDetector` (CPU provider, ``intra_op_num_threads =
  --threads``), as ``fastasd score --onnx`` runs it.

Decoding is not included (it is the same pipeline for both). Medians of the rounds; the largest
score difference between the two is reported too. Results go to
``benchmarks/results/onnx_<tag>.json`` and ``.md``::

    python benchmarks/bench_onnx.py                       # 10-s and 2-s clips, batch 32, 2 threads
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_archive import device_name, random_detector  # noqa: E402
from run import short_commit  # noqa: E402

from fastasd._io import atomic_write_json, atomic_write_text  # noqa: E402
from fastasd.precision import cpu_description  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def measure(seconds: float, batch: int, rounds: int, threads: int) -> dict:
    from fastasd.export import export_onnx, load_onnx

    det = random_detector(seconds, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "detector.onnx"
        t0 = time.perf_counter()
        export_onnx(det, path)
        export_s = time.perf_counter() - t0
        size_mb = path.stat().st_size / 1e6
        onnx_det = load_onnx(path, threads=threads)
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal((batch, det.num_samples))).astype(np.float32)
    xt = torch.from_numpy(x)
    mts, secs = ["bench"] * batch, ["00"] * batch
    runs = {"pytorch": lambda: det.score_waveforms(xt, mts, secs, precision="float32")[0],
            "pytorch-bf16": lambda: det.score_waveforms(xt, mts, secs, precision="bfloat16")[0],
            "onnxruntime": lambda: onnx_det.score_waveforms(x, mts, secs)[0]}
    out = {name: fn() for name, fn in runs.items()}  # warm-up (and the fused module is built)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    result = {"clip_seconds": seconds, "batch": batch, "rounds": rounds, "export_seconds": round(export_s, 2),
              "onnx_megabytes": round(size_mb, 2),
              "max_abs_score_diff": float(np.max(np.abs(out["pytorch"] - out["onnxruntime"])))}
    for name, ts in times.items():
        med = statistics.median(ts)
        result[name] = {"median_seconds": med, "clips_per_s": batch / med, "seconds": ts}
    result["onnx_vs_pytorch"] = result["onnxruntime"]["clips_per_s"] / result["pytorch"]["clips_per_s"]
    result["onnx_vs_pytorch_bf16"] = result["onnxruntime"]["clips_per_s"] / result["pytorch-bf16"]["clips_per_s"]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", default="10,2", help="clip lengths, comma-separated (default 10,2)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", default="cpu")
    args = p.parse_args(argv)
    import onnxruntime

    torch.set_num_threads(args.threads)
    cases = [measure(float(s), args.batch, args.rounds, args.threads) for s in args.seconds.split(",")]
    commit = short_commit()
    result = {"benchmark": "onnx", "command": "python benchmarks/bench_onnx.py " + " ".join(argv or sys.argv[1:]),
              "device_name": device_name(torch.device("cpu")), "threads": args.threads,
              "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "commit": commit,
              "model": "paper network (Config(clip_seconds=s)), random weights, 1 member, cosine backend",
              "cpu": cpu_description(),
              "cases": cases}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / f"onnx_{args.tag}.json", result)
    lines = [f"# ONNX export on onnxruntime vs PyTorch, scoring ({result['device_name']})", "",
             f"`{result['command']}`; commit {commit}, torch {torch.__version__}, onnxruntime "
             f"{onnxruntime.__version__}, {args.threads} threads each. {result['model']}; the same batch "
             "of clips in memory (no decoding), medians of the rounds.", "",
             f"CPU flags: {' '.join(result['cpu']['key_flags'])}.", "",
             "| clip | batch | PyTorch clips/s | PyTorch bfloat16 clips/s | onnxruntime clips/s | ONNX / PyTorch "
             "| ONNX / PyTorch bf16 | max abs score diff (ONNX vs PyTorch float32) | export s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cases:
        lines.append(f"| {c['clip_seconds']:g} s | {c['batch']} | {c['pytorch']['clips_per_s']:.1f} | "
                     f"{c['pytorch-bf16']['clips_per_s']:.1f} | "
                     f"{c['onnxruntime']['clips_per_s']:.1f} | {c['onnx_vs_pytorch']:.2f}x | "
                     f"{c['onnx_vs_pytorch_bf16']:.2f}x | "
                     f"{c['max_abs_score_diff']:.2g} | {c['export_seconds']:.1f} |")
    atomic_write_text(RESULTS / f"onnx_{args.tag}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({c["clip_seconds"]: round(c["onnx_vs_pytorch"], 3) for c in cases}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
