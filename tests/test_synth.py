"""Tests of the synthetic DCASE-style data generator (fastasd.data.synth)."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fastasd.data import synth
from fastasd.data.layout import discover, parse_file_name, read_ground_truth

# Tiny sizes: 2 machine types x 2 sections x (3 + 2 train + 8 test) clips of 0.5 s.
TINY = dict(machine_types=["fan", "valve"], sections=2, n_train_source=3, n_train_target=2,
            n_test=8, clip_seconds=0.5)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    info = synth.generate(out, seed=0, eval_copy=True, **TINY)
    return out, info


def test_same_seed_gives_identical_bytes(tiny, tmp_path):
    out, _ = tiny
    synth.generate(tmp_path / "again", seed=0, eval_copy=True, **TINY)
    a, b = _files(out), _files(tmp_path / "again")
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_other_seed_changes_every_clip(tiny, tmp_path):
    out, _ = tiny
    synth.generate(tmp_path / "s1", seed=1, **TINY)
    a, b = _files(out), _files(tmp_path / "s1")
    wavs = [k for k in b if k.endswith(".wav")]
    assert wavs and all(k in a for k in wavs)  # same names: the seed does not change the layout
    assert [k for k in wavs if a[k] == b[k]] == []


def test_changing_sizes_keeps_the_other_files(tiny, tmp_path):
    out, _ = tiny
    bigger = dict(TINY, n_train_source=4, n_test=12, machine_types=["valve"])
    synth.generate(tmp_path / "big", seed=0, **bigger)
    a, b = _files(out), _files(tmp_path / "big")
    common = [k for k in b if k.endswith(".wav") and k in a]
    assert len(common) == 2 * (3 + 2 + 8)  # every valve clip of the tiny set
    assert [k for k in common if a[k] != b[k]] == []


def test_layout_round_trip(tiny):
    out, info = tiny
    clips = discover(out)  # eval/ and eval_ground_truth/ hold no train/test: not machine types
    counts = Counter((c.machine_type, c.section, c.split, c.domain, c.label) for c in clips)
    expected = {}
    for mt in ("fan", "valve"):
        for sec in ("00", "01"):
            expected[(mt, sec, "train", "source", "normal")] = 3
            expected[(mt, sec, "train", "target", "normal")] = 2
            for dom in ("source", "target"):
                for lab in ("normal", "anomaly"):
                    expected[(mt, sec, "test", dom, lab)] = 2
    assert dict(counts) == expected
    assert info["n_files"] == len(clips) == sum(expected.values())
    assert info["sections"] == ["00", "01"] and info["machine_types"] == ["fan", "valve"]
    for c in clips:
        x, sr = sf.read(c.path, dtype="int16")
        assert sr == 16000 and x.shape == (8000,)
        # attributes_<ss>.csv row = the name's attribute tail, split into key/value pairs.
        flat = [v for pair in c.attribute_values for v in pair]
        assert "_".join(flat) == c.attributes != ""
        assert parse_file_name(c.file_name).attributes == c.attributes


def test_domain_shift_uses_unseen_attribute_values(tiny):
    out, info = tiny
    clips = discover(out)
    for mt in ("fan", "valve"):
        for sec, kind in info["shift"][mt].items():
            src = {c.attribute_values for c in clips if (c.machine_type, c.section, c.domain) == (mt, sec, "source")}
            tgt = {c.attribute_values for c in clips if (c.machine_type, c.section, c.domain) == (mt, sec, "target")}
            src1, tgt1 = {a[0][1] for a in src}, {a[0][1] for a in tgt}
            src2, tgt2 = {a[1][1] for a in src}, {a[1][1] for a in tgt}
            assert kind == ("speed", "load")[int(sec) % 3]
            if kind == "speed":
                assert tgt1.isdisjoint(src1) and tgt2 <= src2
            else:
                assert tgt2.isdisjoint(src2) and tgt1 <= src1


def test_attributes_csv(tiny):
    out, _ = tiny
    for mt in ("fan", "valve"):
        for sec in ("00", "01"):
            with open(out / mt / f"attributes_{sec}.csv", newline="") as f:
                rows = list(csv.reader(f))
            assert rows[0] == ["file_name", "d1p", "d1v", "d2p", "d2v"]
            names = {r[0] for r in rows[1:]}
            on_disk = {f"{mt}/{p.parent.name}/{p.name}" for p in (out / mt).glob(f"*/section_{sec}_*.wav")}
            assert names == on_disk


def test_eval_copy_and_ground_truth_recover_dev_labels(tiny):
    out, info = tiny
    gt_root = out / "eval_ground_truth"
    for kind in ("data", "domain"):
        assert (gt_root / f"ground_truth_{kind}" / "ground_truth_fan_section_00_test.csv").is_file()
    eval_test = discover(out / "eval", splits=("test",))
    assert {(c.label, c.domain) for c in eval_test} == {("unknown", "unknown")}  # names carry no labels
    assert all(parse_file_name(c.file_name).label == "unknown" for c in eval_test)

    truth = read_ground_truth(gt_root)
    dev = {(c.machine_type, c.file_name): c for c in discover(out, splits=("test",))}
    assert len(truth) == len(dev) == len(info["eval_names"])
    by_eval = {(k.split("/")[0], v): k.split("/", 1)[1] for k, v in info["eval_names"].items()}
    for c in discover(out / "eval", ground_truth=gt_root):
        if c.split == "train":
            assert (out / c.machine_type / "train" / c.file_name).read_bytes() == Path(c.path).read_bytes()
            continue
        d = dev[(c.machine_type, by_eval[(c.machine_type, c.file_name)])]
        assert (c.label, c.domain, c.section) == (d.label, d.domain, d.section)
        assert Path(c.path).read_bytes() == Path(d.path).read_bytes()


def test_eval_order_does_not_follow_labels(tmp_path):
    # With 40 test clips per section the shuffled names must not keep the label blocks together.
    info = synth.generate(tmp_path / "d", seed=0, eval_copy=True, machine_types=["pump"], sections=1,
                          n_train_source=1, n_train_target=1, n_test=40, clip_seconds=0.5)
    truth = read_ground_truth(info["ground_truth"])
    labels = [truth[k][0] for k in sorted(truth)]
    first_half = Counter(labels[:20])
    assert 5 <= first_half["anomaly"] <= 15, labels


def test_meta_and_info_files(tiny):
    out, _ = tiny
    meta = list(csv.DictReader(open(out / synth.META_FILE, newline="")))
    assert len(meta) == 2 * 2 * 8
    kinds = {r["anomaly"] for r in meta if r["label"] == "anomaly"}
    assert kinds and kinds <= set(synth._ANOMALIES["fan"]) | set(synth._ANOMALIES["valve"])
    assert all(r["anomaly"] == "" for r in meta if r["label"] == "normal")
    assert all(r["eval_file_name"].startswith(f"section_{r['section']}_") for r in meta)
    info = json.loads((out / synth.INFO_FILE).read_text())
    assert info["status"] == "complete" and info["seed"] == 0


@pytest.mark.parametrize("mt", synth.ALL_MACHINE_TYPES)
def test_every_machine_type_renders_sane_audio(mt):
    sr, n = 16000, 8000
    inst = synth._make_instance(0, mt, 2, n, sr)  # section 2: both attributes shifted
    for domain in ("source", "target"):
        dom = synth._make_domain(0, mt, 2, domain, sr)
        combo = synth._combos(mt, "both", domain)[0]
        for i, kind in enumerate((None, *synth._ANOMALIES[mt])):
            anomaly = (kind, 1.0) if kind else None
            x = synth._render_clip(inst, dom, synth._rng(0, i), combo, anomaly, n, sr)
            rms_db = 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
            assert x.dtype == np.float32 and np.isfinite(x).all()
            assert -45 < rms_db < -18, (mt, domain, kind, rms_db)  # about -30 dBFS
            assert np.mean(np.abs(x) >= 1.0) < 1e-3  # (almost) no clipping


def test_anomalies_change_the_sound():
    # Same clip seed with and without each anomaly: the anomaly must add a clear difference
    # (>= -30 dB relative to the clip) and leave the rest unchanged in level (within 6 dB).
    # 2 s clips: a slider stroke reverses at least once in 2 s (backlash acts at reversals).
    sr, n = 16000, 32000
    for mt in synth.ALL_MACHINE_TYPES:
        inst = synth._make_instance(0, mt, 0, n, sr)
        combo = synth._combos(mt, "speed", "source")[0]
        clean = synth._render_machine(inst, synth._rng(5), combo, None, n, sr)
        for kind in synth._ANOMALIES[mt]:
            x = synth._render_machine(inst, synth._rng(5), combo, (kind, 1.0), n, sr)
            diff_db = 10 * np.log10(np.mean((x - clean) ** 2) / np.mean(clean**2))
            level_db = 10 * np.log10(np.mean(x**2) / np.mean(clean**2))
            assert diff_db > -30, (mt, kind, diff_db)
            assert abs(level_db) < 6, (mt, kind, level_db)


def test_rerun_replaces_previous_set_and_refuses_foreign_folders(tmp_path):
    out = tmp_path / "d"
    small = dict(TINY, machine_types=["gearbox"], sections=1)
    synth.generate(out, seed=0, **dict(small, n_test=12))
    synth.generate(out, seed=0, **small)
    assert len(list((out / "gearbox" / "test").glob("*.wav"))) == 8  # stale clips removed
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="foreign"):
        synth.generate(foreign, **small)
    assert (foreign / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_test=6), "n_test"),
    (dict(machine_types=["drill"]), "machine_types"),
    (dict(seed=-1), "seed"),
    (dict(clip_seconds=0.1), "clip_seconds"),
    (dict(sections=0), "sections"),
])
def test_invalid_arguments_name_the_argument(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        synth.generate(tmp_path / "x", **dict(TINY, **kwargs))


def test_cli(tmp_path, capsys):
    from fastasd.cli import main

    out = tmp_path / "cli"
    rc = main(["synth", str(out), "--seed", "3", "--machine-types", "slider,ToyCar", "--sections", "1",
               "--train-source", "2", "--train-target", "1", "--test", "4", "--clip-seconds", "0.5",
               "--eval-copy"])
    assert rc == 0
    assert "wrote 14 clips" in capsys.readouterr().out
    assert len(discover(out)) == 14 and len(discover(out / "eval")) == 14
    assert main(["synth", str(tmp_path / "bad"), "--test", "3"]) == 2
