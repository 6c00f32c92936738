"""DCASE file-name parsing (2020-2025 conventions) and dataset discovery on tiny layouts."""
from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fastasd.data.layout import Clip, ParsedName, discover, layout_year, parse_file_name, read_ground_truth

SR = 16000


def _wav(path: Path, seconds: float = 0.1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(SR * seconds), dtype=np.float32), SR)
    return path


def _layout(root: Path, files: list[str]) -> None:
    for f in files:
        _wav(root / f)


# --------------------------------------------------------------------------- parse_file_name

P = ParsedName
NAMES = [
    # 2020: machine id -> section, always the source domain
    ("normal_id_00_00000000.wav", P("00", "source", None, "normal", "00000000", "")),
    ("anomaly_id_02_00000012.wav", P("02", "source", None, "anomaly", "00000012", "")),
    ("id_05_00000000.wav", P("05", "source", None, "unknown", "00000000", "")),
    # 2021: labelled dev files, unlabelled eval test file with domain
    ("section_00_source_train_normal_0000_strength_1_ambient.wav",
     P("00", "source", "train", "normal", "0000", "strength_1_ambient")),
    ("section_01_target_test_anomaly_0002.wav", P("01", "target", "test", "anomaly", "0002", "")),
    ("section_03_source_test_0000.wav", P("03", "source", "test", "unknown", "0000", "")),
    # 2022-2025 labelled files with free-text attribute tails
    ("section_00_source_train_normal_0000_m-n_W.wav", P("00", "source", "train", "normal", "0000", "m-n_W")),
    ("section_00_target_test_anomaly_0049_vel_6_loc_A.wav",
     P("00", "target", "test", "anomaly", "0049", "vel_6_loc_A")),
    ("section_00_source_train_normal_0001_car_A1_spd_28V_mic_1_noise_1.wav",
     P("00", "source", "train", "normal", "0001", "car_A1_spd_28V_mic_1_noise_1")),
    ("section_00_source_train_normal_0000_weight15_BckgF.wav",
     P("00", "source", "train", "normal", "0000", "weight15_BckgF")),
    ("section_00_target_train_normal_0009_noAttribute.wav",
     P("00", "target", "train", "normal", "0009", "noAttribute")),
    # unlabelled evaluation test files
    ("section_03_0000.wav", P("03", "unknown", None, "unknown", "0000", "")),
    ("section_00_test_0001.wav", P("00", "unknown", "test", "unknown", "0001", "")),
    # a dot inside the tail survives; other audio extensions; 1-based index kept verbatim
    ("section_00_source_train_normal_0001_spd_2.5V.flac",
     P("00", "source", "train", "normal", "0001", "spd_2.5V")),
    ("section_12_source_train_normal_1000", P("12", "source", "train", "normal", "1000", "")),
]


@pytest.mark.parametrize("name,expected", NAMES, ids=[n for n, _ in NAMES])
def test_parse_file_name(name, expected):
    assert parse_file_name(name) == expected


def test_parse_uses_base_name_only():
    # Folder names that look like DCASE names must not leak into the result.
    for prefix in ("/data/normal_id_07/section_09_target_test/", "C:\\data\\x\\", "fan.zip::fan/test/"):
        assert parse_file_name(prefix + "section_03_0000.wav") == P("03", "unknown", None, "unknown", "0000", "")


def test_parse_is_case_lenient():
    p = parse_file_name("Section_00_Source_Train_Normal_0000_A.WAV")
    assert (p.section, p.domain, p.split, p.label, p.attributes) == ("00", "source", "train", "normal", "A")


@pytest.mark.parametrize("name", ["foo.wav", "section_xx_0000.wav", "section_00.wav", "id_00.wav",
                                  "section_00_source_train_normal.wav"])
def test_parse_rejects_with_file_name(name):
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        parse_file_name("/some/dir/" + name)


def test_clip_file_name():
    c = Clip("/a/b/fan/test/section_00_0000.wav", "fan", "00", "unknown", "test", "unknown")
    assert c.file_name == "section_00_0000.wav"
    assert Clip("x.zip::fan/test/y.wav", "fan", "00", "unknown", "test", "unknown").file_name == "y.wav"


# --------------------------------------------------------------------------- discover


def test_discover_2020(tmp_path):
    _layout(tmp_path, [
        "fan/train/normal_id_00_00000000.wav", "fan/train/normal_id_02_00000001.wav",
        "fan/test/normal_id_00_00000000.wav", "fan/test/anomaly_id_02_00000012.wav",
        "ToyCar/train/normal_id_01_00000000.wav",
    ])
    (tmp_path / "fan" / "train" / "notes.txt").write_text("not audio")
    (tmp_path / "fan" / "train" / "._normal_id_00_00000005.wav").write_bytes(b"\0" * 10)  # macOS junk
    clips = discover(tmp_path)
    assert [(c.machine_type, c.split, c.file_name) for c in clips] == [
        ("ToyCar", "train", "normal_id_01_00000000.wav"),
        ("fan", "test", "anomaly_id_02_00000012.wav"),
        ("fan", "test", "normal_id_00_00000000.wav"),
        ("fan", "train", "normal_id_00_00000000.wav"),
        ("fan", "train", "normal_id_02_00000001.wav"),
    ]
    assert {c.domain for c in clips} == {"source"}
    anomaly = clips[1]
    assert (anomaly.section, anomaly.label) == ("02", "anomaly")
    assert Path(anomaly.path).is_file()


def test_layout_year(tmp_path):
    """Which DCASE year a layout reveals (it picks the official metric, issue 19)."""
    _layout(tmp_path / "y2020", ["fan/train/normal_id_00_00000000.wav",
                                 "fan/test/anomaly_id_00_00000001.wav"])
    assert layout_year(discover(tmp_path / "y2020")) == 2020
    _layout(tmp_path / "y2021", ["fan/train/section_00_source_train_normal_0000.wav",
                                 "fan/source_test/section_00_source_test_normal_0000.wav"])
    assert layout_year(discover(tmp_path / "y2021")) == 2021
    _layout(tmp_path / "y2022", ["fan/train/section_00_source_train_normal_0000_a_1.wav",
                                 "fan/test/section_00_target_test_anomaly_0000_a_1.wav"])
    assert layout_year(discover(tmp_path / "y2022")) is None
    assert layout_year([]) is None


def test_ground_truth_name_listed_twice_is_an_error(tmp_path):
    """Issue 23, point 12: a name listed twice with opposite labels was silently taken from the
    last row; now an error naming the file, the name and both lines."""
    path = tmp_path / "ground_truth_data" / "ground_truth_fan_section_00_test.csv"
    path.parent.mkdir()
    path.write_text("a.wav,0\nb.wav,1\na.wav,1\n")
    with pytest.raises(ValueError, match=r"ground_truth_fan_section_00_test\.csv: a\.wav is listed "
                                         r"with opposite values \(line 1: normal, line 3: anomaly\)"):
        read_ground_truth(tmp_path)
    path.write_text("a.wav,0\nb.wav,1\nb.wav,1\n")
    with pytest.raises(ValueError, match=r"b\.wav is listed twice \(line 2: anomaly, line 3: anomaly\)"):
        read_ground_truth(tmp_path)
    dom = tmp_path / "ground_truth_domain" / "ground_truth_fan_section_00_test.csv"
    dom.parent.mkdir()
    path.write_text("a.wav,0\nb.wav,1\n")
    dom.write_text("a.wav,1\na.wav,0\n")
    with pytest.raises(ValueError, match=r"ground_truth_domain.*a\.wav is listed with opposite values "
                                         r"\(line 1: target, line 2: source\)"):
        read_ground_truth(tmp_path)


def test_discover_2021_source_and_target_test_folders(tmp_path):
    _layout(tmp_path, [
        "gearbox/train/section_00_source_train_normal_0000_volt_1.0.wav",
        "gearbox/train/section_00_target_train_normal_0000_volt_1.3.wav",
        "gearbox/source_test/section_00_source_test_normal_0000.wav",
        "gearbox/target_test/section_00_target_test_anomaly_0000.wav",
        "gearbox/source_test/section_03_source_test_0000.wav",  # eval: domain in name, no label
        "gearbox/target_test/section_04_0000.wav",  # no domain in name: taken from the folder
    ])
    clips = discover(tmp_path)
    by_name = {c.file_name: c for c in clips}
    assert len(clips) == 6
    assert by_name["section_00_target_test_anomaly_0000.wav"].split == "test"
    assert (by_name["section_03_source_test_0000.wav"].domain,
            by_name["section_03_source_test_0000.wav"].label) == ("source", "unknown")
    assert by_name["section_04_0000.wav"].domain == "target"
    assert by_name["section_00_source_train_normal_0000_volt_1.0.wav"].attributes == "volt_1.0"
    assert [c.split for c in discover(tmp_path, splits=("train",))] == ["train", "train"]


def test_discover_2022_with_attributes_csv(tmp_path):
    names = [
        "section_00_source_train_normal_0000_vel_6_loc_A.wav",
        "section_00_target_train_normal_0000_vel_14_loc_D.wav",
    ]
    _layout(tmp_path, [f"bearing/train/{n}" for n in names]
            + ["bearing/test/section_00_source_test_anomaly_0000_vel_6_loc_A.wav"])
    (tmp_path / "bearing" / "attributes_00.csv").write_text(
        "file_name,d1p,d1v,d2p,d2v\n"
        f"dev_data/raw/bearing/train/{names[0]},vel,6,loc,A\n"
        f"bearing/train/{names[1]},vel,14,,\n"
    )
    clips = {c.file_name: c for c in discover(tmp_path / "bearing")}  # one machine-type folder
    assert clips[names[0]].machine_type == "bearing"
    assert clips[names[0]].attribute_values == (("vel", "6"), ("loc", "A"))
    assert clips[names[1]].attribute_values == (("vel", "14"),)
    assert clips["section_00_source_test_anomaly_0000_vel_6_loc_A.wav"].attribute_values == ()
    assert clips[names[1]].attributes == "vel_14_loc_D"


def test_discover_2023_style_nested_root(tmp_path):
    # dev_data/raw/<mt>/... : machine types found a few levels below the given root
    _layout(tmp_path / "dev_data" / "raw", [
        "ToyCar/train/section_00_source_train_normal_0000_car_A1_spd_28V_mic_1_noise_1.wav",
        "ToyCar/test/section_00_target_test_normal_0000_car_B2_spd_31V_mic_1_noise_1.wav",
        "RoboticArm/train/section_00_source_train_normal_0000_weight15_BckgF.wav",
        "slider/train/section_00_source_train_normal_0000_noAttribute.wav",
    ])
    clips = discover(tmp_path)
    assert sorted({c.machine_type for c in clips}) == ["RoboticArm", "ToyCar", "slider"]
    tails = {c.attributes for c in clips}
    assert tails == {"car_A1_spd_28V_mic_1_noise_1", "car_B2_spd_31V_mic_1_noise_1", "weight15_BckgF",
                     "noAttribute"}


def _write_gt(gt_root: Path, mt: str, section: str, data: dict[str, int], domain: dict[str, int]) -> None:
    for folder, table in (("ground_truth_data", data), ("ground_truth_domain", domain)):
        rows = list(table.items())
        random.Random(1).shuffle(rows)  # the join must be by name, never by order
        path = gt_root / folder / f"ground_truth_{mt}_section_{section}_test.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{n},{v}\n" for n, v in rows))


def test_discover_eval_with_ground_truth(tmp_path):
    dev, ev, gt = tmp_path / "dev", tmp_path / "eval", tmp_path / "gt"
    _layout(dev, ["fan/train/section_00_source_train_normal_0000_m-n_W.wav",
                  "fan/test/section_00_source_test_anomaly_0000_m-n_W.wav"])
    test_names = [f"section_03_{i:04d}.wav" for i in range(6)]
    _layout(ev, ["fan/train/section_03_source_train_normal_0000_m-n_X.wav"]
            + [f"fan/test/{n}" for n in test_names])
    labels = {n: i % 2 for i, n in enumerate(test_names[:5])}  # the last file has no ground truth
    domains = {n: int(i >= 2) for i, n in enumerate(test_names[:5])}
    _write_gt(gt, "fan", "03", labels, domains)

    truth = read_ground_truth(gt)
    assert truth[("fan", "03", "section_03_0001.wav")] == ("anomaly", "source")
    assert truth[("fan", "03", "section_03_0004.wav")] == ("normal", "target")

    clips = discover([dev, ev], ground_truth=gt)
    assert len(clips) == 2 + 7
    by_name = {c.file_name: c for c in clips}
    for i, n in enumerate(test_names[:5]):
        assert by_name[n].label == ("anomaly" if i % 2 else "normal")
        assert by_name[n].domain == ("target" if i >= 2 else "source")
    assert (by_name[test_names[5]].label, by_name[test_names[5]].domain) == ("unknown", "unknown")
    assert by_name["section_00_source_test_anomaly_0000_m-n_W.wav"].label == "anomaly"  # untouched
    # the mapping form gives the same result as the folder
    assert discover([dev, ev], ground_truth=truth) == clips


def test_ground_truth_contradicting_a_name_is_an_error(tmp_path):
    _layout(tmp_path / "d", ["fan/test/section_00_source_test_normal_0000.wav"])
    _write_gt(tmp_path / "gt", "fan", "00", {"section_00_source_test_normal_0000.wav": 1}, {})
    with pytest.raises(ValueError, match="section_00_source_test_normal_0000.wav"):
        discover(tmp_path / "d", ground_truth=tmp_path / "gt")


def test_read_ground_truth_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        read_ground_truth(tmp_path)
    bad = tmp_path / "ground_truth_data" / "ground_truth_fan_section_00_test.csv"
    bad.parent.mkdir()
    bad.write_text("a.wav,0\nb.wav,x\n")
    with pytest.raises(ValueError, match="line 2"):
        read_ground_truth(tmp_path)


def test_discover_same_data_twice_is_an_error(tmp_path):
    _layout(tmp_path, ["fan/train/section_00_source_train_normal_0000_a.wav"])
    with pytest.raises(ValueError, match="found twice"):
        discover([tmp_path, tmp_path / "fan"])


def test_discover_unparseable_names(tmp_path, caplog):
    _layout(tmp_path, ["fan/train/section_00_source_train_normal_0000_a.wav"]
            + [f"fan/train/recording_{i}.wav" for i in range(12)])
    with pytest.raises(ValueError) as info:
        discover(tmp_path)
    msg = str(info.value)
    assert "12 file name(s)" in msg and "recording_0.wav" in msg and "and 2 more" in msg
    with caplog.at_level(logging.WARNING, logger="fastasd.data.layout"):
        clips = discover(tmp_path, skip_unparseable=True)
    assert [c.file_name for c in clips] == ["section_00_source_train_normal_0000_a.wav"]
    assert "recording_0.wav" in caplog.text


def test_discover_no_clips_names_root(tmp_path):
    (tmp_path / "fan" / "train").mkdir(parents=True)
    (tmp_path / "fan" / "train" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        discover(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        discover(tmp_path / "missing")
