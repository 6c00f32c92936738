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


def test_comparison_table_follows_the_metric():
    """Issue 19: the demo's table shows the chosen official metric's parts ("undef." where
    undefined), and ``fastasd demo`` takes --metric and --strict like evaluate and baseline."""
    from fastasd.cli import build_parser
    from fastasd.cli.demo import add_cli_arguments, comparison_table
    from fastasd.metrics import evaluate_records

    records = [{"file_name": f"{lab}_id_00_{i:08d}.wav", "machine_type": "fan", "section": "00",
                "label": lab, "score": s}
               for i, (lab, s) in enumerate([("normal", 0.1), ("normal", 0.4), ("anomaly", 0.35),
                                             ("anomaly", 0.9)])]
    ev = evaluate_records(records)  # 2020 names: the 2020 metric
    table = comparison_table([("system", ev)])
    assert table.splitlines()[0].split()[1:] == ["official", "auc", "pauc", "mixed", "AUC", "mixed", "pAUC"]
    assert f"{100 * ev.official_score:11.2f}" in table and "DCASE 2020" in table
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["demo"]
    add_cli_arguments(sub)
    args = parser.parse_args(["demo", "--quick", "--strict", "--metric", "2021"])
    assert args.strict and args.metric == "2021"
