"""bfloat16 against float32 on the demo-sized synthetic set: scoring accuracy and CPU training.

For each seed and each training precision (``--train``), the paper's system is trained with the
``demo`` preset (``mixed_precision`` on for bfloat16: autocast and channels-last on a CPU that
gains, see :mod:`fastasd.precision`), and its backend is refitted once for balanced scores (the
``balanced`` preset's, no retraining). Every detector then scores the test clips (decoded once)
in both scoring precisions. Reported:

* **scoring**: per detector and backend, the official score in float32 and bfloat16 and their
  difference (the issue's bound: 0.002), the cosine similarity of the bfloat16 embeddings to the
  float32 ones (minimum and mean over clips and members), the largest |score difference| (also
  relative to the largest float32 score) and the decisions that flip;
* **training**: seconds and clips/s per training, the per-epoch mean losses of the bfloat16
  training against the float32 one of the same seed (relative difference), and the official
  scores (float32 scoring) over the seeds, mean and standard deviation per training precision.

Usage (about 9 minutes on a 2-core CPU for 3 seeds)::

    python benchmarks/precision_check.py --seeds 0,1,2 --tag cpu
    python benchmarks/precision_check.py --quick          # seconds: checks the script only

Writes ``benchmarks/results/precision_<tag>.json`` and ``.md`` with the command, the CPU (model
name and flags) and the torch version.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import fastasd
from fastasd.cli.demo import DEMO_SYNTH, QUICK_OVERRIDES, QUICK_SYNTH
from fastasd.config import Config
from fastasd.data.dataset import iter_audio_batches
from fastasd.data.layout import discover
from fastasd.data.synth import generate
from fastasd.metrics import evaluate_records
from fastasd.precision import cpu_description
from fastasd.training.checkpoint import checkpoint_path, load_checkpoint

RESULTS = Path(__file__).resolve().parent / "results"
BOUND = 0.002  # the bound on the official score's change (a fraction, 0.2 points)


def decode(clips, config: Config) -> np.ndarray:
    parts = [w for _, w in iter_audio_batches(clips, 64, config.num_samples, sample_rate=config.sample_rate,
                                              channel=config.channel)]
    return np.concatenate(parts)


def score_all(det, waves: np.ndarray, clips, precision: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Summed scores and each member's embeddings of every test clip in ``precision``."""
    mts, secs = [c.machine_type for c in clips], [c.section for c in clips]
    scores, embs = [], [[] for _ in det.models]
    for i in range(0, len(clips), 64):
        x = torch.from_numpy(waves[i:i + 64])
        scores.append(det.score_waveforms(x, mts[i:i + 64], secs[i:i + 64], precision=precision)[0])
        for m in range(len(det.models)):
            embs[m].append(det.embed_waveforms(x, member=m, precision=precision))
    return np.concatenate(scores), [torch.cat(e) for e in embs]


def official(clips, scores: np.ndarray) -> float:
    records = [{"file_name": c.file_name, "machine_type": c.machine_type, "section": c.section,
                "domain": c.domain, "label": c.label, "score": float(s)} for c, s in zip(clips, scores)]
    return float(evaluate_records(records).official_score)


def compare_precisions(det, waves, clips) -> dict:
    s32, e32 = score_all(det, waves, clips, "float32")
    s16, e16 = score_all(det, waves, clips, "bfloat16")
    cos = torch.cat([torch.nn.functional.cosine_similarity(a, b, dim=1) for a, b in zip(e16, e32)])
    thr = np.array([det.thresholds[f"{c.machine_type}/{c.section}"] for c in clips])
    o32, o16 = official(clips, s32), official(clips, s16)
    return {"official_float32": o32, "official_bfloat16": o16, "official_diff": o16 - o32,
            "cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
            "max_abs_score_diff": float(np.max(np.abs(s16 - s32))),
            "max_abs_score_diff_rel": float(np.max(np.abs(s16 - s32)) / np.max(np.abs(s32))),
            "decisions_flipped": int(np.sum((s16 > thr) != (s32 > thr))), "clips": len(clips)}


def epoch_losses(out_dir: Path) -> list[float]:
    hist = load_checkpoint(checkpoint_path(out_dir, 0))["history"]
    return [float(h["loss"]) for h in hist]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds (default 0)")
    ap.add_argument("--train", default="float32,bfloat16", help="training precisions to run")
    ap.add_argument("--data", help="the demo-sized set (synthesized there if missing; default: a temp folder)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="the demo's --quick sizes: checks the script")
    ap.add_argument("--tag", default="cpu")
    ap.add_argument("--report", metavar="JSON", help="only rewrite the .md of an earlier run's .json")
    args = ap.parse_args(argv)
    if args.report:
        path = Path(args.report)
        path.with_suffix(".md").write_text(report(json.loads(path.read_text())))
        return 0
    torch.set_num_threads(args.threads)
    fastasd.tune_allocator()
    sizes = QUICK_SYNTH if args.quick else DEMO_SYNTH
    tmp = Path(tempfile.mkdtemp(prefix="fastasd_precision_"))
    data = Path(args.data) if args.data else tmp / "data"
    if not (data / "fan").is_dir():
        generate(data, seed=0, **sizes)
    clips = discover(data, splits=("test",))
    base = Config.preset("demo").replace(device="cpu", **(QUICK_OVERRIDES if args.quick else {}))
    waves = decode(clips, base)
    seeds = [int(s) for s in args.seeds.split(",")]
    trains = args.train.split(",")
    runs = []
    for seed in seeds:
        for tp in trains:
            cfg = base.replace(seed=seed, mixed_precision=tp == "bfloat16")
            out = tmp / f"model_{tp}_{seed}"
            t = time.perf_counter()
            det = fastasd.train(data, out_dir=out, config=cfg, progress=False)
            seconds = time.perf_counter() - t
            history = det.info["history"][0]
            run = {"seed": seed, "train_precision": tp, "train_seconds": seconds,
                   "train_clips_per_s": float(np.mean([h["clips_per_second"] for h in history])),
                   "epoch_losses": epoch_losses(out), "n_train_clips": det.info["n_train_clips"],
                   "paper": compare_precisions(det, waves, clips)}
            balanced = det.refit_backend(data, preset="balanced", progress=False)
            run["balanced"] = compare_precisions(balanced, waves, clips)
            runs.append(run)
            print(json.dumps({k: v for k, v in run.items() if k != "epoch_losses"}), flush=True)
    result = {"command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
              "cpu": cpu_description(), "torch": torch.__version__, "threads": args.threads,
              "sizes": sizes, "bound": BOUND, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    name = f"precision_{args.tag}{'-quick' if args.quick else ''}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(report(result))
    print(report(result))
    return 0


def _mean_std(values: list[float]) -> str:
    a = 100 * np.asarray(values)
    return f"{a.mean():.2f} ± {a.std(ddof=1):.2f}" if len(a) > 1 else f"{a.mean():.2f}"


def report(result: dict) -> str:
    cpu = result["cpu"]
    lines = ["# bfloat16 against float32: scoring accuracy and CPU training (demo-sized set)", "",
             f"`{result['command']}`", "",
             f"CPU: {cpu['model']}, {result['threads']} threads; bfloat16 flags: "
             f"{', '.join(k for k, v in cpu['bf16_units'].items() if v) or 'none'}; key flags: "
             f"{' '.join(cpu['key_flags'])}; `auto` chooses {cpu['auto_precision']}. torch {result['torch']}.",
             "", "## Scoring in bfloat16 (the same trained networks and backends)", "",
             "| training | seed | backend | official f32 (%) | official bf16 (%) | diff (points) | "
             "cos min | cos mean | max abs score diff | rel. | flipped decisions |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["runs"]:
        for b in ("paper", "balanced"):
            c = r[b]
            lines.append(f"| {r['train_precision']} | {r['seed']} | {b} | {100 * c['official_float32']:.2f} | "
                         f"{100 * c['official_bfloat16']:.2f} | {100 * c['official_diff']:+.2f} | "
                         f"{c['cos_min']:.5f} | {c['cos_mean']:.6f} | {c['max_abs_score_diff']:.2e} | "
                         f"{c['max_abs_score_diff_rel']:.2e} | {c['decisions_flipped']} / {c['clips']} |")
    lines.append("")
    for b in ("paper", "balanced"):
        worst = max(abs(r[b]["official_diff"]) for r in result["runs"])
        lines.append(f"- {b} backend: largest |official score change| {100 * worst:.2f} points over "
                     f"{len(result['runs'])} models (bound {100 * result['bound']:.1f}): "
                     f"{'holds' if worst <= result['bound'] else 'EXCEEDED'}.")
    lines += ["",
              "## Training in bfloat16 (autocast, channels-last; loss and optimizer in float32)", "",
              "| seed | training | seconds | clips/s | official, paper backend (%) | official, balanced (%) | "
              "epoch losses |", "|---:|---|---:|---:|---:|---:|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['seed']} | {r['train_precision']} | {r['train_seconds']:.1f} | "
                     f"{r['train_clips_per_s']:.1f} | {100 * r['paper']['official_float32']:.2f} | "
                     f"{100 * r['balanced']['official_float32']:.2f} | "
                     f"{', '.join(f'{x:.3f}' for x in r['epoch_losses'])} |")
    by = {}
    for r in result["runs"]:
        by.setdefault(r["train_precision"], []).append(r)
    lines += ["", "Over the seeds (scored in float32), mean ± std (%):", ""]
    for tp, rs in by.items():
        lines.append(f"- trained in {tp}: paper backend {_mean_std([r['paper']['official_float32'] for r in rs])}, "
                     f"balanced {_mean_std([r['balanced']['official_float32'] for r in rs])}; "
                     f"training {np.mean([r['train_seconds'] for r in rs]):.1f} s")
    if {"float32", "bfloat16"} <= set(by):
        rel = []
        for a in by["float32"]:
            for b in by["bfloat16"]:
                if a["seed"] == b["seed"]:
                    la, lb = np.asarray(a["epoch_losses"]), np.asarray(b["epoch_losses"])
                    rel.append(float(np.max(np.abs(lb - la) / np.abs(la))))
        lines.append(f"- per-epoch mean loss, bfloat16 against float32 of the same seed: largest "
                     f"relative difference {max(rel):.3f} (per seed: {', '.join(f'{x:.3f}' for x in rel)})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
