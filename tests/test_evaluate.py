"""fastasd evaluate: join scores to labels by file name, CLI end to end (in-process), JSON, plots."""
from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
import soundfile as sf

from fastasd.cli import main
from fastasd.evaluate import build_records, evaluate_directory
from fastasd.metrics import evaluate_records
from fastasd.submission import score_file_name, write_submission

SR = 16000
N_PER_GROUP = 3  # test clips per (domain, label) and section: 12 per section


def _wav(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.standard_normal(SR // 10)).astype(np.float32), SR)  # 0.1 s


def _score(domain, label, i):
    # Deterministic, imperfect: anomalies score higher on average, some overlap.
    return (0.5 if label == "anomaly" else 0.0) + (0.5 if domain == "target" else 0.0) + 0.4 * ((i * 7) % 5) / 5


def make_dev_layout(root, sections=(("fan", "00"), ("fan", "01"), ("pump", "00"))):
    """Labelled DCASE-2022-style layout; returns the truth records (with scores)."""
    truth = []
    seed = 0
    for mt, sec in sections:
        _wav(root / mt / "train" / f"section_{sec}_source_train_normal_0000_a_1.wav", seed)
        i = 0
        for domain in ("source", "target"):
            for label in ("normal", "anomaly"):
                for _ in range(N_PER_GROUP):
                    name = f"section_{sec}_{domain}_test_{label}_{i:04d}_a_1.wav"
                    seed += 1
                    _wav(root / mt / "test" / name, seed)
                    truth.append({"file_name": name, "machine_type": mt, "section": sec,
                                  "domain": domain, "label": label, "score": _score(domain, label, i),
                                  "decision": int(label == "anomaly")})
                    i += 1
    return truth


def make_eval_layout(root, gt_root, mt="valve", sec="03"):
    """Unlabelled evaluation-style test names + official ground-truth CSVs."""
    truth, gt_data, gt_dom = [], [], []
    rng = np.random.default_rng(5)
    groups = [(d, lab) for d in ("source", "target") for lab in ("normal", "anomaly")] * N_PER_GROUP
    order = rng.permutation(len(groups))  # labels not in name order
    for i, g in enumerate(order):
        domain, label = groups[g]
        name = f"section_{sec}_{i:04d}.wav"
        _wav(root / mt / "test" / name, 100 + i)
        truth.append({"file_name": name, "machine_type": mt, "section": sec, "domain": domain,
                      "label": label, "score": _score(domain, label, i), "decision": 0})
        gt_data.append(f"{name},{int(label == 'anomaly')}\n")
        gt_dom.append(f"{name},{int(domain == 'target')}\n")
    for sub, rows in (("ground_truth_data", gt_data), ("ground_truth_domain", gt_dom)):
        (gt_root / sub).mkdir(parents=True, exist_ok=True)
        (gt_root / sub / f"ground_truth_{mt}_section_{sec}_test.csv").write_text("".join(rows))
    return truth


@pytest.fixture
def dev(tmp_path):
    truth = make_dev_layout(tmp_path / "data")
    write_submission(tmp_path / "scores", truth)
    return tmp_path, truth


def test_cli_end_to_end_dev_layout(dev, capsys):
    tmp_path, truth = dev
    rc = main(["evaluate", str(tmp_path / "scores"), str(tmp_path / "data"),
               "--json", str(tmp_path / "out" / "result.json"), "--plots", str(tmp_path / "plots")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    want = evaluate_records(truth)  # the same scores and labels, evaluated directly
    assert f"{100 * want.official_score:.2f} %" in out
    assert "fan" in out and "pump" in out and "hmean" in out

    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert list(result)[0] == "official_score"
    assert result["official_score"] == pytest.approx(want.official_score, rel=1e-12)
    assert 0.0 < result["official_score"] < 1.0
    assert result["paper"]["auc_mixed"] == pytest.approx(want.paper["auc_mixed"], rel=1e-12)
    assert [(s["machine_type"], s["section"]) for s in result["sections"]] == [
        ("fan", "00"), ("fan", "01"), ("pump", "00")]
    assert result["sections"][0]["counts"]["target_anomaly"] == N_PER_GROUP
    assert set(result["machine_types"]) == {"fan", "pump"}

    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["fan_section_00.png", "fan_section_01.png", "pump_section_00.png"]
    for p in (tmp_path / "plots").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_directory_joins_by_name_not_order(dev):
    tmp_path, truth = dev
    ev = evaluate_directory(tmp_path / "scores", tmp_path / "data")
    assert ev.official_score == pytest.approx(evaluate_records(truth).official_score, rel=1e-12)
    # Shuffle the rows of a score file: nothing changes.
    f = tmp_path / "scores" / score_file_name("fan", "00")
    rows = f.read_text().splitlines(keepends=True)
    f.write_text("".join(reversed(rows)))
    ev2 = evaluate_directory(tmp_path / "scores", tmp_path / "data")
    assert ev2.to_dict() == ev.to_dict()


def test_eval_layout_with_ground_truth(tmp_path, capsys):
    truth = make_eval_layout(tmp_path / "data", tmp_path / "gt")
    write_submission(tmp_path / "scores", truth)
    # Without ground truth: labels unknown -> a clear error naming files, exit code 2.
    rc = main(["evaluate", str(tmp_path / "scores"), str(tmp_path / "data")])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "section_03_0000.wav" in err and "ground-truth" in err and "Traceback" not in err
    rc = main(["evaluate", str(tmp_path / "scores"), str(tmp_path / "data"),
               "--ground-truth", str(tmp_path / "gt"), "--json", str(tmp_path / "r.json")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    want = evaluate_records(truth)
    got = json.loads((tmp_path / "r.json").read_text())
    assert got["official_score"] == pytest.approx(want.official_score, rel=1e-12)
    assert got["sections"][0]["official"]["auc_target"] == pytest.approx(
        want.sections[("valve", "03")].official["auc_target"], rel=1e-12)
    assert got["inputs"]["ground_truth"] == str(tmp_path / "gt")


def _run_error(capsys, *argv):
    rc = main(["evaluate", *map(str, argv)])
    out, err = capsys.readouterr()
    assert rc == 2
    assert err.startswith("fastasd evaluate: error:") and "Traceback" not in err
    return err


def test_extra_missing_duplicate_are_errors_naming_files(dev, capsys):
    tmp_path, truth = dev
    scores, data = tmp_path / "scores", tmp_path / "data"
    f = scores / score_file_name("fan", "01")
    original = f.read_text()
    rows = original.splitlines(keepends=True)

    f.write_text(original + "section_01_source_test_normal_9999_a_1.wav,0.5\n")  # extra
    err = _run_error(capsys, scores, data)
    assert "not test clips" in err and "fan/section_01/section_01_source_test_normal_9999_a_1.wav" in err

    missing_name = rows[4].split(",")[0]
    f.write_text("".join(rows[:4] + rows[5:]))  # missing
    err = _run_error(capsys, scores, data)
    assert "no score" in err and missing_name in err

    f.write_text(original + rows[2])  # duplicate
    err = _run_error(capsys, scores, data)
    assert "duplicate file name" in err and rows[2].split(",")[0] in err

    f.write_text(original.replace("section_01_", "section_00_", 1))  # name from another section
    err = _run_error(capsys, scores, data)
    assert "fan/section_01/section_00_" in err

    with pytest.raises(ValueError, match="not test clips"):
        f.write_text(original + "zzz.wav,1.0\n")
        build_records(scores, data)


def test_unscored_sections_are_skipped_with_a_warning(dev, caplog):
    tmp_path, truth = dev
    (tmp_path / "scores" / score_file_name("pump", "00")).unlink()
    with caplog.at_level(logging.WARNING, logger="fastasd.evaluate"):
        ev = evaluate_directory(tmp_path / "scores", tmp_path / "data")
    assert list(ev.sections) == [("fan", "00"), ("fan", "01")]
    assert "pump/section_00" in caplog.text


def test_single_class_section_cli(tmp_path, capsys, caplog):
    truth = make_dev_layout(tmp_path / "data", sections=(("fan", "00"),))
    for p in (tmp_path / "data" / "fan" / "test").glob("*target_test_normal*"):
        p.unlink()
    truth = [r for r in truth if not (r["domain"] == "target" and r["label"] == "normal")]
    write_submission(tmp_path / "scores", truth)
    # Issue 19: --strict fails as the official evaluators would; by default (and with the old
    # --allow-undefined) the report is printed, exit 0, with a warning naming the figures.
    err = _run_error(capsys, tmp_path / "scores", tmp_path / "data", "--strict")
    assert "fan/00" in err and "auc_target" in err and "undefined" in err
    for extra in ([], ["--allow-undefined"]):
        with caplog.at_level(logging.WARNING, logger="fastasd.evaluate"):
            caplog.clear()
            rc = main(["evaluate", str(tmp_path / "scores"), str(tmp_path / "data"), *extra])
        assert rc == 0
        out = capsys.readouterr().out
        assert "undef." in out and "fan/00: off. auc_target" in out
        assert "fan/00 official.auc_target" in caplog.text and "--strict" in caplog.text


def test_bad_inputs_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = _run_error(capsys, tmp_path / "empty", tmp_path / "nodata")
    assert "no anomaly score files" in err
    truth = make_dev_layout(tmp_path / "data", sections=(("fan", "00"),))
    write_submission(tmp_path / "scores", truth)
    err = _run_error(capsys, tmp_path / "scores", tmp_path / "nodata")
    assert "nodata" in err


def test_plots_without_matplotlib(dev, capsys, monkeypatch):
    tmp_path, _ = dev
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    err = _run_error(capsys, tmp_path / "scores", tmp_path / "data", "--plots", tmp_path / "p")
    assert "matplotlib" in err and "fastasd[plots]" in err


# --------------------------------------------------------------------------- issue 19 and 23.12


def test_empty_score_file_is_an_error_not_an_absent_section(dev, capsys):
    """Issue 23, point 12: an empty score file was taken for an absent section (skipped with a
    warning); now it is an error naming the file."""
    tmp_path, _ = dev
    empty = tmp_path / "scores" / score_file_name("pump", "00")
    empty.write_text("")
    err = _run_error(capsys, tmp_path / "scores", tmp_path / "data")
    assert "empty score file" in err and str(empty) in err
    assert f"{4 * N_PER_GROUP} test clip(s) of pump/section_00" in err
    with pytest.raises(ValueError, match="empty score file"):
        build_records(tmp_path / "scores", tmp_path / "data")
    empty.write_text("\n\n")  # blank lines only: no rows either
    assert "empty score file" in _run_error(capsys, tmp_path / "scores", tmp_path / "data")


def test_ground_truth_listing_a_name_twice_cli(tmp_path, capsys):
    """Issue 23, point 12, through ``fastasd evaluate``: exit 2 naming the file and the name."""
    truth = make_eval_layout(tmp_path / "data", tmp_path / "gt")
    write_submission(tmp_path / "scores", truth)
    gt = tmp_path / "gt" / "ground_truth_data" / "ground_truth_valve_section_03_test.csv"
    first = gt.read_text().splitlines()[0]
    name, value = first.split(",")
    gt.write_text(gt.read_text() + f"{name},{1 - int(value)}\n")
    err = _run_error(capsys, tmp_path / "scores", tmp_path / "data", "--ground-truth", tmp_path / "gt")
    assert str(gt) in err and name in err and "opposite values" in err


def test_metric_forced_and_in_json(dev, capsys):
    tmp_path, truth = dev
    for metric, name, keys in (("2021", "dcase2021", {"auc_source", "auc_target", "pauc_source", "pauc_target"}),
                               ("2020", "dcase2020", {"auc", "pauc"}),
                               ("2024", "dcase2022", {"auc_source", "auc_target", "pauc"})):
        out_json = tmp_path / f"{metric}.json"
        rc = main(["evaluate", str(tmp_path / "scores"), str(tmp_path / "data"), "--metric", metric,
                   "--json", str(out_json)])
        out = capsys.readouterr().out
        assert rc == 0
        result = json.loads(out_json.read_text())
        assert result["metric"]["name"] == name and "chosen by metric=" in result["metric"]["reason"]
        assert set(result["sections"][0]["official"]) == keys
        want = evaluate_records(truth, metric=metric)
        assert result["official_score"] == pytest.approx(want.official_score, rel=1e-12)
        assert f"metric: {want.to_dict()['metric']['title']} (chosen by metric='{metric}')" in out


def test_2021_layout_picks_the_2021_metric(tmp_path, capsys):
    """Test clips in source_test/ and target_test/ (the 2021 layout): the 2021 metric, each
    domain's normals against that domain's anomalies only."""
    truth = make_dev_layout(tmp_path / "data", sections=(("fan", "00"),))
    for p in list((tmp_path / "data" / "fan" / "test").iterdir()):
        domain = "source" if "_source_" in p.name else "target"
        (p.parent.parent / f"{domain}_test").mkdir(exist_ok=True)
        p.rename(p.parent.parent / f"{domain}_test" / p.name)
    (tmp_path / "data" / "fan" / "test").rmdir()
    write_submission(tmp_path / "scores", truth)
    ev = evaluate_directory(tmp_path / "scores", tmp_path / "data")
    assert ev.metric == "dcase2021" and "source_test/" in ev.metric_reason
    assert ev.official_score == pytest.approx(evaluate_records(truth, metric="2021").official_score, rel=1e-12)
    assert main(["evaluate", str(tmp_path / "scores"), str(tmp_path / "data")]) == 0
    assert "metric: DCASE 2021 (chosen automatically" in capsys.readouterr().out


def test_strict_and_allow_undefined_contradict(dev, capsys):
    tmp_path, _ = dev
    err = _run_error(capsys, tmp_path / "scores", tmp_path / "data", "--strict", "--allow-undefined")
    assert "contradict" in err
