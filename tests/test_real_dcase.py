"""Real DCASE recordings end to end (issue 19).

``../shared/real/dcase2023_mini/`` lies beside the repository (CI has it; see its README): 28
real clips of the DCASE 2023 task 2 development set, 7 machine types, section 00, 2 training and
2 test clips each, 16 kHz mono; ToyCar and ToyTrain clips are 12 s, the others 10 s. The module
is skipped, with the reason, when the folder is absent. The clips are read where they lie (never
copied into the repository); the DCASE 2020 cases write 2020-layout files of their audio into
``tmp_path``.

What each real clip exercises:

* every one of the 28 names: parsing (machine type, section, domain, label, attribute tail);
* ToyCar (12 s; test: two source normals, no anomaly): decoding 12-s clips, the crop count at
  10 s, a section in which every figure is undefined;
* ToyTrain (12 s; test: a target anomaly and a target normal): 12-s clips again; official target
  AUC and pAUC defined, the source AUC undefined (no source normal);
* bearing, gearbox (test: a source normal and a target anomaly): official source AUC defined,
  target AUC undefined (no target normal);
* fan (test: a source anomaly and a target normal): the reverse; its two training clips alone
  (one machine type, one section, one attribute ``m-n_X``, one domain) make ONE auxiliary class:
  the few-classes warning;
* slider (test: two normals): no anomaly, like ToyCar;
* valve (test: a target anomaly and a target normal of the same attribute ``pat_03``): defined
  target figures;
* all 14 training clips: a 1-epoch training at 1-s clips, ``fastasd score``, ``fastasd
  evaluate`` with partial labels (exit 0 with a warning, ``--strict`` exit 2), ONNX export and
  ``fastasd score --onnx``; ToyCar and ToyTrain alone: ``--clip-seconds auto`` (12 s);
* the audio of all 28 under DCASE 2020 names (machine ids, no domains): the 2020 metric picked
  automatically, ``fastasd baseline`` and ``fastasd evaluate``, checked against an independent
  AUC/pAUC (tests/auc_reference.py).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REAL_ROOT = Path(__file__).resolve().parents[2] / "shared" / "real"
REAL = REAL_ROOT / "dcase2023_mini"
pytestmark = pytest.mark.skipif(
    not REAL.is_dir(), reason=f"{REAL} not found: the real DCASE 2023 clips lie beside the "
    "repository in ../shared/real (CI has them); never copy them into the repository")

from auc_reference import amean, mcclish_pauc, rank_auc  # noqa: E402  tests/auc_reference.py
from tiny import tiny_config  # noqa: E402  tests/tiny.py

import fastasd  # noqa: E402
from fastasd.cli import main  # noqa: E402
from fastasd.data.audio import load_audio  # noqa: E402
from fastasd.data.layout import discover, layout_year  # noqa: E402
from fastasd.data.lengths import header_seconds, length_fit_message  # noqa: E402

# (machine type, folder, file name, domain, label, attribute tail): written out by hand from the
# data set, not derived by the parser under test.
EXPECTED = [
    ("ToyCar", "test", "section_00_source_test_normal_0028_car_C2_spd_34V_mic_1.wav", "source", "normal", "car_C2_spd_34V_mic_1"),
    ("ToyCar", "test", "section_00_source_test_normal_0029_car_C2_spd_34V_mic_1.wav", "source", "normal", "car_C2_spd_34V_mic_1"),
    ("ToyCar", "train", "section_00_source_train_normal_0362_car_C2_spd_31V_mic_1.wav", "source", "normal", "car_C2_spd_31V_mic_1"),
    ("ToyCar", "train", "section_00_source_train_normal_0835_car_D2_spd_34V_mic_1.wav", "source", "normal", "car_D2_spd_34V_mic_1"),
    ("ToyTrain", "test", "section_00_target_test_anomaly_0015_car_A2_spd_6_mic_2.wav", "target", "anomaly", "car_A2_spd_6_mic_2"),
    ("ToyTrain", "test", "section_00_target_test_normal_0049_car_E2_spd_9_mic_2.wav", "target", "normal", "car_E2_spd_9_mic_2"),
    ("ToyTrain", "train", "section_00_source_train_normal_0385_car_C2_spd_7_mic_1.wav", "source", "normal", "car_C2_spd_7_mic_1"),
    ("ToyTrain", "train", "section_00_source_train_normal_0977_car_D2_spd_10_mic_1.wav", "source", "normal", "car_D2_spd_10_mic_1"),
    ("bearing", "test", "section_00_source_test_normal_0022_vel_9_loc_A.wav", "source", "normal", "vel_9_loc_A"),
    ("bearing", "test", "section_00_target_test_anomaly_0021_vel_8_loc_G.wav", "target", "anomaly", "vel_8_loc_G"),
    ("bearing", "train", "section_00_source_train_normal_0046_vel_21_loc_A.wav", "source", "normal", "vel_21_loc_A"),
    ("bearing", "train", "section_00_source_train_normal_0742_vel_16_loc_A.wav", "source", "normal", "vel_16_loc_A"),
    ("fan", "test", "section_00_source_test_anomaly_0022_m-n_W.wav", "source", "anomaly", "m-n_W"),
    ("fan", "test", "section_00_target_test_normal_0021_m-n_Y.wav", "target", "normal", "m-n_Y"),
    ("fan", "train", "section_00_source_train_normal_0040_m-n_X.wav", "source", "normal", "m-n_X"),
    ("fan", "train", "section_00_source_train_normal_0397_m-n_X.wav", "source", "normal", "m-n_X"),
    ("gearbox", "test", "section_00_source_test_normal_0026_volt_1.5_wt_150.wav", "source", "normal", "volt_1.5_wt_150"),
    ("gearbox", "test", "section_00_target_test_anomaly_0040_volt_1.5_wt_130.wav", "target", "anomaly", "volt_1.5_wt_130"),
    ("gearbox", "train", "section_00_source_train_normal_0073_volt_1.5_wt_0.wav", "source", "normal", "volt_1.5_wt_0"),
    ("gearbox", "train", "section_00_source_train_normal_0616_volt_1.5_wt_50.wav", "source", "normal", "volt_1.5_wt_50"),
    ("slider", "test", "section_00_source_test_normal_0027_vel_730_ac_0.11.wav", "source", "normal", "vel_730_ac_0.11"),
    ("slider", "test", "section_00_target_test_normal_0013_vel_620_ac_0.08.wav", "target", "normal", "vel_620_ac_0.08"),
    ("slider", "train", "section_00_source_train_normal_0853_vel_500_ac_0.30.wav", "source", "normal", "vel_500_ac_0.30"),
    ("slider", "train", "section_00_source_train_normal_0959_vel_490_ac_0.05.wav", "source", "normal", "vel_490_ac_0.05"),
    ("valve", "test", "section_00_target_test_anomaly_0044_pat_03.wav", "target", "anomaly", "pat_03"),
    ("valve", "test", "section_00_target_test_normal_0044_pat_03.wav", "target", "normal", "pat_03"),
    ("valve", "train", "section_00_source_train_normal_0095_pat_01.wav", "source", "normal", "pat_01"),
    ("valve", "train", "section_00_source_train_normal_0206_pat_01.wav", "source", "normal", "pat_01"),
]
TWELVE_SECONDS = {"ToyCar", "ToyTrain"}
# ONNX against torch scores: |onnx - torch| <= TOL * max(1, |torch|). Not export's VERIFY_RTOL
# (1e-4), which its white-noise check inputs meet: on these real clips (cosine distances of 0.01
# to 0.3) the float32 differences reach 4.6e-4 (measured; reported to be looked into).
TOL = 1e-3


def _logged(logger_names):
    """A handler collecting the WARNING lines of ``logger_names`` (module-scoped fixtures
    cannot use caplog)."""
    lines: list[str] = []

    class _H(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler = _H(logging.WARNING)
    for name in logger_names:
        logging.getLogger(name).addHandler(handler)
    return lines, handler


def _link(root: Path, *machine_types: str) -> Path:
    """A DCASE root holding some of the real machine types (symbolic links, nothing copied)."""
    root.mkdir()
    for mt in machine_types:
        (root / mt).symlink_to(REAL / mt, target_is_directory=True)
    return root


def test_every_name_parsed():
    clips = discover(REAL)
    got = sorted((c.machine_type, Path(c.path).parent.name, c.file_name, c.domain, c.label, c.attributes)
                 for c in clips)
    assert got == sorted(EXPECTED)
    assert {c.section for c in clips} == {"00"}
    assert {c.split for c in clips if Path(c.path).parent.name == "train"} == {"train"}
    assert layout_year(clips) is None  # a 2022-2025 layout: the 2022-2025 metric


def test_twelve_second_clips_decoded():
    clips = discover(REAL)
    seconds = dict(zip((c.path for c in clips), header_seconds(clips)))
    for c in clips:
        assert seconds[c.path] == (12.0 if c.machine_type in TWELVE_SECONDS else 10.0)
    toycar = next(c for c in clips if c.machine_type == "ToyCar")
    full = load_audio(toycar.path)
    assert full.shape == (12 * 16000,) and full.dtype == np.float32 and np.abs(full).max() > 0
    np.testing.assert_array_equal(load_audio(toycar.path, num_samples=10 * 16000), full[:160000])
    train = [c for c in clips if c.split == "train"]
    assert length_fit_message(header_seconds(train), 10.0, "training clips") == (
        "training clips: 4 cropped (by 2.00 s; their end is not used) of 14 to the model's 10-s "
        "input (lengths 10 s: 10, 12 s: 4)")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The 14 training clips, 1 epoch at 1-s clips (the tiny config: batch 4), saved."""
    model_dir = tmp_path_factory.mktemp("real") / "model"
    lines, handler = _logged(["fastasd.train"])
    try:
        det = fastasd.train(REAL, out_dir=model_dir, config=tiny_config(clip_seconds=1.0), progress=False)
    finally:
        logging.getLogger("fastasd.train").removeHandler(handler)
    return det, model_dir, lines


def test_train_score_evaluate_export_on_real_clips(trained, tmp_path, capsys, caplog):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install -e '.[test]')")
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed (torch.onnx.export needs onnxscript)")
    from fastasd.scoring import read_scores_csv

    det, model_dir, train_log = trained
    # Crop count once per run; 12 classes (7 machine types x their attributes) and no warning.
    assert [line for line in train_log if "cropped" in line] == [
        "training clips: 14 cropped (by 9.00 to 11.00 s; their end is not used) of 14 to the "
        "model's 1-s input (lengths 10 s: 10, 12 s: 4); --clip-seconds auto trains on the most "
        "common length"]
    assert not any("auxiliary task" in line for line in train_log)
    assert det.info["n_classes"] == len(det.encoder) == 12
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["info"]["n_classes"] == 12

    scores = tmp_path / "scores"
    with caplog.at_level(logging.WARNING):
        assert main(["score", str(model_dir), str(REAL), "--out", str(scores), "--workers", "0",
                     "--no-progress"]) == 0
    assert "scoring: 14 cropped (by 9.00 to 11.00 s" in caplog.text
    records = read_scores_csv(scores / "scores.csv")
    assert len(records) == 14 and len(list(scores.glob("anomaly_score_*_section_00_test.csv"))) == 7

    # Partial labels: every section lacks something, the report is printed, exit 0, a warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastasd.evaluate"):
        rc = main(["evaluate", str(scores), str(REAL), "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "--strict" in caplog.text
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["metric"]["name"] == "dcase2022" and result["official_score"] is None
    assert "11 of 21 official values are undefined" in result["undefined"]["official_score"]
    assert len(result["sections"]) == 7
    by_section = {s["machine_type"]: s for s in result["sections"]}
    assert set(by_section["ToyCar"]["undefined"]) >= {"official.auc_source", "official.auc_target", "official.pauc"}
    for mt, defined in (("ToyTrain", "auc_target"), ("valve", "auc_target"), ("bearing", "auc_source"),
                        ("gearbox", "auc_source"), ("fan", "auc_target")):
        recs = [r for r in records if r["machine_type"] == mt]
        domain = defined.split("_")[1]
        keep = [r for r in recs if r["domain"] == domain or r["label"] == "anomaly"]
        want = rank_auc([r["label"] == "anomaly" for r in keep], [r["score"] for r in keep])
        assert by_section[mt]["official"][defined] == pytest.approx(want, abs=1e-12), mt
        assert by_section[mt]["official"]["pauc"] == pytest.approx(
            mcclish_pauc([r["label"] == "anomaly" for r in recs], [r["score"] for r in recs]), abs=1e-12)
    assert "ToyCar/00: off. auc_source, off. pauc" in out and "metric: DCASE 2022-2025" in out
    assert main(["evaluate", str(scores), str(REAL), "--strict"]) == 2
    assert "ToyCar/00: official auc_source" in capsys.readouterr().err

    # ONNX: export, then score with it: the same scores.
    onnx_file = tmp_path / "detector.onnx"
    assert main(["export", str(model_dir), "--out", str(onnx_file)]) == 0
    assert main(["score", "--onnx", str(onnx_file), str(REAL), "--out", str(tmp_path / "onnx"),
                 "--workers", "0", "--no-progress"]) == 0
    torch_scores = {r["file"]: r["score"] for r in records}
    onnx_scores = {r["file"]: r["score"] for r in read_scores_csv(tmp_path / "onnx" / "scores.csv")}
    assert set(onnx_scores) == set(torch_scores)
    for f, s in torch_scores.items():
        assert abs(onnx_scores[f] - s) <= TOL * max(1.0, abs(s)), f


def test_single_machine_warns_of_one_class(tmp_path, caplog):
    """fan alone: one machine type, one section, one attribute, one domain: one class."""
    root = _link(tmp_path / "one", "fan")
    with caplog.at_level(logging.WARNING, logger="fastasd.train"):
        det = fastasd.train(root, out_dir=tmp_path / "m", config=tiny_config(clip_seconds=0.5),
                            ensemble_size=2, progress=False)
    warnings = [r.getMessage() for r in caplog.records if "auxiliary task" in r.getMessage()]
    assert len(warnings) == 1  # once per run, not once per ensemble member
    text = warnings[0]
    assert text.startswith("the auxiliary task has only 1 class(es) (fan/00/m-n_X/source): the 2 "
                           "training clips hold 1 machine type(s), 1 section(s), 1 attribute tail(s), "
                           "1 domain(s) (source).")
    assert "fastasd baseline" in text and "--featex-prob" in text and "nothing to learn" in text
    assert det.info["n_classes"] == 1
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["info"]["n_classes"] == 1


def test_clip_seconds_auto(tmp_path, caplog):
    """ToyCar and ToyTrain (12-s clips): ``--clip-seconds auto`` trains on 12 s and records it."""
    root = _link(tmp_path / "toys", "ToyCar", "ToyTrain")
    with caplog.at_level(logging.INFO):
        assert main(["train", str(root), "--out", str(tmp_path / "m"), "--preset", "demo",
                     "--clip-seconds", "auto", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
                     "--no-progress"]) == 0
    assert "clip_seconds auto: 12 s, the length of 4 of the 4 training clips" in caplog.text
    assert "cropped" not in caplog.text and "zero-padded" not in caplog.text
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["clip_seconds"] == 12.0
    assert fastasd.load(tmp_path / "m").num_samples == 12 * 16000


# --------------------------------------------------------------------------- DCASE 2020 layout


def _write_2020_layout(root: Path, with_partial: bool) -> None:
    """The real audio under DCASE 2020 names (``normal_id_XX_NNNNNNNN.wav``, no domains), cut to
    1 s: machine type "slider", training clips of ids 00, 02 and 04 (5, 5, 4), test clips: ids
    00 and 02 with normals and anomalies, and (``with_partial``) id 04 with normals only."""
    clips = discover(REAL)
    train = [c for c in clips if c.split == "train"]
    normals = [c for c in clips if c.split == "test" and c.label == "normal"]  # 9
    anomalies = [c for c in clips if c.split == "test" and c.label == "anomaly"]  # 5
    plan = [("train", "normal", "00", train[:5]), ("train", "normal", "02", train[5:10]),
            ("train", "normal", "04", train[10:]),
            ("test", "normal", "00", normals[:3]), ("test", "anomaly", "00", anomalies[:3]),
            ("test", "normal", "02", normals[3:6]), ("test", "anomaly", "02", anomalies[3:])]
    if with_partial:
        plan.append(("test", "normal", "04", normals[6:]))
    for split, label, mid, group in plan:
        for i, c in enumerate(group):
            path = root / "slider" / split / f"{label}_id_{mid}_{i:08d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, load_audio(c.path, num_samples=16000), 16000)


def _scores_of(folder: Path) -> dict[str, list[tuple[bool, float]]]:
    out: dict[str, list[tuple[bool, float]]] = {}
    for f in sorted(folder.glob("anomaly_score_slider_section_*_test.csv")):
        sec = f.name.split("_section_")[1][:2]
        for line in f.read_text().splitlines():
            name, score = line.split(",")
            out.setdefault(sec, []).append((name.startswith("anomaly"), float(score)))
    return out


def test_dcase2020_layout_baseline_and_evaluate(tmp_path, capsys):
    """2020 names, no domains: the 2020 metric is picked; partial labels (id 04 without
    anomalies) do not abort ``fastasd baseline`` nor ``fastasd evaluate``; every figure equals an
    independent AUC/pAUC; without id 04 the official score is defined and checked too."""
    for partial in (True, False):
        root, out = tmp_path / f"data{partial}", tmp_path / f"base{partial}"
        _write_2020_layout(root, with_partial=partial)
        clips = discover(root)
        assert layout_year(clips) == 2020 and {c.domain for c in clips} == {"source"}
        assert {c.section for c in clips if c.split == "test"} == ({"00", "02", "04"} if partial else {"00", "02"})
        assert main(["baseline", str(root), "--out", str(out), "--json", str(out / "b.json")]) == 0
        printed = capsys.readouterr().out
        assert "metric: DCASE 2020 (chosen automatically: the file names follow the DCASE 2020 layout" in printed
        result = json.loads((out / "b.json").read_text())
        assert result["metric"]["name"] == "dcase2020"
        by_section = {s["section"]: s for s in result["sections"]}
        scores = _scores_of(out)
        for sec in ("00", "02"):
            labels, values = zip(*scores[sec])
            assert by_section[sec]["official"] == pytest.approx(
                {"auc": rank_auc(labels, values), "pauc": mcclish_pauc(labels, values)}, abs=1e-12)
        assert main(["evaluate", str(out), str(root), "--plots", str(tmp_path / f"plots{partial}")]) == 0
        assert "DCASE 2020" in capsys.readouterr().out
        assert len(list((tmp_path / f"plots{partial}").glob("slider_section_*.png"))) == (3 if partial else 2)
        if partial:
            assert by_section["04"]["official"] == {"auc": None, "pauc": None}
            assert by_section["04"]["undefined"]["official.auc"] == \
                "its clips hold 3 normal and 0 anomalous (it needs both)"
            assert result["official_score"] is None
            assert main(["evaluate", str(out), str(root), "--strict"]) == 2
            assert "slider/04: official auc" in capsys.readouterr().err
            assert main(["baseline", str(root), "--out", str(tmp_path / "strict"), "--strict"]) == 2
        else:
            figures = [v for sec in ("00", "02") for v in by_section[sec]["official"].values()]
            assert result["official_score"] == pytest.approx(amean(figures), abs=1e-12)
