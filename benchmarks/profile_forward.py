"""Where the time of a scoring forward pass goes on this machine (benchmarks/NOTES.md, tuning log).

Times ``EmbeddingNet.forward`` (the paper's network, random weights, inference mode) on a batch of
``--batch`` 10-s clips with our native operators and with the PyTorch reference (the package's
``FASTASD_BACKEND`` switch), and the network fused for inference (``fastasd.inference``, what
``Detector`` scores with; native operators), then prints the ``torch.profiler`` table of one
forward of ``--profile`` (``fused`` or ``native``)::

    python benchmarks/profile_forward.py [--batch 64] [--device cpu] [--rounds 5] [--profile fused]
                                         [--ablation]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", choices=("fused", "native"), default="fused")
    ap.add_argument("--ablation", action="store_true",
                    help="also time the fused network without channels-last and/or without chunks")
    args = ap.parse_args(argv)
    from fastasd.config import Config
    from fastasd.inference import fuse_for_inference
    from fastasd.model import EmbeddingNet

    dev = torch.device(args.device)
    cfg = Config()
    torch.manual_seed(0)
    model = EmbeddingNet(cfg).to(dev).eval()
    fused = fuse_for_inference(model)
    x = torch.randn(args.batch, cfg.num_samples, device=dev) * 0.1

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    runs = {"native": (model, "native"), "reference": (model, "reference"), "fused": (fused, "native")}
    if args.ablation:
        runs["fused NCHW"] = (fuse_for_inference(model, channels_last=False), "native")
        runs["fused without chunks"] = (fuse_for_inference(model, chunk_bytes=None), "native")
        runs["fused NCHW without chunks"] = (
            fuse_for_inference(model, channels_last=False, chunk_bytes=None), "native")
    with torch.inference_mode():
        for net, _ in runs.values():  # warm-up: allocator, oneDNN primitive selection
            net(x)
        for name, (net, backend) in runs.items():
            os.environ["FASTASD_BACKEND"] = backend
            times = []
            for _ in range(args.rounds):
                sync()
                t = time.perf_counter()
                net(x)
                sync()
                times.append(time.perf_counter() - t)
            print(f"{name}: forward of {args.batch} x 10-s clips, median {statistics.median(times):.3f} s "
                  f"over {args.rounds} rounds ({', '.join(f'{t:.3f}' for t in times)})")
        os.environ["FASTASD_BACKEND"] = "native"
        net = fused if args.profile == "fused" else model
        with torch.profiler.profile() as prof:
            net(x)
            sync()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    sys.exit(main())
