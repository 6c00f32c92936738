"""Do the emulated tests catch broken kernels? Builds broken copies of csrc/cuda/*.cu (one change
each), runs that op's emulated tests against each copy (FASTASD_EMULATED_CUDA_DIR) and writes
which were caught:

    python tests/emulated/mutants.py [--out benchmarks/results/emulated_mutants.md] [NAME ...]

A copy the plain run misses is run again under ThreadSanitizer (on TSAN_K: small cases, both
dtypes, the NaN and small-angle tests; .ci/run's subset is its float32 part without those).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CUDA = ROOT / "csrc" / "cuda"

# (name, file, original text, broken text)
MUTANTS = [
    ("mincos: no __syncthreads before restaging a reference chunk", "min_cosine_distance",
     "__syncthreads();  // nobody still reads the previous chunk", ""),
    ("mincos: no __syncthreads between staging and normalizing references", "min_cosine_distance",
     "for (int i = threadIdx.x; i < rc * D; i += blockDim.x) refs_s[i] = R[i];\n        __syncthreads();",
     "for (int i = threadIdx.x; i < rc * D; i += blockDim.x) refs_s[i] = R[i];"),
    ("mincos: quad shuffle mask not shifted to the lane's quad", "min_cosine_distance",
     "0xFu << (lane & ~(kTPQ - 1))", "0xFu"),
    ("mincos: xor shuffle reads outside the quad", "min_cosine_distance",
     "a += __shfl_xor_sync(quad, a, 2);", "a += __shfl_xor_sync(quad, a, 4);"),
    ("mincos: sign flipped in the distance", "min_cosine_distance",
     "out[base + list_s[e]] = T(1) - best_s[e] / norm;", "out[base + list_s[e]] = T(1) + best_s[e] / norm;"),
    ("mincos: max drops NaN (the old CUDA max)", "min_cosine_distance", "m = nan_max(m, a);", "m = max(m, a);"),
    ("stft: no __syncthreads after an FFT pass", "stft_magnitude",
     "          run_pass<2>(a, bb, Ns, H, ft, tw_s);\n        }\n        __syncthreads();",
     "          run_pass<2>(a, bb, Ns, H, ft, tw_s);\n        }"),
    ("stft: no cluster.sync before reading the other blocks' sums", "stft_magnitude",
     "cluster.sync();  // every block's psum_s is complete", ""),
    ("stft: no cluster.sync before leaving (others may still read this block)", "stft_magnitude",
     "cluster.sync();  // no block leaves while another may still read its psum_s", ""),
    ("stft: sign flipped in the real-FFT split", "stft_magnitude",
     "xi = ei + w.x * oi - w.y * orr;", "xi = ei - w.x * oi - w.y * orr;"),
    ("stft: window index shifted", "stft_magnitude",
     "z.y = xf[2 * m + 1] * win_s[2 * m + 1];", "z.y = xf[2 * m + 1] * win_s[2 * m];"),
    ("stft: per-bin sums added without atomics (blocks race)", "stft_magnitude",
     "atomicAdd(&p.sums[b * F + k], double(psum_s[k]));", "p.sums[b * F + k] += double(psum_s[k]);"),
    ("adacos: no __syncthreads before reusing block_sum's buffer", "subcluster_adacos",
     "__syncthreads();  // red may still be read from a previous call", ""),
    ("adacos: no __syncthreads after storing the next GEMM tile", "subcluster_adacos",
     "      store_smem();\n      __syncthreads();", "      store_smem();"),
    ("adacos: class-group shuffle with a half-warp mask", "subcluster_adacos",
     "m = nan_max(m, __shfl_xor_sync(0xffffffffu, m, off));", "m = nan_max(m, __shfl_xor_sync(0x0000ffffu, m, off));"),
    ("adacos: sign flipped in the row projection of dL/dx", "subcluster_adacos",
     "grad_x[b * D + d] = r * (v - x[b * D + d] * r * dot);", "grad_x[b * D + d] = r * (v + x[b * D + d] * r * dot);"),
    ("adacos: upper instead of lower median", "subcluster_adacos",
     "block_select(row_val1, B, (B - 1) / 2)", "block_select(row_val1, B, B / 2)"),
    ("adacos: log-sum-exp merge drops a NaN max", "subcluster_adacos",
     "if (m2 > m || m2 != m2) {", "if (m2 > m) {"),
    ("adacos: no __syncthreads after the last-block ticket", "subcluster_adacos",
     "is_last = atomicAdd(counter, 1) == int(gridDim.x) - 1;\n  }\n  __syncthreads();",
     "is_last = atomicAdd(counter, 1) == int(gridDim.x) - 1;\n  }"),
]


# The tests a missed copy runs under ThreadSanitizer.
TSAN_K = "7-5-sizes0 or 257-256 or 2-200-16-7 or 2-4000-400-160 or 3-7-5-3 or small_angles or nan_propagates"


def run_one(name, op, old, new, timeout, tsan=False):
    with tempfile.TemporaryDirectory(prefix="fastasd-mutant-") as tmp:
        for f in CUDA.iterdir():
            shutil.copy(f, tmp)
        path = Path(tmp) / f"{op}.cu"
        text = path.read_text()
        assert text.count(old) == 1, f"{name}: the original text occurs {text.count(old)} times"
        path.write_text(text.replace(old, new))
        env = dict(os.environ, FASTASD_EMULATED_CUDA_DIR=tmp, FASTASD_SIMT_WATCHDOG_S="60")
        extra = []
        if tsan:
            libtsan = subprocess.run(["g++", "-print-file-name=libtsan.so"], capture_output=True, text=True).stdout
            env.update(FASTASD_EMULATED_SANITIZE="thread", LD_PRELOAD=libtsan.strip(),
                       TSAN_OPTIONS="halt_on_error=1 exitcode=66")
            extra = ["-k", TSAN_K, "--capture=sys"]  # (a report must not vanish into pytest's capture)
        t0 = time.time()
        try:
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *extra,
                                f"tests/emulated/test_emulated_{op}.py"], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=timeout)
            out, rc = r.stdout + r.stderr, r.returncode
        except subprocess.TimeoutExpired:
            out, rc = "timeout", -1
        failed = [l for l in out.splitlines() if l.startswith(("FAILED", "ERROR"))]
        why = ""
        for l in out.splitlines():
            if l.startswith("E ") and ("Error" in l or "assert" in l or "deadlock" in l or "mask" in l):
                why = l[1:].strip()[:160]
                break
            if l.startswith("SUMMARY: ThreadSanitizer"):
                why = l.strip()[:160]
                break
        if rc == -1:  # a timeout is no evidence either way
            return False, "timeout", f"no result within {timeout:.0f} s", time.time() - t0
        return rc != 0, (failed[0] if failed else out.strip().splitlines()[-1] if out.strip() else ""), why, time.time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "emulated_mutants.md"))
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("names", nargs="*", help="substrings of mutant names to run (default: all)")
    args = ap.parse_args()
    rows = []
    for name, op, old, new in MUTANTS:
        if args.names and not any(s in name for s in args.names):
            continue
        caught, first, why, secs = run_one(name, op, old, new, args.timeout)
        how = "tests" if caught else "no"
        if not caught:
            caught, first, why, secs2 = run_one(name, op, old, new, args.timeout, tsan=True)
            how, secs = ("ThreadSanitizer" if caught else "**no**"), secs + secs2
        print(f"{how:16s} {secs:6.1f}s {name}: {first} {why}", flush=True)
        rows.append((name, how, first, why, secs))
    n_caught = sum(r[1] != "**no**" for r in rows)
    lines = ["# Broken kernels against the emulated tests", "",
             f"`python tests/emulated/mutants.py`: {n_caught} of {len(rows)} caught "
             f"({sum(r[1] == 'tests' for r in rows)} by the plain run, the others only under ThreadSanitizer).", "",
             "| broken copy | caught by | first failing test | why |", "|---|---|---|---|"]
    for name, how, first, why, _ in rows:
        cell = lambda s: s.replace("|", "\\|")
        lines.append(f"| {cell(name)} | {how} | {cell(first)} | {cell(why)} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
