"""`fastasd score --watch` (fastasd.scoring.watch_inputs): files written while it runs are scored
once complete, never half; undecodable files are retried before they are reported; resume rules;
Ctrl-C or SIGTERM ends a real `fastasd score --watch` process cleanly with everything flushed."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fastasd.scoring import ERRORS_HEADER, SCORES_HEADER, read_scores_csv, watch_inputs

try:
    from tests.test_score import SR, FakeDetector, _tiny_dcase_root, read_csv, untrained_detector
except ImportError:  # pytest's default import mode puts tests/ itself on sys.path
    from test_score import SR, FakeDetector, _tiny_dcase_root, read_csv, untrained_detector

N = 3200  # FakeDetector's clip length (0.2 s)
POLL = 0.5


def wav_bytes(seed: int, n: int = N) -> bytes:
    buf = io.BytesIO()
    x = 0.1 * (1 + seed) * np.random.default_rng(seed).standard_normal(n)
    sf.write(buf, x.astype(np.float32), SR, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def fake_score(data: bytes, machine_type: str, section: str) -> float:
    """FakeDetector's score of the whole clip (mean |x| + section and machine-type offsets)."""
    x, _ = sf.read(io.BytesIO(data), dtype="float32")
    x = np.pad(x, (0, max(0, N - len(x))))[:N]
    return float(np.abs(x.astype(np.float64)).mean()) + 10 * int(section) + len(machine_type)


def wait_for(cond, timeout: float = 60.0, what: str = "") -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def names(path: Path, header: tuple) -> list[str]:
    rows = read_csv(path) if path.exists() else [list(header)]
    return [Path(r[0]).name for r in rows[1:]]


def start(det, folder, out, **kw):
    stop = threading.Event()
    box = {}

    def run():
        box["summary"] = watch_inputs(det, folder, out_dir=out, poll_interval=POLL, batch_size=4, stop=stop, **kw)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return stop, t, box


def test_watch_scores_complete_files_as_they_appear(tmp_path, caplog):
    caplog.set_level("INFO", logger="fastasd.score")
    folder, out = tmp_path / "in", tmp_path / "out"
    test_dir = folder / "fan" / "test"
    test_dir.mkdir(parents=True)
    det = FakeDetector()
    stop, thread, box = start(det, folder, out, retries=3)
    datas = {}

    # a: written at once
    datas["a"] = wav_bytes(1)
    (test_dir / "section_00_0001.wav").write_bytes(datas["a"])
    # b: a slow writer, a chunk every 50 ms for 1.5 s (never unchanged for a poll interval)
    datas["b"] = wav_bytes(2, n=4 * N)
    with open(test_dir / "section_00_0002.wav", "wb") as f:
        chunks = np.array_split(np.frombuffer(datas["b"], np.uint8), 30)
        for c in chunks:
            f.write(c.tobytes())
            f.flush()
            time.sleep(0.05)
    # c: garbage that never decodes (reported after retries + 1 = 4 failures); d: unknown section
    (test_dir / "section_00_0003.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\xff" * 60)
    (folder / "pump" / "test").mkdir(parents=True)
    (folder / "pump" / "test" / "section_07_0004.wav").write_bytes(wav_bytes(4))
    # e: a writer that stalls after a truncated header for over 2 polls (so the watcher sees it
    # unchanged, fails to decode it and retries), then finishes: scored, not reported
    datas["e"] = wav_bytes(5)
    with open(test_dir / "section_00_0005.wav", "wb") as f:
        f.write(datas["e"][:20])
        f.flush()
        time.sleep(2 * POLL + 0.1)
        f.write(datas["e"][20:])
    # a hidden file being written is never picked up
    (test_dir / ".section_00_0006.wav.part").write_bytes(wav_bytes(6))

    scores_csv, errors_csv = out / "scores.csv", out / "errors.csv"
    wait_for(lambda: sorted(names(scores_csv, SCORES_HEADER)) == ["section_00_0001.wav", "section_00_0002.wav",
                                                                  "section_00_0005.wav"], what="a, b and e scored")
    wait_for(lambda: sorted(names(errors_csv, ERRORS_HEADER)) == ["section_00_0003.wav", "section_07_0004.wav"],
             what="c and d reported")
    stop.set()
    thread.join(30)
    assert not thread.is_alive()

    recs = {"abcdefg"[int(Path(r["file"]).stem.split("_")[-1]) - 1]: r for r in read_scores_csv(scores_csv)}
    for k in ("a", "b", "e"):  # the whole file was read, never a part of it
        assert recs[k]["score"] == pytest.approx(fake_score(datas[k], "fan", "00"), rel=1e-6)
    errors = dict(read_csv(errors_csv)[1:])
    reasons = {Path(k).name: v for k, v in errors.items()}
    assert "cannot read audio" in reasons["section_00_0003.wav"]
    retried = [r.getMessage() for r in caplog.records if "does not decode yet" in r.getMessage()]
    assert any("section_00_0005.wav" in m for m in retried)  # e failed while stalled, then was scored
    assert sum("section_00_0003.wav" in m for m in retried) == 3  # c: 3 retries, then reported
    assert reasons["section_07_0004.wav"].startswith("unknown section pump/07")
    s = box["summary"]
    assert (s["scored"], s["failed"], s["unknown_section"], s["resumed"]) == (3, 1, 1, 0)
    assert s["polls"] >= 4
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] and run["watch"]["poll_interval"] == POLL and run["summary"]["scored"] == 3
    assert (out / "anomaly_score_fan_section_00_test.csv").exists()

    # resume rules: refused without resume/overwrite; with resume nothing is scored twice
    with pytest.raises(FileExistsError):
        watch_inputs(det, folder, out_dir=out, poll_interval=POLL)
    stop, thread, box = start(det, folder, out, resume=True)
    datas["g"] = wav_bytes(7)
    (test_dir / "section_00_0007.wav").write_bytes(datas["g"])
    wait_for(lambda: "section_00_0007.wav" in names(scores_csv, SCORES_HEADER), what="g scored")
    stop.set()
    thread.join(30)
    assert sorted(names(scores_csv, SCORES_HEADER)) == ["section_00_0001.wav", "section_00_0002.wav",
                                                        "section_00_0005.wav", "section_00_0007.wav"]
    assert len(names(errors_csv, ERRORS_HEADER)) == 2
    assert box["summary"]["resumed"] == 5 and box["summary"]["scored"] == 1


def test_watch_refuses_what_it_cannot_watch(tmp_path):
    f = tmp_path / "x.wav"
    f.write_bytes(wav_bytes(0))
    with pytest.raises(ValueError, match="must be a folder"):
        watch_inputs(FakeDetector(), [f], out_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="poll_interval"):
        watch_inputs(FakeDetector(), [tmp_path], out_dir=tmp_path / "out", poll_interval=0)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_cli_watch_ctrl_c_or_sigterm_ends_cleanly(tmp_path, sig):
    """A real `fastasd score MODEL DIR --watch` process: files written while it runs are scored
    as `Detector.score` scores them; SIGINT (Ctrl-C) or SIGTERM (what systemd, docker and
    Kubernetes send; issue 23) ends it with exit 0, the journal complete."""
    root = _tiny_dcase_root(tmp_path / "dcase")
    det = untrained_detector(root, tmp_path / "model")
    watched = tmp_path / "incoming" / "fan" / "test"
    watched.mkdir(parents=True)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fastasd", "score", str(tmp_path / "model"),
                             str(tmp_path / "incoming"), "--out", str(out), "--watch", "--poll-interval", "0.2",
                             "--device", "cpu", "--precision", "float32"],  # two processes: never two probes' decisions
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: (out / "run.json").exists() or proc.poll() is not None, what="the watcher to start")
        clips = sorted((root / "fan" / "test").glob("*.wav"))[:3]
        for p in clips:  # copied in while it runs
            (watched / p.name).write_bytes(p.read_bytes())
            time.sleep(0.3)
        wait_for(lambda: len(names(out / "scores.csv", SCORES_HEADER)) == 3 or proc.poll() is not None,
                 what="3 clips scored")
        proc.send_signal(sig)
        output = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert f"{signal.Signals(sig).name}: stopping after the batch in flight" in output
    want = {Path(r["file"]).name: r["score"] for r in det.score(clips, num_workers=0, progress=False, precision="float32")}
    got = {Path(r["file"]).name: r["score"] for r in read_scores_csv(out / "scores.csv")}
    assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] and run["summary"]["scored"] == 3
    assert (out / "anomaly_score_fan_section_00_test.csv").exists()

