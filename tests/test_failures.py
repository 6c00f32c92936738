"""Issue 23: batch jobs that never die on one clip, and never lose, mix or misplace results.

One test (or a few) per finding of the issue, each failing on the code before the fix: a clip the
model fails on or scores non-finite, non-UTF-8 names, `train --overwrite`, resume bound to the
model, the run-folder lock, overwrite/merge and submission files, journals never followed through
a symbolic link, bounded batch sizes and workers, finiteness of a loaded model, short and
truncated clips, exit statuses, list files with missing entries and one-line errors. The decoding
bounds are in tests/test_audio.py and tests/test_inputs.py, duplicate archive members in
tests/test_inputs.py, SIGTERM in tests/test_watch.py, ONNX metadata in tests/test_export.py.

New names are imported inside the tests, so each one fails on its own on the old code.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fastasd.scoring import merge_shards, read_scores_csv, score_inputs, shard_dir_name, watch_inputs

try:
    from tests.test_score import SR, FakeDetector, _tiny_dcase_root, expected_score, read_csv, untrained_detector
except ImportError:  # pytest's default import mode puts tests/ itself on sys.path
    from test_score import SR, FakeDetector, _tiny_dcase_root, expected_score, read_csv, untrained_detector

N = 3200  # FakeDetector's clip length (0.2 s)


def write_clip(path: Path, x, subtype: str = "FLOAT") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(os.fsencode(path), np.asarray(x, dtype=np.float32), SR, subtype=subtype)  # any name
    return path


def noise(seed: int, n: int = N, level: float = 0.1) -> np.ndarray:
    return (level * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def fan_clips(root: Path, k: int, first: int = 0) -> list[Path]:
    return [write_clip(root / "fan" / "test" / f"section_00_source_test_normal_{first + i:04d}.wav", noise(first + i))
            for i in range(k)]


def run(det, inputs, out, **kw):
    kw.setdefault("num_workers", 0)
    kw.setdefault("batch_size", 4)
    kw.setdefault("progress", False)
    return score_inputs(det, inputs, out_dir=out, **kw)


class OverflowingDetector(FakeDetector):
    """Fails a whole batch as the real backend does when one clip's extreme samples overflow to
    non-finite embeddings ("embeddings contain NaN or infinite values")."""

    def score_waveforms(self, waveforms, machine_types, sections, *, bf16=False):
        if float(waveforms.abs().max()) > 1e6:
            raise ValueError("embeddings contain NaN or infinite values")
        return super().score_waveforms(waveforms, machine_types, sections, bf16=bf16)


class NanDetector(FakeDetector):
    """Scores NaN (without raising) for a clip whose peak exceeds 0.8."""

    def score_waveforms(self, waveforms, machine_types, sections, *, bf16=False):
        scores, decisions = super().score_waveforms(waveforms, machine_types, sections, bf16=bf16)
        scores[waveforms.abs().amax(dim=1).numpy() > 0.8] = np.nan
        return scores, decisions


class IdentifiedDetector(FakeDetector):
    """A FakeDetector that says which model it is (as Detector.identity does)."""

    def __init__(self, tag: str, **kw):
        super().__init__(**kw)
        self.tag = tag

    def identity(self):
        return {"path": f"/models/{self.tag}", "sha256": (self.tag * 64)[:64]}


# --------------------------------------------------------------------------- 1. one clip never stops a job


def test_a_clip_the_model_fails_on_is_an_error_row_and_the_rest_of_its_batch_is_scored(tmp_path):
    good = fan_clips(tmp_path / "in", 7)
    x = noise(99)
    x[100] = 1e30  # one huge but finite sample
    bad = write_clip(tmp_path / "in" / "fan" / "test" / "section_00_source_test_normal_0003_huge.wav", x)
    out = tmp_path / "out"
    res = run(OverflowingDetector(), tmp_path / "in", out)
    errors = dict(read_csv(out / "errors.csv")[1:])
    assert list(errors) == [str(bad)]
    assert errors[str(bad)].startswith("scoring failed (ValueError: embeddings contain NaN or infinite values)")
    assert "1e+30" in errors[str(bad)]  # the hint: its samples
    got = {r["file"]: r["score"] for r in read_scores_csv(out / "scores.csv")}
    assert got == {str(p): expected_score(p, "fan", "00") for p in good}  # its batch mates too
    from fastasd.scoring import exit_status

    assert (res.summary["scored"], res.summary["failed"], exit_status(res.summary)) == (7, 1, 3)
    # every resume goes on from there: nothing scored twice, nothing left
    res = run(OverflowingDetector(), tmp_path / "in", out, resume=True)
    assert (res.summary["scored"], res.summary["resumed"], res.summary["resumed_failed"]) == (0, 8, 1)


def test_a_detector_that_fails_on_plain_noise_too_stops_the_run_without_writing_the_batch(tmp_path):
    from fastasd.scoring.pipeline import DetectorFailed

    fan_clips(tmp_path / "in", 6)
    out = tmp_path / "out"
    with pytest.raises(DetectorFailed, match="simulated crash"):
        run(FakeDetector(fail_after=1), tmp_path / "in", out)
    assert len(read_csv(out / "scores.csv")) == 1 + 4 and len(read_csv(out / "errors.csv")) == 1
    res = run(FakeDetector(), tmp_path / "in", out, resume=True)  # fixed: the rest is scored
    assert res.summary["scored"] == 2


def test_real_detector_cli_a_huge_sample_goes_to_errors_csv(tmp_path):
    """The issue's case on a real Detector: the backend raises for non-finite embeddings."""
    from fastasd.cli import main

    root = _tiny_dcase_root(tmp_path / "dcase")
    untrained_detector(root, tmp_path / "model")
    x = noise(5, 8000)
    x[4000] = 1e30
    bad = write_clip(root / "fan" / "test" / "section_00_source_test_anomaly_0009_x.wav", x)
    out = tmp_path / "out"
    rc = main(["score", str(tmp_path / "model"), str(root), "--out", str(out), "--workers", "0",
               "--batch-size", "4", "--device", "cpu", "--no-progress"])
    assert rc == 3
    assert [r[0] for r in read_csv(out / "errors.csv")[1:]] == [str(bad)]
    assert len(read_scores_csv(out / "scores.csv")) == 8


def test_a_non_finite_score_is_an_error_never_a_decision(tmp_path):
    fan_clips(tmp_path / "in", 3)
    loud = write_clip(tmp_path / "in" / "fan" / "test" / "section_00_source_test_normal_0009.wav", np.full(N, 0.9))
    out = tmp_path / "out"
    run(NanDetector(), tmp_path / "in", out)
    rows = read_scores_csv(out / "scores.csv")
    assert len(rows) == 3 and all(np.isfinite(r["score"]) for r in rows)
    assert dict(read_csv(out / "errors.csv")[1:])[str(loud)].startswith("the score is not finite (nan)")


def test_watch_survives_a_clip_the_model_fails_on(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    (folder / "fan" / "test").mkdir(parents=True)
    stop = threading.Event()
    box = {}

    def watch():
        try:
            box["summary"] = watch_inputs(OverflowingDetector(), folder, out_dir=out, poll_interval=0.2, stop=stop)
        except BaseException as e:  # the old watcher died here
            box["error"] = e

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    x = noise(1)
    x[7] = 1e30
    write_clip(folder / "fan" / "test" / "section_00_source_test_normal_0001.wav", x)
    t0 = time.monotonic()
    while not (out / "errors.csv").exists() or len(read_csv(out / "errors.csv")) < 2:
        assert "error" not in box and time.monotonic() - t0 < 30, box.get("error")
        time.sleep(0.05)
    fan_clips(folder, 1, first=2)  # a later clip is still scored
    while len(read_scores_csv(out / "scores.csv")) < 1:
        assert "error" not in box and time.monotonic() - t0 < 30, box.get("error")
        time.sleep(0.05)
    stop.set()
    thread.join(30)
    assert box["summary"]["scored"] == 1 and box["summary"]["failed"] == 1


# --------------------------------------------------------------------------- 2. non-UTF-8 file names


@pytest.mark.skipif(sys.platform != "linux", reason="file names of arbitrary bytes are a POSIX file system's")
def test_latin1_file_names_are_scored_reported_and_resumed(tmp_path):
    folder = tmp_path / "in" / "fan" / "test"
    folder.mkdir(parents=True)
    good = os.fsdecode(os.fsencode(folder) + b"/section_00_source_test_normal_0001_caf\xe9.wav")
    corrupt = os.fsdecode(os.fsencode(folder) + b"/section_00_source_test_normal_0002_\xe9t\xe9.wav")
    write_clip(Path(good), noise(1))
    Path(corrupt).write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\xff" * 40)
    out = tmp_path / "out"
    res = run(FakeDetector(), tmp_path / "in", out, submission=True)
    good_text = good.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    assert good_text.endswith("caf\\xe9.wav")
    rows = read_scores_csv(out / "scores.csv")
    assert [(r["file"], r["file_name"]) for r in rows] == [(good_text, "section_00_source_test_normal_0001_caf\\xe9.wav")]
    assert rows[0]["score"] == expected_score(os.fsencode(good), "fan", "00")  # libsndfile: bytes
    errors = read_csv(out / "errors.csv")[1:]
    assert [e[0] for e in errors] == [corrupt.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")]
    assert [r["file"] for r in res] == [good_text]
    assert (out / "anomaly_score_fan_section_00_test.csv").read_text(encoding="utf-8").startswith(
        "section_00_source_test_normal_0001_caf\\xe9.wav,")
    # the text names identify the clips on resume: nothing again, nothing crashes
    res = run(FakeDetector(), tmp_path / "in", out, resume=True)
    assert (res.summary["scored"], res.summary["resumed"]) == (0, 2)
    # a list file naming them in Latin-1 works too
    lst = tmp_path / "clips.lst"
    lst.write_bytes(os.fsencode(good) + b"\n")
    assert run(FakeDetector(), lst, tmp_path / "out2").summary["scored"] == 1


# --------------------------------------------------------------------------- 3. train --overwrite


def test_train_refuses_to_replace_a_model_or_its_checkpoints(tmp_path, capsys):
    from fastasd.cli import main

    out = tmp_path / "model"
    (out / "checkpoints").mkdir(parents=True)
    (out / "manifest.json").write_text('{"format": "fastasd.Detector"}')
    (out / "checkpoints" / "member_0.pt").write_bytes(b"old")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # (the data root does not exist: the refusal comes first, and nothing is trained)
    assert main(["train", str(tmp_path / "nodata"), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "already holds a trained model and 1 training checkpoint(s)" in err and "--overwrite" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    from fastasd.cli.train import _refuse_replacing

    assert _refuse_replacing(out, resume=True, overwrite=False) is None  # --resume continues them
    assert _refuse_replacing(out, resume=False, overwrite=True) is None
    assert not (out / "checkpoints" / "member_0.pt").exists()  # no old member can be resumed into the new


# --------------------------------------------------------------------------- 4. resume bound to the model


def test_resume_with_another_model_is_refused(tmp_path):
    fan_clips(tmp_path / "in", 6)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        run(IdentifiedDetector("a", fail_after=1), tmp_path / "in", out)
    info = json.loads((out / "run.json").read_text())
    assert (info["model"], info["model_sha256"]) == ("/models/a", "a" * 64)
    before = (out / "scores.csv").read_bytes()
    with pytest.raises(ValueError, match="would mix two models' scores"):
        run(IdentifiedDetector("b"), tmp_path / "in", out, resume=True)
    assert (out / "scores.csv").read_bytes() == before
    assert run(IdentifiedDetector("a"), tmp_path / "in", out, resume=True).summary["scored"] == 2
    assert run(IdentifiedDetector("b"), tmp_path / "in", out, overwrite=True).summary["scored"] == 6


def test_detector_identity_is_its_files(tmp_path):
    from fastasd.api import load

    root = _tiny_dcase_root(tmp_path / "dcase")
    det = untrained_detector(root, tmp_path / "model")
    loaded = load(tmp_path / "model", device="cpu")
    assert loaded.identity() == det.identity() == {"path": str(tmp_path / "model"), "sha256": det.identity()["sha256"]}
    key = next(iter(loaded.thresholds))
    loaded.thresholds[key] += 1.0
    loaded.save(tmp_path / "model2")
    assert load(tmp_path / "model2").identity()["sha256"] != det.identity()["sha256"]


# --------------------------------------------------------------------------- 5. one process per run folder


def test_a_second_process_on_the_same_folder_is_refused(tmp_path):
    from fastasd.scoring import RunLocked

    fan_clips(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom fastasd.scoring.lock import RunLock\n"
         "lock = RunLock(sys.argv[1]); print('locked', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for kw in ({}, {"overwrite": True}, {"resume": True}):
            with pytest.raises(RunLocked, match=f"another fastasd process \\(pid {holder.pid}\\) is writing to"):
                run(FakeDetector(), tmp_path / "in", out, **kw)
        assert not (out / "scores.csv").exists()
    finally:
        holder.kill()  # kill -9: its lock file stays behind, but the kernel released the lock
        holder.wait()
    assert run(FakeDetector(), tmp_path / "in", out).summary["scored"] == 2


# --------------------------------------------------------------------------- 6. overwrite, merge, submission files


def test_overwrite_removes_the_replaced_runs_submission_files(tmp_path):
    fan_clips(tmp_path / "in", 2)
    write_clip(tmp_path / "in" / "pump" / "test" / "section_01_source_test_normal_0000.wav", noise(3))
    out = tmp_path / "out"
    run(FakeDetector(), tmp_path / "in", out)
    assert len(list(out.glob("*_pump_section_01_test.csv"))) == 2
    run(FakeDetector(), tmp_path / "in" / "fan", out, overwrite=True)
    assert sorted(p.name for p in out.glob("*_test.csv")) == ["anomaly_score_fan_section_00_test.csv",
                                                              "decision_result_fan_section_00_test.csv"]


def test_foreign_submission_files_are_never_replaced_silently(tmp_path):
    fan_clips(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    theirs = out / "anomaly_score_fan_section_00_test.csv"
    theirs.write_text("other_system_clip.wav,0.5\n")
    with pytest.raises(FileExistsError, match="holds DCASE submission files of another run"):
        run(FakeDetector(), tmp_path / "in", out)
    assert theirs.read_text() == "other_system_clip.wav,0.5\n" and not (out / "scores.csv").exists()
    run(FakeDetector(), tmp_path / "in", out, overwrite=True)
    assert "other_system_clip.wav" not in theirs.read_text()


def test_merge_never_replaces_another_runs_results_without_overwrite(tmp_path):
    fan_clips(tmp_path / "in", 4)
    out = tmp_path / "out"
    run(FakeDetector(), tmp_path / "in", out)  # an unsharded run in out
    before = (out / "scores.csv").read_bytes()
    # a sharded run into the same folder is refused before it scores (its merge would replace it)
    with pytest.raises(FileExistsError, match="the merge of the shards would replace"):
        run(FakeDetector(), tmp_path / "in", out, shard="0/2")
    assert not (out / shard_dir_name(0, 2)).exists()
    other = tmp_path / "sharded"
    for i in range(2):
        run(FakeDetector(), tmp_path / "in", other, shard=f"{i}/2")
    dirs = [other / shard_dir_name(i, 2) for i in range(2)]
    with pytest.raises(FileExistsError, match="would replace"):
        merge_shards(dirs, out)
    assert (out / "scores.csv").read_bytes() == before
    # the same shards' earlier merge is refreshed; with overwrite another run's results are replaced
    merge_shards(None, other)
    merge_shards(dirs, out, overwrite=True)
    assert len(read_scores_csv(out / "scores.csv")) == 4


# --------------------------------------------------------------------------- 8. symbolic links


def test_journals_are_never_opened_through_a_symbolic_link(tmp_path):
    fan_clips(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    elsewhere = tmp_path / "elsewhere.csv"
    (out / "scores.csv").symlink_to(victim)
    (out / "errors.csv").symlink_to(elsewhere)
    with pytest.raises(ValueError, match="is a symbolic link"):
        run(FakeDetector(), tmp_path / "in", out, resume=True)
    with pytest.raises(FileExistsError):  # a dangling link counts as an existing run
        run(FakeDetector(), tmp_path / "in", out / ".." / "out")
    run(FakeDetector(), tmp_path / "in", out, overwrite=True)  # the links are replaced, not followed
    assert victim.read_text() == "precious\n" and not elsewhere.exists()
    assert not (out / "scores.csv").is_symlink() and len(read_scores_csv(out / "scores.csv")) == 2


# --------------------------------------------------------------------------- 9. resources


def test_workers_are_capped_and_a_batch_that_cannot_fit_is_refused(caplog):
    from fastasd.scoring.pipeline import cap_num_workers, check_batch_size

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    caplog.set_level("WARNING", logger="fastasd.score")
    assert cap_num_workers(100_000) == cores and "capped" in caplog.text
    assert cap_num_workers(0) == 0 and cap_num_workers(None) is None
    with pytest.raises(ValueError, match="--workers"):
        cap_num_workers(-1)
    check_batch_size(64, 160_000)
    with pytest.raises(ValueError, match=r"batch_size \(--batch-size\) 100000000: .* more than the"):
        check_batch_size(100_000_000, 160_000)


# --------------------------------------------------------------------------- 10. a loaded model is finite


def _tamper(model_dir: Path, name: str, data: bytes) -> None:
    """Replace a model file and its digest in the manifest (as an attacker or a bad copy would)."""
    import hashlib

    (model_dir / name).write_bytes(data)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256(data).hexdigest()
    (model_dir / "manifest.json").write_text(json.dumps(manifest))


def test_a_model_with_non_finite_thresholds_or_references_does_not_load(tmp_path):
    from safetensors.numpy import load_file, save

    from fastasd.api import load

    root = _tiny_dcase_root(tmp_path / "dcase")
    untrained_detector(root, tmp_path / "model")
    thresholds = json.loads((tmp_path / "model" / "thresholds.json").read_text())
    good_thresholds = json.dumps(thresholds).encode()
    _tamper(tmp_path / "model", "thresholds.json", json.dumps({k: float("nan") for k in thresholds}).encode())
    with pytest.raises(ValueError, match=r"thresholds.json: the threshold of section .* is not a finite number"):
        load(tmp_path / "model")
    _tamper(tmp_path / "model", "thresholds.json", json.dumps(list(thresholds.values())).encode())
    with pytest.raises(ValueError, match=r"thresholds.json: expected an object of thresholds by section"):
        load(tmp_path / "model")
    _tamper(tmp_path / "model", "thresholds.json", good_thresholds)
    arrays = load_file(tmp_path / "model" / "backend_0.safetensors")
    arrays["refs"][0, 0] = np.nan
    _tamper(tmp_path / "model", "backend_0.safetensors", save(arrays))
    with pytest.raises(ValueError, match=r"backend_0.safetensors: refs holds 1 value\(s\) that are not finite"):
        load(tmp_path / "model")


# --------------------------------------------------------------------------- 11. short and truncated clips


def test_short_and_truncated_clips_are_scored_with_a_warning(tmp_path, caplog):
    caplog.set_level("WARNING", logger="fastasd.score")
    folder = tmp_path / "in" / "fan" / "test"
    full = write_clip(folder / "section_00_source_test_normal_0000.wav", noise(0))
    short = write_clip(folder / "section_00_source_test_normal_0001.wav", noise(1, N // 3))
    almost = write_clip(folder / "section_00_source_test_normal_0002.wav", noise(2, N * 4 // 5))
    buf = io.BytesIO()
    sf.write(buf, noise(3), SR, format="WAV", subtype="PCM_16")
    truncated = folder / "section_00_source_test_normal_0003.wav"
    truncated.write_bytes(buf.getvalue()[:44 + 2 * (N * 3 // 5)])  # the header says 0.2 s, 0.12 s are there
    out = tmp_path / "out"
    res = run(FakeDetector(), tmp_path / "in", out)
    assert res.summary["scored"] == 4 and res.summary["warned"] == 2
    notes = dict(read_csv(out / "warnings.csv")[1:])
    assert sorted(notes) == sorted([str(short), str(truncated)])
    assert notes[str(short)].startswith("short clip: 0.07 s of audio where the model takes 0.20 s")
    assert "the file is truncated (its header declares 6400 bytes of audio data, the file holds 3840)" in \
        notes[str(truncated)]
    assert str(full) not in notes and str(almost) not in notes
    assert "scored with a warning" in caplog.text
    assert run(FakeDetector(), tmp_path / "in", out, resume=True).summary["warned"] == 0
    assert len(read_csv(out / "warnings.csv")) == 3  # no note twice


# --------------------------------------------------------------------------- 14, 15. exit statuses, list files, one-line errors


def test_exit_status_says_whether_everything_was_scored(tmp_path, monkeypatch, capsys):
    import types

    from fastasd.cli import main

    fake_api = types.ModuleType("fastasd.api")
    fake_api.load = lambda path, device=None: FakeDetector()
    monkeypatch.setitem(sys.modules, "fastasd.api", fake_api)
    fan_clips(tmp_path / "in", 2)
    common = ["--workers", "0", "--no-progress"]
    assert main(["score", "M", str(tmp_path / "in"), "--out", str(tmp_path / "a"), *common]) == 0
    # --section unknown to the model: nothing scored
    assert main(["score", "M", str(tmp_path / "in"), "--out", str(tmp_path / "b"), "--section", "toaster:09",
                 *common]) == 4
    (tmp_path / "in" / "fan" / "test" / "section_00_source_test_normal_0099.wav").write_bytes(b"RIFF junk")
    assert main(["score", "M", str(tmp_path / "in"), "--out", str(tmp_path / "c"), *common]) == 3
    # one-line usage errors (exit 2), naming the file or argument, never a traceback
    (tmp_path / "file").write_text("x")
    capsys.readouterr()
    cases = [
        (["--out", str(tmp_path / "file")], "the output folder is a file"),
        (["--out", str(tmp_path / "d"), "--shard", "3/2"], "--shard"),
        (["--out", str(tmp_path / "d"), "--batch-size", "0"], "--batch-size"),
        (["--out", str(tmp_path / "d"), "--batch-size", "100000000000"], "--batch-size"),
        (["--out", str(tmp_path / "d"), "--workers", "-1"], "--workers"),
        (["--out", str(tmp_path / "a")], "scores.csv exists"),
    ]
    for extra, what in cases:
        try:
            rc = main(["score", "M", str(tmp_path / "in"), *extra, *common])
        except SystemExit as e:  # argparse's own usage errors
            rc = e.code
        err = capsys.readouterr().err
        assert rc == 2 and what in err and "Traceback" not in err, (extra, err)
    assert main(["score", "M", str(tmp_path / "missing.wav"), "--out", str(tmp_path / "e"), *common]) == 2
    err = capsys.readouterr().err
    assert "missing.wav: no such file" in err and len(err.strip().splitlines()) == 1


def test_disk_full_stops_with_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    import errno
    import types

    from fastasd.cli import main
    from fastasd.scoring import journal

    fake_api = types.ModuleType("fastasd.api")
    fake_api.load = lambda path, device=None: FakeDetector()
    monkeypatch.setitem(sys.modules, "fastasd.api", fake_api)

    real_writer = journal.csv.writer

    class FullDisk:  # the header goes in; the first rows of clips find the disk full
        def __init__(self, f, **kw):
            self.w = real_writer(f, **kw)

        def writerow(self, row):
            self.w.writerow(row)

        def writerows(self, rows):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal.csv, "writer", FullDisk)
    fan_clips(tmp_path / "in", 2)
    rc = main(["score", "M", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and f"{tmp_path / 'out'}: No space left on device" in err and "--resume" in err
    assert "Traceback" not in err


def test_a_missing_entry_of_a_list_file_is_an_error_row(tmp_path):
    clips = fan_clips(tmp_path / "in", 2)
    lst = tmp_path / "clips.txt"
    lst.write_text(f"{clips[0]}\nin/fan/test/gone.wav\n{clips[1]}\n")
    out = tmp_path / "out"
    res = run(FakeDetector(), lst, out)
    assert res.summary["scored"] == 2 and res.summary["failed"] == 1
    errors = dict(read_csv(out / "errors.csv")[1:])
    assert errors == {os.path.normpath(tmp_path / "in/fan/test/gone.wav"): f"not found (listed in {lst})"}
