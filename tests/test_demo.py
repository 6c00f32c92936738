"""``fastasd demo --quick``: the whole chain (synth -> baseline -> train -> score -> evaluate)."""
from __future__ import annotations

import json

from fastasd.cli import main


def test_demo_quick(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "official score: fastasd" in text and "baseline" in text
    # one table: the paper's backend, the balanced scores (same model) and the baseline
    assert "the paper's backend" in text and "balanced scores" in text and "simple baseline" in text
    result = json.loads((out / "results.json").read_text())
    assert result["quick"] is True and 0.0 <= result["official_score"] <= 1.0
    assert 0.0 <= result["baseline_official_score"] <= 1.0
    assert 0.0 <= result["balanced_official_score"] <= 1.0
    assert f"{100 * result['balanced_official_score']:10.2f}" in text
    assert (out / "model" / "manifest.json").is_file()
    assert (out / "model_balanced" / "manifest.json").is_file()
    assert json.loads((out / "model_balanced" / "config.json").read_text())["score_normalization"] == "local_density"
    assert "official score (harmonic mean of 6 values over 2 section(s))" in (out / "results.md").read_text()
    assert (out / "scores" / "scores.csv").is_file()
    subs = sorted(p.name for p in (out / "scores").glob("anomaly_score_*_test.csv"))
    assert subs == ["anomaly_score_fan_section_00_test.csv", "anomaly_score_valve_section_00_test.csv"]
    assert (out / "results.md").read_text().startswith("# fastasd demo")
    for path in result["paths"].values():
        assert path in text  # the demo says where everything went
    # a second run into the same folder replaces the first one
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
