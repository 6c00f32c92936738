"""fastasd.submission: DCASE submission files (names, exact content, round trip, errors)."""
from __future__ import annotations

import numpy as np
import pytest

from fastasd.submission import (
    decision_file_name,
    read_decisions,
    read_scores,
    score_file_name,
    write_submission,
)


def test_file_names():
    assert score_file_name("fan", "00") == "anomaly_score_fan_section_00_test.csv"
    assert decision_file_name("fan", "03") == "decision_result_fan_section_03_test.csv"
    assert score_file_name("ToyCar", 1) == "anomaly_score_ToyCar_section_01_test.csv"
    with pytest.raises(ValueError, match="machine type"):
        score_file_name("a/b", "00")
    with pytest.raises(ValueError, match="section"):
        decision_file_name("fan", "")


def _records(rng, mts=("fan", "toy_car"), secs=("00", "01"), n=7):
    out = []
    for mt in mts:
        for sec in secs:
            for i in rng.permutation(n):  # unsorted on purpose
                out.append({"file_name": f"section_{sec}_{i:04d}.wav", "machine_type": mt,
                            "section": sec, "score": float(rng.normal() * 10.0 ** rng.integers(-8, 8)),
                            "decision": int(rng.integers(0, 2))})
    return out


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    records = _records(rng)
    records[0]["score"] = np.float32(0.1)  # float32 is written as its exact float64 value
    paths = write_submission(tmp_path / "sub", records)
    names = [p.name for p in paths]
    assert names[:2] == ["anomaly_score_fan_section_00_test.csv",
                         "decision_result_fan_section_00_test.csv"]
    assert len(paths) == 8 and all(p.exists() for p in paths)
    assert not list((tmp_path / "sub").glob(".*"))  # no temporary files left behind

    got = read_scores(tmp_path / "sub")
    want = sorted((r["machine_type"], r["section"], r["file_name"], float(r["score"]))
                  for r in records)
    assert sorted(got) == want  # exact float equality: repr round-trips
    # rows come back in file order = sorted by file name within each file
    fan00 = [name for mt, sec, name, _ in got if (mt, sec) == ("fan", "00")]
    assert fan00 == sorted(fan00) and len(fan00) == 7
    assert {mt for mt, *_ in got} == {"fan", "toy_car"}  # underscore in a machine type

    dec = read_decisions(tmp_path / "sub")
    assert sorted(dec) == sorted((r["machine_type"], r["section"], r["file_name"], r["decision"])
                                 for r in records)


def test_exact_content_no_header(tmp_path):
    records = [
        {"file_name": "b.wav", "machine_type": "fan", "section": "00", "score": 0.5, "decision": 1},
        {"file_name": "a.wav", "machine_type": "fan", "section": "00", "score": -2.0,
         "decision": np.int64(0)},
    ]
    write_submission(tmp_path, records)
    assert (tmp_path / "anomaly_score_fan_section_00_test.csv").read_text() == "a.wav,-2.0\nb.wav,0.5\n"
    assert (tmp_path / "decision_result_fan_section_00_test.csv").read_text() == "a.wav,0\nb.wav,1\n"


def test_scores_only_without_decisions(tmp_path):
    records = [{"file_name": "a.wav", "machine_type": "fan", "section": "00", "score": 1.0}]
    paths = write_submission(tmp_path, records)
    assert [p.name for p in paths] == ["anomaly_score_fan_section_00_test.csv"]
    records.append({"file_name": "b.wav", "machine_type": "fan", "section": "00", "score": 1.0,
                    "decision": 1})
    with pytest.raises(ValueError, match=r"do not: a\.wav"):
        write_submission(tmp_path / "x", records)


def test_write_errors_name_the_files(tmp_path):
    base = {"machine_type": "fan", "section": "00", "decision": 0}
    dup = [dict(base, file_name="a.wav", score=1.0), dict(base, file_name="b.wav", score=2.0),
           dict(base, file_name="a.wav", score=3.0)]
    with pytest.raises(ValueError, match=r"fan/00: duplicate file name\(s\) a\.wav"):
        write_submission(tmp_path / "dup", dup)
    assert not (tmp_path / "dup").exists()  # validated before anything is written
    with pytest.raises(ValueError, match=r"score of c\.wav is not finite"):
        write_submission(tmp_path, [dict(base, file_name="c.wav", score=float("inf"))])
    with pytest.raises(ValueError, match=r"decision for d\.wav must be 0 or 1"):
        write_submission(tmp_path, [dict(base, file_name="d.wav", score=1.0, decision=2)])
    with pytest.raises(ValueError, match="invalid file name"):
        write_submission(tmp_path, [dict(base, file_name="x,y.wav", score=1.0)])


def _write(path, text):
    path.write_text(text)
    return path


def test_read_errors_name_file_and_line(tmp_path):
    f = _write(tmp_path / "anomaly_score_fan_section_00_test.csv", "a.wav,1.0\nb.wav,1.0,7\n")
    with pytest.raises(ValueError, match=r"anomaly_score_fan_section_00_test\.csv:2: expected"):
        read_scores(tmp_path)
    _write(f, "file_name,score\na.wav,1.0\n")  # a header is not allowed
    with pytest.raises(ValueError, match=r"_test\.csv:1: invalid anomaly score value 'score'"):
        read_scores(tmp_path)
    _write(f, "a.wav,1.0\nb.wav,nan\n")
    with pytest.raises(ValueError, match=r"_test\.csv:2: invalid anomaly score value 'nan' for b\.wav"):
        read_scores(tmp_path)
    _write(f, "a.wav,1.0\nb.wav,2\na.wav,3\n")
    with pytest.raises(ValueError, match=r"_test\.csv:3: duplicate file name a\.wav \(first on line 1\)"):
        read_scores(tmp_path)
    _write(f, "a.wav,1.0\n\nb.wav, 2e-3 \n")  # blank line and spaces are tolerated
    assert read_scores(tmp_path) == [("fan", "00", "a.wav", 1.0), ("fan", "00", "b.wav", 0.002)]

    _write(tmp_path / "decision_result_fan_section_00_test.csv", "a.wav,1\nb.wav,0.5\n")
    with pytest.raises(ValueError, match=r"decision_result_fan_section_00_test\.csv:2: invalid decision"):
        read_decisions(tmp_path)


def test_read_ignores_other_files_and_needs_some(tmp_path):
    with pytest.raises(ValueError, match="no anomaly score files"):
        read_scores(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        read_scores(tmp_path / "nope")
    _write(tmp_path / "results.json", "{}")
    _write(tmp_path / "anomaly_score_fan_section_00_test.csv.bak", "garbage")
    _write(tmp_path / "anomaly_score_my_machine_section_02_test.csv", "x.wav,0.25\n")
    assert read_scores(tmp_path) == [("my_machine", "02", "x.wav", 0.25)]
