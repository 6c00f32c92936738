"""Where the time of a scoring forward pass goes on this machine (benchmarks/NOTES.md, tuning log).

Times ``EmbeddingNet.forward`` (the paper's network, random weights, inference mode) on a batch of
``--batch`` 10-s clips with our native operators and with the PyTorch reference (the package's
``FASTASD_BACKEND`` switch), then prints the ``torch.profiler`` table of one native forward::

    python benchmarks/profile_forward.py [--batch 64] [--device cpu]
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
    args = ap.parse_args(argv)
    from fastasd.config import Config
    from fastasd.model import EmbeddingNet

    dev = torch.device(args.device)
    cfg = Config()
    torch.manual_seed(0)
    model = EmbeddingNet(cfg).to(dev).eval()
    x = torch.randn(args.batch, cfg.num_samples, device=dev) * 0.1

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with torch.inference_mode():
        model(x)  # warm-up: allocator, oneDNN primitive selection
        for backend in ("native", "reference"):
            os.environ["FASTASD_BACKEND"] = backend
            times = []
            for _ in range(args.rounds):
                sync()
                t = time.perf_counter()
                model(x)
                sync()
                times.append(time.perf_counter() - t)
            print(f"{backend}: forward of {args.batch} x 10-s clips, median {statistics.median(times):.3f} s "
                  f"over {args.rounds} rounds")
        os.environ["FASTASD_BACKEND"] = "native"
        with torch.profiler.profile() as prof:
            model(x)
            sync()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    sys.exit(main())
