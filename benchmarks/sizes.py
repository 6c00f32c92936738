"""Every benchmark case in one place: which op, which sizes, and which size sets it belongs to.

Size sets (``--sizes``):

- ``paper``: the paper's workload on DCASE 2022: spectrograms and the loss at the training batch
  (B=64, 10-s clips at 16 kHz, n_fft 1024, hop 512); the search over all 42 sections (dev + eval,
  7 machine types x 3 sections x 2 sets) with 26 references each (16 k-means means + 10 target
  clips) for the 8,400 test clips (200 per section).
- ``target``: the sizes the performance targets name (stft at B=32; the loss at B=64 with
  C*K = 342*16 = 5472, D = 256; the search with 20,000 queries over 42 x 26 references).
- ``large``: a server-scale workload (B=1024 clips; 100,000 queries over 42 sections of 1,000
  references). Opt-in: B=1024 10-s clips are 655 MB of input.

A case in several sets (the loss at B=64 is both ``paper`` and ``target``) runs once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import floors
from floors import Cost, min_cosine_distance_cost, stft_magnitude_cost, subcluster_adacos_cost

SIZE_SETS = ("paper", "target", "large")

CLIP_SAMPLES = 160_000  # 10 s at 16 kHz
N_FFT, HOP = 1024, 512
EMB_DIM = 256  # the file embedding: two 128-d branch embeddings concatenated
N_CLASSES, N_SUB = 342, 16  # DCASE 2022 auxiliary classes, sub-clusters per class (C*K = 5472)
N_SECTIONS, REFS_PAPER = 42, 26


@dataclass(frozen=True)
class Case:
    """One benchmark case: ``op`` at the sizes ``params``; ``tags`` are its size sets."""

    op: str
    id: str
    tags: tuple[str, ...]
    params: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def name(self) -> str:
        """``op[id]``: the case's name in results."""
        return f"{self.op}[{self.id}]"

    def cost(self) -> Cost | None:
        """Bytes and FLOPs of one call (None for the end-to-end pipeline cases)."""
        p = self.params
        if self.op == "stft_magnitude":
            return stft_magnitude_cost(p["B"], p["N"], p["n_fft"], p["hop"], True)
        if self.op == "subcluster_adacos":
            return subcluster_adacos_cost(p["B"], p["D"], p["C"], p["K"], backward=p["mode"] == "fwd+bwd")
        if self.op == "min_cosine_distance":
            return min_cosine_distance_cost(p["N"], p["D"], p["G"], p["R"], scaled=p.get("scaled", False))
        return None


def _stft(B: int, tags: tuple[str, ...]) -> Case:
    return Case("stft_magnitude", f"B={B},N={CLIP_SAMPLES}", tags,
                {"B": B, "N": CLIP_SAMPLES, "n_fft": N_FFT, "hop": HOP})


def _loss(mode: str, B: int, tags: tuple[str, ...]) -> Case:
    return Case("subcluster_adacos", f"{mode},B={B},D={EMB_DIM},CK={N_CLASSES * N_SUB}", tags,
                {"mode": mode, "B": B, "D": EMB_DIM, "C": N_CLASSES, "K": N_SUB})


def _search(N: int, R: int, tags: tuple[str, ...], scaled: bool = False) -> Case:
    # scaled: with a per-reference scale and shift (the local-density normalized backend)
    return Case("min_cosine_distance", f"N={N},G={N_SECTIONS},R={R},D={EMB_DIM}" + (",scaled" if scaled else ""),
                tags, {"N": N, "D": EMB_DIM, "G": N_SECTIONS, "R": R, "scaled": scaled})


STFT_CASES = [_stft(64, ("paper",)), _stft(32, ("target",)), _stft(1024, ("large",))]
LOSS_CASES = [_loss(m, B, tags) for B, tags in ((64, ("paper", "target")), (1024, ("large",)))
              for m in ("fwd+bwd", "fwd")]
# The scaled cases: the balanced backend with the paper's references (26 per section) and with
# every training clip as a reference (DCASE 2022: about 1,000 per section), each beside the plain
# search of the same size (what the scale and shift cost).
SEARCH_CASES = [_search(8_400, REFS_PAPER, ("paper",)), _search(20_000, REFS_PAPER, ("target",)),
                _search(100_000, 1_000, ("large",)), _search(8_400, REFS_PAPER, ("paper",), scaled=True),
                _search(8_400, 1_000, ("paper",)), _search(8_400, 1_000, ("paper",), scaled=True)]
PIPELINE_CASES = [
    Case("train_step", "B=64,10s", ("paper", "target"), {"B": 64}),
    Case("train_epoch", "clips=64,10s", ("paper", "target"), {"clips": 64}),
    Case("train_epoch", "clips=512,10s", ("large",), {"clips": 512}),
    Case("score_wav", "clips=64,10s", ("paper", "target"), {"clips": 64}),
    Case("score_wav", "clips=1024,10s", ("large",), {"clips": 1024}),
]
CASES = STFT_CASES + LOSS_CASES + SEARCH_CASES + PIPELINE_CASES
CASES_BY_NAME = {c.name: c for c in CASES}


def select(cases: list[Case], sizes: set[str]) -> list[Case]:
    """The cases whose size sets intersect ``sizes``."""
    return [c for c in cases if sizes.intersection(c.tags)]


def _fmt_s(t: float) -> str:
    return f"{t:.3g} s" if t >= 1 else f"{t * 1e3:.3g} ms" if t >= 1e-3 else f"{t * 1e6:.3g} us"


def size_table(ceilings: dict[str, tuple[float, float]] | None = None) -> str:
    """Markdown table of bytes and FLOPs of every op at every benchmark size (for NOTES.md), with
    the floor time on each named machine ``{name: (GB/s, GFLOP/s)}``."""
    ceilings = ceilings or {}
    head = ["op", "case", "sizes", "MB moved", "MFLOP", "FLOP/byte"] + [f"floor {k}" for k in ceilings]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for case in CASES:
        c = case.cost()
        if c is None:  # end-to-end cases: no single floor
            continue
        cells = [case.op, case.id, ",".join(case.tags), f"{c.bytes / 1e6:,.2f}", f"{c.flops / 1e6:,.1f}",
                 f"{c.flops / c.bytes:.2f}"]
        for gbps, gflops in ceilings.values():
            t, bound = c.floor_s(gbps * 1e9, gflops * 1e9)
            cells.append(f"{_fmt_s(t)} ({bound[:3]})")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    # H100 SXM datasheet leads (HBM3 3.35 TB/s, FP32 67 TFLOP/s); measured ceilings replace them.
    leads = {"H100 lead": (3350.0, 67000.0)}
    if "--measure" in sys.argv:  # add this machine's measured ceilings as a column
        dev = "cuda" if "--cuda" in sys.argv else "cpu"
        c = floors.measure_ceilings(dev)
        print(c)
        leads[f"this {dev} ({c['memory_GBps']:.3g} GB/s, {c['matmul_GFLOPps']:.4g} GFLOP/s)"] = (
            c["memory_GBps"], c["matmul_GFLOPps"])
    print(size_table(leads))
