"""Batch scoring (fastasd.scoring): archives, errors, resume, sharding and merge, submission, CLI.

Most tests use a tiny fake detector (score = mean |x| + section + machine-type offsets, so every
score is exact and any mix-up of clips, machine types or sections shows); one integration test
trains a real tiny Detector.
"""
from __future__ import annotations

import csv
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from fastasd.scoring import (
    ERRORS_HEADER,
    SCORES_HEADER,
    merge_shards,
    read_scores_csv,
    score_inputs,
    shard_dir_name,
)

try:
    from tests.test_inputs import CORRUPT, EVIL, GOOD, N, NON_AUDIO, SR, TRAIN, build_dataset
except ImportError:  # pytest's default import mode puts tests/ itself on sys.path
    from test_inputs import CORRUPT, EVIL, GOOD, N, NON_AUDIO, SR, TRAIN, build_dataset

KNOWN = {("fan", "00"), ("pump", "01"), ("valve", "00")}
# GOOD minus the clip whose path gives no section ("loose/recording_0001.wav")
SCORABLE = [m for m in GOOD if not m.startswith("loose/")]


class FakeDetector:
    """The Detector interface score_inputs needs; fails after ``fail_after`` batches if set."""

    def __init__(self, known=KNOWN, num_samples=N, fail_after=None):
        self.sample_rate = SR
        self.num_samples = num_samples
        self.config = types.SimpleNamespace(channel=None)
        self.device = torch.device("cpu")
        self.known_sections = set(known)
        self.fail_after = fail_after
        self.calls = 0
        self.batch_sizes = []

    def score_waveforms(self, waveforms, machine_types, sections, *, bf16=False):
        assert isinstance(waveforms, torch.Tensor) and waveforms.dtype == torch.float32
        assert waveforms.shape[1] == self.num_samples
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        self.batch_sizes.append(len(waveforms))
        self.bf16 = bf16
        for mt, s in zip(machine_types, sections):
            if (mt, s) not in self.known_sections:
                raise KeyError((mt, s))
        score = waveforms.double().abs().mean(dim=1).numpy()
        score = score + np.array([10 * int(s) + len(mt) for mt, s in zip(machine_types, sections)])
        return score, (score % 1 > 0.1).astype(np.int64)


def expected_score(path: Path, machine_type: str, section: str) -> float:
    """The fake detector's score of one plain file, read on its own."""
    import soundfile as sf

    x, _ = sf.read(path, dtype="float32")
    x = np.pad(x, (0, max(0, N - len(x))))[:N]
    return float(torch.from_numpy(x).double().abs().mean()) + 10 * int(section) + len(machine_type)


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def tree(root: Path, exclude: Path | None = None) -> dict[str, tuple[int, int]]:
    """Every file below root (but below ``exclude``): relative path -> (size, mtime_ns)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for fn in files:
            p = Path(dirpath) / fn
            if exclude is not None and exclude in p.parents:
                continue
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def data(tmp_path):
    return build_dataset(tmp_path / "in")


def _run(det, inputs, out, **kw):
    kw.setdefault("num_workers", 0)
    kw.setdefault("batch_size", 2)
    kw.setdefault("progress", False)
    return score_inputs(det, inputs, out_dir=out, **kw)


# --------------------------------------------------------------------------- archives end to end


def test_archives_each_clip_once_same_score_as_plain_file(data, tmp_path):
    out = tmp_path / "out"
    before = tree(tmp_path)
    det = FakeDetector()
    # a worker process here (the other tests decode in a thread to stay fast)
    res = _run(det, [data["zip"], data["tgz"], data["tar"]], out, num_workers=1, batch_size=3)
    after = tree(tmp_path, exclude=out)
    assert after == before, "something was written outside the output folder"
    assert not (tmp_path / "evil.wav").exists() and not (out.parent / "evil.wav").exists()
    assert sorted(p.name for p in out.iterdir()) == [".fastasd.lock", "errors.csv", "run.json", "scores.csv"]

    rows = read_csv(out / "scores.csv")
    assert tuple(rows[0]) == SCORES_HEADER
    names = [r[0] for r in rows[1:]]
    expected = [f"{os.path.normpath(data[k])}::{m}" for k in ("zip", "tgz", "tar") for m in SCORABLE]
    assert sorted(names) == sorted(expected) and len(names) == len(set(names))
    for rec in read_scores_csv(out / "scores.csv"):
        member = rec["file"].split("::", 1)[1]
        assert rec["score"] == expected_score(data["plain"] / member, rec["machine_type"], rec["section"])
        assert rec["file_name"] == Path(member).name
    from fastasd.data.inputs import iter_sources

    order = [s.name for s in iter_sources([data["zip"], data["tgz"], data["tar"]]) if s.name in set(expected)]
    assert [r["file"] for r in res] == order  # records come in input order
    assert {r["file"]: r["score"] for r in res} == {r["file"]: r["score"] for r in read_scores_csv(out / "scores.csv")}

    errors = read_csv(out / "errors.csv")
    assert tuple(errors[0]) == ERRORS_HEADER
    reasons = {name: reason for name, reason in errors[1:]}
    assert len(reasons) == len(errors) - 1
    for k in ("zip", "tgz", "tar"):
        a = os.path.normpath(data[k])
        assert "cannot read audio" in reasons[f"{a}::{CORRUPT}"] and " object at 0x" not in reasons[f"{a}::{CORRUPT}"]
        for e in EVIL:
            assert reasons[f"{a}::{e}"].startswith("unsafe member name")
        assert reasons[f"{a}::loose/recording_0001.wav"].startswith("unknown section unknown/unknown")
        assert f"{a}::{TRAIN}" not in reasons and f"{a}::{NON_AUDIO}" not in reasons
    s = res.summary
    assert (s["scored"], s["failed"], s["unknown_section"], s["unsafe"]) == (3 * len(SCORABLE), 3, 3, 6)
    assert s["skipped_reasons"]["not audio"] == 3 and s["skipped_reasons"]["training clip"] == 3
    assert s["clips_per_s"] > 0
    # same base names in the three archives: the default submission rule warns, writes nothing
    assert s.get("submission_files") == 0


def test_plain_folder_submission_files(data, tmp_path):
    out = tmp_path / "out"
    res = _run(FakeDetector(), data["plain"] / "data", out)
    assert res.summary["scored"] == 3 + 2 and res.summary["failed"] == 1  # fan, pump; the corrupt fan clip
    from fastasd.submission import read_decisions, read_scores

    got = sorted(read_scores(out))
    want = sorted((r["machine_type"], r["section"], r["file_name"], r["score"]) for r in res)
    assert got == want
    assert {(mt, s) for mt, s, _, _ in got} == {("fan", "00"), ("pump", "01")}
    assert len(read_decisions(out)) == len(got)
    out2 = tmp_path / "out2"
    _run(FakeDetector(), data["plain"] / "data", out2, submission=False)
    assert not list(out2.glob("anomaly_score_*"))


def test_refuses_to_replace_a_run_unless_told(data, tmp_path):
    out = tmp_path / "out"
    _run(FakeDetector(), data["zip"], out)
    with pytest.raises(FileExistsError, match="resume"):
        _run(FakeDetector(), data["zip"], out)
    res = _run(FakeDetector(), data["zip"], out, overwrite=True)
    assert len(read_csv(out / "scores.csv")) == 1 + len(SCORABLE) == 1 + len(res)


def test_without_out_dir_returns_records_and_errors(data):
    res = score_inputs(FakeDetector(), data["zip"], num_workers=0, batch_size=4, progress=False)
    assert len(res) == len(SCORABLE) and all(set(r) == set(SCORES_HEADER) for r in res)
    assert any("cannot read audio" in reason for _, reason in res.errors)


def test_memory_is_bounded_by_the_window(tmp_path, monkeypatch):
    """However many clips, at most window + the batch buffers' worth are decoded ahead of the model."""
    import time

    import soundfile as sf

    import fastasd.scoring.pipeline as score_mod
    from fastasd.data.inputs import iter_sources

    folder = tmp_path / "many"
    folder.mkdir()
    for k in range(60):
        sf.write(folder / f"c{k:03d}.wav", np.full(64, k / 100, dtype=np.float32), SR)
    decoded = []
    original = score_mod.decode_source

    def counting(src, data=None, **kw):
        decoded.append(src.name)
        return original(src, data, **kw)

    monkeypatch.setattr(score_mod, "decode_source", counting)
    pipe = score_mod._Pipeline(list(iter_sources(folder)), batch_size=2, num_workers=0, num_samples=64,
                               sample_rate=SR, channel=None, pin_memory=False, window=4)
    try:
        time.sleep(0.5)  # the model (us) takes nothing: the readers must stop on their own
        ahead = len(decoded)
        # 3 buffers x 2 clips ready, 1 clip in hand waiting for a buffer, 4 in flight
        assert 4 <= ahead <= 3 * 2 + 1 + 4
        n = 0
        for batch in pipe:
            n += len(batch.sources)
            pipe.release(batch)
        assert n == 60 and len(decoded) == 60
    finally:
        pipe.close()


def test_bf16_is_passed_to_the_detector(data, tmp_path):
    det = FakeDetector()
    _run(det, data["zip"], tmp_path / "o", bf16=True)
    assert det.bf16 is True


def test_ground_truth_fills_unknown_labels(data, tmp_path):
    gt = tmp_path / "gt"
    (gt / "ground_truth_data").mkdir(parents=True)
    (gt / "ground_truth_domain").mkdir()
    (gt / "ground_truth_data" / "ground_truth_fan_section_00_test.csv").write_text("section_00_0002.wav,1\n")
    (gt / "ground_truth_domain" / "ground_truth_fan_section_00_test.csv").write_text("section_00_0002.wav,1\n")
    res = _run(FakeDetector(), data["plain"] / "data" / "fan", tmp_path / "o", ground_truth=gt)
    rec = next(r for r in res if r["file_name"] == "section_00_0002.wav")
    assert (rec["label"], rec["domain"]) == ("anomaly", "target")
    rows = {r["file_name"]: r for r in read_scores_csv(tmp_path / "o" / "scores.csv")}
    assert rows["section_00_0002.wav"]["label"] == "anomaly"
    assert rows["section_00_source_test_normal_0000_a.wav"]["label"] == "normal"  # the name wins


# --------------------------------------------------------------------------- sections


def test_section_override_and_unknown_section(data, tmp_path):
    loose = data["plain"] / "loose" / "recording_0001.wav"
    res = _run(FakeDetector(), loose, tmp_path / "a")
    assert len(res) == 0 and res.summary["unknown_section"] == 1
    res = _run(FakeDetector(), loose, tmp_path / "b", section="pump:1")
    assert [(r["machine_type"], r["section"], r["score"]) for r in res] == [
        ("pump", "01", expected_score(loose, "pump", "01"))]
    # a section the model does not know is reported with its name, not scored
    det = FakeDetector(known={("fan", "00")})
    res = _run(det, data["plain"] / "data", tmp_path / "c")
    assert {r["machine_type"] for r in res} == {"fan"}
    errors = dict(read_csv(tmp_path / "c" / "errors.csv")[1:])
    assert sum(v == "unknown section pump/01" for v in errors.values()) == 2


def test_list_file_and_glob_inputs(data, tmp_path):
    lst = tmp_path / "clips.lst"
    lst.write_text(f"# two archives and a glob\nin/archives/a.zip\n{data['tgz']}\nin/plain/data/fan/test/*.wav\n")
    res = _run(FakeDetector(), lst, tmp_path / "out")
    fan_plain = [m for m in SCORABLE if m.startswith("data/fan/")]
    assert res.summary["scored"] == 2 * len(SCORABLE) + len(fan_plain)


# --------------------------------------------------------------------------- resume


def _rows(path: Path) -> list[tuple[str, ...]]:
    return sorted(tuple(r) for r in read_csv(path)[1:])


def test_interrupted_then_resumed_equals_uninterrupted(data, tmp_path):
    inputs = [data["zip"], data["tgz"]]
    full = tmp_path / "full"
    ref = _run(FakeDetector(), inputs, full)

    part = tmp_path / "part"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(FakeDetector(fail_after=3), inputs, part)
    done = read_csv(part / "scores.csv")
    assert len(done) == 1 + 3 * 2  # three batches of two were flushed before the crash
    # and a crash in the middle of writing a line
    with open(part / "scores.csv", "a", encoding="utf-8") as f:
        f.write(done[1][0][:-3] + "x,sect")  # no newline: a partial row
    res = _run(FakeDetector(), inputs, part, resume=True)
    assert _rows(part / "scores.csv") == _rows(full / "scores.csv")
    assert _rows(part / "errors.csv") == _rows(full / "errors.csv")
    assert res.summary["resumed"] > 0 and res.summary["scored"] == len(ref) - 6
    assert [(r["file"], r["score"]) for r in res] == [(r["file"], r["score"]) for r in ref]
    # resuming a finished run scores nothing and duplicates nothing
    res = _run(FakeDetector(), inputs, part, resume=True)
    assert res.summary["scored"] == 0 and _rows(part / "scores.csv") == _rows(full / "scores.csv")
    assert [r["file"] for r in res] == [r["file"] for r in ref]


# --------------------------------------------------------------------------- sharding


def test_shards_union_is_whole_and_merge_equals_unsharded(data, tmp_path):
    inputs = [data["plain"], data["zip"], data["tgz"]]
    full = tmp_path / "full"
    ref = _run(FakeDetector(), inputs, full)
    out = tmp_path / "sharded"
    n = 3
    shard_names = []
    for i in range(n):
        res = _run(FakeDetector(), inputs, out, shard=f"{i}/{n}")
        shard_names.append({r["file"] for r in res})
        d = out / shard_dir_name(i, n)
        assert (d / "scores.csv").exists() and not list(d.glob("anomaly_score_*"))
        # the last shard to finish merges (all shards are visible here)
        assert (out / "scores.csv").exists() == (i == n - 1)
    assert set.union(*shard_names) == {r["file"] for r in ref}
    assert sum(map(len, shard_names)) == len(ref)
    assert _rows(out / "scores.csv") == _rows(full / "scores.csv")
    assert _rows(out / "errors.csv") == _rows(full / "errors.csv")
    # merged rows are sorted by file
    names = [r[0] for r in read_csv(out / "scores.csv")[1:]]
    assert names == sorted(names)

    # explicit merge (CLI) into another folder, and its checks
    from fastasd.cli import main

    merged = tmp_path / "merged"
    dirs = [str(out / shard_dir_name(i, n)) for i in range(n)]
    assert main(["score", "--merge", "--out", str(merged), *dirs]) == 3  # merged; some clips are errors
    assert _rows(merged / "scores.csv") == _rows(full / "scores.csv")
    with pytest.raises(ValueError, match=r"missing"):
        merge_shards(dirs[:2], tmp_path / "m2")
    with pytest.raises(ValueError, match="given twice"):
        merge_shards([dirs[0], dirs[0], dirs[1]], tmp_path / "m3")
    s = merge_shards(dirs[:2], tmp_path / "m4", allow_incomplete=True)
    assert s["complete"] is False and s["scored"] < len(ref)


def test_shard_from_torchrun_environment(data, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    res = _run(FakeDetector(), data["zip"], tmp_path / "out")
    assert res.summary["shard"] == "1/2"
    assert (tmp_path / "out" / shard_dir_name(1, 2) / "scores.csv").exists()


# --------------------------------------------------------------------------- CLI


def test_cli_scores_with_fake_model(data, tmp_path, monkeypatch):
    fake_api = types.ModuleType("fastasd.api")
    loaded = []

    def load(path, device=None):
        loaded.append((path, device))
        return FakeDetector()

    fake_api.load = load
    monkeypatch.setitem(sys.modules, "fastasd.api", fake_api)
    from fastasd.cli import main

    out = tmp_path / "out"
    rc = main(["score", "MODEL", str(data["zip"]), "--out", str(out), "--batch-size", "4", "--workers", "0",
               "--no-progress", "--submission"])
    assert rc == 3  # scored, with the corrupt, unsafe and unknown-section clips in errors.csv
    assert loaded == [("MODEL", "cpu")]
    assert len(read_csv(out / "scores.csv")) == 1 + len(SCORABLE)
    assert list(out.glob("anomaly_score_fan_section_00_test.csv"))
    rc = main(["score", "MODEL", str(data["zip"]), "--out", str(out), "--workers", "0", "--no-progress",
               "--resume", "--no-submission"])
    assert rc == 3 and len(read_csv(out / "scores.csv")) == 1 + len(SCORABLE)  # the run's errors stay


# --------------------------------------------------------------------------- a real detector


def _tiny_dcase_root(root: Path) -> Path:
    """2 machine types x 1 section: 8 training clips (6 source, 2 target), 4 test clips each."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    n = 8000  # 0.5 s
    for mt, sec in (("fan", "00"), ("pump", "01")):
        for k in range(8):
            dom = "source" if k < 6 else "target"
            p = root / mt / "train" / f"section_{sec}_{dom}_train_normal_{k:04d}_x.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            sf.write(p, (0.1 * rng.standard_normal(n)).astype(np.float32), SR)
        for k in range(4):
            lab = "normal" if k < 2 else "anomaly"
            p = root / mt / "test" / f"section_{sec}_source_test_{lab}_{k:04d}_x.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            sf.write(p, ((0.1 + 0.2 * (k >= 2)) * rng.standard_normal(n)).astype(np.float32), SR)
    return root


def untrained_detector(root: Path, model_dir: Path):
    """A real Detector as training builds it (a small network, fitted backend, thresholds) on the
    training clips of ``root``, minus the gradient steps (they would only cost time), saved to
    ``model_dir``."""
    from fastasd.api import fit_detector
    from fastasd.config import Config
    from fastasd.data.labels import ClassEncoder
    from fastasd.data.layout import discover
    from fastasd.model import EmbeddingNet

    cfg = Config(clip_seconds=0.5, n_fft=256, hop=128, n_subclusters=2, n_clusters=2, embedding_dim=16,
                 spectrum_dense_layers=1)
    train = discover(root, splits=("train",))
    torch.manual_seed(0)
    det = fit_detector(cfg, [EmbeddingNet(cfg).eval()], ClassEncoder().fit(train), train, device="cpu",
                       progress=False)
    det.save(model_dir)
    return det


def test_real_detector_cli_archive_equals_plain_files(tmp_path):
    import zipfile

    from fastasd.cli import main
    from fastasd.submission import read_scores

    root = _tiny_dcase_root(tmp_path / "dcase")
    det = untrained_detector(root, tmp_path / "model")
    plain = {Path(r["file"]).relative_to(root).as_posix(): r for r in det.score(root, num_workers=0, progress=False)}
    assert len(plain) == 8  # the test clips of the root only

    archive = tmp_path / "dcase.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(root.rglob("*.wav")):
            z.write(p, "2024/dcase/" + p.relative_to(root).as_posix())
    out = tmp_path / "out"
    rc = main(["score", str(tmp_path / "model"), str(archive), "--out", str(out), "--workers", "0",
               "--batch-size", "3", "--device", "cpu", "--no-progress"])
    assert rc == 0
    got = {r["file"].split("::2024/dcase/")[1]: r for r in read_scores_csv(out / "scores.csv")}
    assert set(got) == set(plain)
    for k, r in got.items():
        # same waveforms, other batch composition: equal up to float32 kernel differences
        assert r["score"] == pytest.approx(plain[k]["score"], rel=1e-4, abs=1e-6)
        assert (r["machine_type"], r["section"], r["label"]) == (
            plain[k]["machine_type"], plain[k]["section"], plain[k]["label"])
    # the submission files of both sections, by default
    sub = read_scores(out)
    assert sorted((mt, s) for mt, s, _, _ in sub) == [("fan", "00")] * 4 + [("pump", "01")] * 4
