"""fastasd.allocator: the glibc malloc settings the CLI applies for train/score/demo."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import fastasd
from fastasd import allocator, cli


def _run(code: str, env_extra: dict | None = None) -> str:
    import os

    env = dict(os.environ)
    env.pop(allocator.ENV_VAR, None)
    env.update(env_extra or {})
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


_GLIBC = sys.platform.startswith("linux") and _run(
    "import ctypes; print(hasattr(ctypes.CDLL(None), 'gnu_get_libc_version'))") == "True"

# A 64 MiB block is above glibc's largest mmap threshold (32 MiB): without the tuning it is a
# fresh mmap (counted in mallinfo's hblks) on every allocation, faulted in page by page; with it,
# it comes from the heap, where a freed block is reused by the next step.
_MMAPPED_BLOCKS = """
    import ctypes
    from fastasd.allocator import tune_allocator
    applied = tune_allocator() if {tune} else False
    class MallInfo(ctypes.Structure):  # struct mallinfo (int fields): arena, ordblks, smblks, hblks, ...
        _fields_ = [(n, ctypes.c_int) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL(None)
    libc.mallinfo.restype = MallInfo
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    before = libc.mallinfo().hblks  # blocks mmapped earlier (e.g. by the interpreter's start)
    p = libc.malloc(64 * 2**20)
    print(applied, libc.mallinfo().hblks - before)
    libc.free(p)
"""


@pytest.mark.skipif(not _GLIBC, reason="the tuning applies to glibc's malloc only (Linux/glibc)")
def test_tuned_process_serves_large_blocks_from_the_heap():
    applied, mmapped_tuned = _run(_MMAPPED_BLOCKS.format(tune=True)).split()
    assert applied == "True"
    _, mmapped_plain = _run(_MMAPPED_BLOCKS.format(tune=False)).split()
    assert int(mmapped_plain) == 1, mmapped_plain  # the plain process mmaps the 64 MiB block
    assert int(mmapped_tuned) == 0, mmapped_tuned


@pytest.mark.skipif(not _GLIBC, reason="the tuning applies to glibc's malloc only (Linux/glibc)")
def test_env_var_turns_it_off_and_public_name():
    assert _run("import fastasd; print(fastasd.tune_allocator())", {allocator.ENV_VAR: "0"}) == "False"
    assert _run("import fastasd; print(fastasd.tune_allocator(), fastasd.tune_allocator())") == "True True"
    assert fastasd.tune_allocator is allocator.tune_allocator


def test_cli_tunes_only_heavy_commands():
    # fit-backend embeds every training clip with the networks: as heavy as scoring
    assert set(cli._HEAVY_COMMANDS) == {"demo", "train", "fit-backend", "score"}
    assert set(cli._HEAVY_COMMANDS) <= set(cli.COMMANDS)
