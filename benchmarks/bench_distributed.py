"""Training throughput (clips/s) of 1 process against P processes under torchrun, both modes.

For every P in ``--procs`` it starts ``python -m torch.distributed.run --standalone
--nproc-per-node P`` with this script as the worker, on a synthetic set written once
(``fastasd.data.synth``; ``--clips`` training clips of ``--clip-seconds``), and times the
optimizer steps of the paper's network (``--preset``, batch ``--batch-size``):

* **data-parallel** (``train_model(data_parallel=True)``): one member, every global batch of
  ``--batch-size`` clips split over the P processes; clips/s = global batch x timed steps /
  rank 0's time for them.
* **ensemble** (the default mode of ``fastasd train`` under torchrun): rank r trains member r
  with the full batch, all at once; clips/s = the sum over the ranks (the rate at which an
  ensemble of P members gets trained).

P = 1 is the plain one-process training (torchrun does not change the thread count for one
process; for P > 1 it sets OMP_NUM_THREADS=1 per worker unless ``--threads`` says otherwise).
The first ``--warmup`` steps are not timed. Results: ``benchmarks/results/distributed_<tag>.json``
and ``.md``::

    python benchmarks/bench_distributed.py                                   # CPU, P = 1, 2
    python benchmarks/bench_distributed.py --device cuda --procs 1,2,4,8 --clip-seconds 10 \\
        --batch-size 64 --clips 2048 --steps 60 --tag gpu                     # a GPU node

On CUDA every process needs its own GPU (NCCL): P is at most the number of visible GPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import short_commit  # noqa: E402  (benchmarks/run.py)

RESULTS = Path(__file__).resolve().parent / "results"


def worker(args) -> None:
    """One torchrun process: train ``--steps`` steps in ``--mode`` and write its step times."""
    import fastasd
    from fastasd.training import distributed
    from fastasd.config import Config
    from fastasd.data.layout import discover
    from fastasd.training import train_model

    fastasd.tune_allocator()  # as the fastasd command line does
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = distributed.setup(args.device)
    rank, world = (ctx.rank, ctx.world_size) if ctx else (0, 1)
    device = ctx.device if ctx else torch.device(args.device if args.device != "auto" else "cpu")
    clips = discover(args.data, splits=("train",))
    cfg = Config.preset(args.preset).replace(clip_seconds=args.clip_seconds, batch_size=args.batch_size,
                                             epochs=1000, mixed_precision=args.bf16)
    times = []

    def on_step(step, model, loss):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter())

    dp = args.mode == "data-parallel" and ctx is not None
    train_model(clips, cfg, progress=False, device=device, member=rank, max_steps=args.steps,
                step_callback=on_step, data_parallel=dp)
    w = args.warmup
    seconds = times[-1] - times[w - 1]
    result = {"rank": rank, "world": world, "mode": args.mode, "steps_timed": len(times) - w,
              "seconds": seconds, "threads": torch.get_num_threads(), "device": str(device),
              "clips_per_s": args.batch_size * (len(times) - w) / seconds}
    if ctx is not None:
        ctx.close()
    Path(args.out, f"{args.mode}-{world}-{rank}.json").write_text(json.dumps(result))


def run_case(args, data: Path, work: Path, procs: int, mode: str) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
           __file__, "--worker", "--mode", mode, "--data", str(data), "--out", str(work),
           "--device", args.device, "--preset", args.preset, "--clip-seconds", str(args.clip_seconds),
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.bf16:
        cmd += ["--bf16"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    ranks = [json.loads((work / f"{mode}-{procs}-{r}.json").read_text()) for r in range(procs)]
    if mode == "data-parallel":
        rate = ranks[0]["clips_per_s"]
    else:
        rate = sum(r["clips_per_s"] for r in ranks)
    return {"procs": procs, "mode": mode, "clips_per_s": rate, "threads_per_proc": ranks[0]["threads"],
            "device": ranks[0]["device"], "wall_s_with_startup": wall, "ranks": ranks}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda (one GPU per process) or auto")
    p.add_argument("--procs", default="1,2", help="comma-separated process counts")
    p.add_argument("--modes", default="data-parallel,ensemble")
    p.add_argument("--preset", default="demo")
    p.add_argument("--clip-seconds", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--clips", type=int, default=256, help="training clips of the synthetic set")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torchrun's)")
    p.add_argument("--bf16", action="store_true", help="mixed precision (CUDA)")
    p.add_argument("--tag", default="cpu")
    # worker side
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="data-parallel", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    from fastasd._io import atomic_write_json, atomic_write_text
    from fastasd.data.synth import generate

    procs = [int(x) for x in args.procs.split(",")]
    modes = args.modes.split(",")
    if args.device.startswith("cuda") and max(procs) > torch.cuda.device_count():
        sys.exit(f"--procs {args.procs}: this machine has {torch.cuda.device_count()} GPU(s); "
                 f"NCCL needs one GPU per process")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        per_section = max(1, args.clips // 2)  # 2 machine types x 1 section, source clips only
        generate(data, seed=0, machine_types=["fan", "valve"], sections=1, n_train_source=per_section - 2,
                 n_train_target=2, n_test=4, clip_seconds=args.clip_seconds)
        rows = []
        for n in procs:
            for mode in modes:
                if n == 1 and mode != modes[0]:
                    continue  # one process: both modes are the same training
                rows.append(run_case(args, data, Path(tmp), n, mode))
                print(f"{n} process(es), {mode}: {rows[-1]['clips_per_s']:.1f} clips/s", flush=True)
    base = rows[0]["clips_per_s"]
    commit = short_commit()
    command = "python benchmarks/bench_distributed.py " + " ".join(sys.argv[1:])
    env = {"torch": torch.__version__, "python": platform.python_version(), "os_cpus": os.cpu_count(),
           "cuda_devices": torch.cuda.device_count(), "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = {"command": command, "environment": env, "settings": {k: v for k, v in vars(args).items()
                                                                  if k not in ("worker", "mode", "data", "out")},
           "results": rows}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / f"distributed_{args.tag}.json", out)
    lines = [f"# Training throughput under torchrun ({args.tag})", "",
             f"`{command}` (commit {commit}, {env['date']}; torch {env['torch']}, {env['os_cpus']} CPUs, "
             f"{env['cuda_devices']} GPUs). Preset `{args.preset}`, {args.clip_seconds:g}-s clips, global batch "
             f"{args.batch_size}, {args.steps} steps of which the first {args.warmup} are not timed.", "",
             "| processes | mode | threads / process | clips/s | vs 1 process |", "|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['procs']} | {r['mode'] if r['procs'] > 1 else 'one process'} | "
                     f"{r['threads_per_proc']} | {r['clips_per_s']:.1f} | {r['clips_per_s'] / base:.2f}x |")
    atomic_write_text(RESULTS / f"distributed_{args.tag}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
