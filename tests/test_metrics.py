"""fastasd.metrics: AUC/pAUC per section in official and paper modes, harmonic means.

Tolerances: values computed by hand are compared to 1e-12 absolute; values compared with
scikit-learn / scipy called directly on the same arrays to 1e-12 relative.
"""
from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
from scipy.stats import hmean
from sklearn.metrics import roc_auc_score

from fastasd.metrics import (
    OFFICIAL_KEYS,
    PAPER_KEYS,
    UndefinedMetricWarning,
    evaluate_records,
    evaluate_section,
    harmonic_mean,
)

EPS = sys.float_info.epsilon


def rec(name, domain, label, score, mt="fan", sec="00"):
    return {"file_name": name, "machine_type": mt, "section": sec, "domain": domain,
            "label": label, "score": score}


def six_clip_section(mt="fan", sec="00"):
    """The hand-computed case (see test_six_clip_section_by_hand)."""
    return [
        rec("s_n1.wav", "source", "normal", 0.1, mt, sec),
        rec("s_n2.wav", "source", "normal", 0.4, mt, sec),
        rec("s_a1.wav", "source", "anomaly", 0.35, mt, sec),
        rec("t_n1.wav", "target", "normal", 0.5, mt, sec),
        rec("t_n2.wav", "target", "normal", 0.6, mt, sec),
        rec("t_a1.wav", "target", "anomaly", 0.9, mt, sec),
    ]


def test_six_clip_section_by_hand():
    # Official source AUC: normals {.1,.4} vs all anomalies {.35,.9}: pairs won 3/4.
    # Official target AUC: normals {.5,.6} vs {.35,.9}: 2/4.
    # Paper source AUC: normals {.1,.4} vs {.35}: 1/2; paper target: {.5,.6} vs {.9}: 1.
    # Mixed AUC: 4 normals vs {.35 (beats 1), .9 (beats 4)}: 5/8.
    # pAUC (max_fpr .1), all clips: ROC is at TPR .5 on FPR [0, .25] -> area .05;
    #   McClish: .5 * (1 + (.05 - .005) / (.1 - .005)) = 14/19.
    # Paper source pAUC: the top score is a normal -> TPR 0 for FPR < .5 -> area 0 -> 9/19.
    # Paper target pAUC: perfect ranking -> 1.
    ev = evaluate_records(six_clip_section())
    r = ev.sections[("fan", "00")]
    assert r.official["auc_source"] == pytest.approx(0.75, abs=1e-12)
    assert r.official["auc_target"] == pytest.approx(0.5, abs=1e-12)
    assert r.official["pauc"] == pytest.approx(14 / 19, abs=1e-12)
    assert r.paper["auc_source"] == pytest.approx(0.5, abs=1e-12)
    assert r.paper["pauc_source"] == pytest.approx(9 / 19, abs=1e-12)
    assert r.paper["auc_target"] == pytest.approx(1.0, abs=1e-12)
    assert r.paper["pauc_target"] == pytest.approx(1.0, abs=1e-12)
    assert r.paper["auc_mixed"] == pytest.approx(5 / 8, abs=1e-12)
    assert r.paper["pauc_mixed"] == r.official["pauc"]
    assert r.counts == {"source_normal": 2, "source_anomaly": 1, "target_normal": 2,
                        "target_anomaly": 1}
    expected = 3 / (1 / 0.75 + 1 / 0.5 + 19 / 14)
    assert ev.official_score == pytest.approx(expected, abs=1e-12)
    # Official and paper modes differ here, as they should.
    assert r.official["auc_source"] != pytest.approx(r.paper["auc_source"])
    assert r.official["auc_target"] != pytest.approx(r.paper["auc_target"])


def test_evaluate_section_matches_evaluate_records():
    r = evaluate_section(six_clip_section())
    assert r == evaluate_records(six_clip_section()).sections[("fan", "00")]


def _random_records(rng, mts=("fan", "pump"), secs=("00", "01", "02"), n=40):
    records = []
    for mt in mts:
        for sec in secs:
            for i in range(n):
                dom = "source" if i % 2 == 0 else "target"
                lab = "anomaly" if (i // 2) % 2 == 0 else "normal"
                score = rng.normal() + (0.8 if lab == "anomaly" else 0.0) + (0.3 if dom == "target" else 0)
                if i % 7 == 0:
                    score = round(score, 1)  # some ties
                records.append(rec(f"section_{sec}_{i:04d}.wav", dom, lab, score, mt, sec))
    return records


def test_against_sklearn_directly():
    rng = np.random.default_rng(0)
    records = _random_records(rng)
    ev = evaluate_records(records)
    all_official = []
    for (mt, sec), r in ev.sections.items():
        rs = [x for x in records if x["machine_type"] == mt and x["section"] == sec]
        y = np.array([x["label"] == "anomaly" for x in rs], dtype=int)
        s = np.array([x["score"] for x in rs])
        d = np.array([x["domain"] for x in rs])
        src_off = (d == "source") | (y == 1)
        tgt_off = (d == "target") | (y == 1)
        want_off = {"auc_source": roc_auc_score(y[src_off], s[src_off]),
                    "auc_target": roc_auc_score(y[tgt_off], s[tgt_off]),
                    "pauc": roc_auc_score(y, s, max_fpr=0.1)}
        src, tgt = d == "source", d == "target"
        want_pap = {"auc_source": roc_auc_score(y[src], s[src]),
                    "pauc_source": roc_auc_score(y[src], s[src], max_fpr=0.1),
                    "auc_target": roc_auc_score(y[tgt], s[tgt]),
                    "pauc_target": roc_auc_score(y[tgt], s[tgt], max_fpr=0.1),
                    "auc_mixed": roc_auc_score(y, s),
                    "pauc_mixed": roc_auc_score(y, s, max_fpr=0.1)}
        for k in OFFICIAL_KEYS:
            assert r.official[k] == pytest.approx(want_off[k], rel=1e-12), (mt, sec, k)
        for k in PAPER_KEYS:
            assert r.paper[k] == pytest.approx(want_pap[k], rel=1e-12), (mt, sec, k)
        all_official += [want_off[k] for k in OFFICIAL_KEYS]
    assert ev.official_score == pytest.approx(hmean(all_official), rel=1e-12)
    for k in PAPER_KEYS:
        assert ev.paper[k] == pytest.approx(hmean([r.paper[k] for r in ev.sections.values()]),
                                            rel=1e-12)
    for mt in ("fan", "pump"):
        vals = [v for (m, _), r in ev.sections.items() if m == mt for v in r.official_values()]
        assert ev.machine_types[mt]["official_score"] == pytest.approx(hmean(vals), rel=1e-12)
    assert list(ev.sections) == sorted(ev.sections)


def test_other_max_fpr():
    rng = np.random.default_rng(1)
    records = _random_records(rng, mts=("fan",), secs=("00",))
    ev = evaluate_records(records, max_fpr=0.2)
    y = np.array([x["label"] == "anomaly" for x in records], dtype=int)
    s = np.array([x["score"] for x in records])
    assert ev.sections[("fan", "00")].official["pauc"] == pytest.approx(
        roc_auc_score(y, s, max_fpr=0.2), rel=1e-12)
    with pytest.raises(ValueError, match="max_fpr"):
        evaluate_records(records, max_fpr=0.0)


def _section_with(scores_normal, scores_anomaly):
    out = []
    for i, s in enumerate(scores_normal):
        out.append(rec(f"n{i}.wav", "source" if i % 2 == 0 else "target", "normal", s))
    for i, s in enumerate(scores_anomaly):
        out.append(rec(f"a{i}.wav", "source" if i % 2 == 0 else "target", "anomaly", s))
    return out


def test_perfect_inverted_tied():
    perfect = evaluate_records(_section_with([0, 1, 2, 3], [10, 11, 12, 13]))
    r = perfect.sections[("fan", "00")]
    assert all(v == 1.0 for v in r.official.values()) and all(v == 1.0 for v in r.paper.values())
    assert perfect.official_score == 1.0

    inverted = evaluate_records(_section_with([10, 11, 12, 13], [0, 1, 2, 3]))
    r = inverted.sections[("fan", "00")]
    assert r.official["auc_source"] == 0.0 and r.official["auc_target"] == 0.0
    # pAUC area 0 -> McClish .5 * (1 - .005 / .095) = 9/19.
    assert r.official["pauc"] == pytest.approx(9 / 19, abs=1e-12)
    # Zero AUCs are clamped at epsilon: tiny but positive, no division by zero.
    assert inverted.official_score == pytest.approx(3 / (2 / EPS + 19 / 9), rel=1e-12)
    assert 0 < inverted.official_score < 1e-14

    tied = evaluate_records(_section_with([5, 5, 5, 5], [5, 5, 5, 5]))
    r = tied.sections[("fan", "00")]
    assert all(v == pytest.approx(0.5, abs=1e-12) for v in r.official.values())
    assert all(v == pytest.approx(0.5, abs=1e-12) for v in r.paper.values())


def test_harmonic_mean():
    assert harmonic_mean([0.5, 0.5]) == pytest.approx(0.5, abs=1e-15)
    assert harmonic_mean([0.25, 1.0]) == pytest.approx(0.4, abs=1e-15)
    assert harmonic_mean(np.array([0.9, 0.8, 0.7])) == pytest.approx(hmean([0.9, 0.8, 0.7]),
                                                                     rel=1e-12)
    assert harmonic_mean([0.0, 1.0]) == pytest.approx(2 / (1 / EPS + 1), rel=1e-12)
    assert harmonic_mean([0.0]) == EPS
    assert math.isnan(harmonic_mean([0.5, float("nan")]))
    with pytest.raises(ValueError, match="no values"):
        harmonic_mean([])
    with pytest.raises(ValueError, match="negative"):
        harmonic_mean([-0.1, 0.5])


def test_single_class_is_an_error_naming_the_section():
    records = [r for r in six_clip_section() if r["label"] == "normal"]
    records += six_clip_section(sec="01")
    with pytest.raises(ValueError, match=r"fan/00.*official auc_source.*2 normal and 0 anomalous"):
        evaluate_records(records)


def test_no_source_normals_is_an_error_naming_the_section():
    records = [r for r in six_clip_section() if not (r["domain"] == "target" and r["label"] == "normal")]
    with pytest.raises(ValueError, match=r"section fan/00: official auc_target"):
        evaluate_records(records)


def test_allow_undefined_reports_nan_and_excludes_from_means():
    records = [r for r in six_clip_section(mt="pump") if r["domain"] == "source"]  # no target clips
    records += six_clip_section()
    with pytest.warns(UndefinedMetricWarning, match="pump/00") as caught:
        ev = evaluate_records(records, allow_undefined=True)
    r = ev.sections[("pump", "00")]
    assert math.isnan(r.paper["auc_target"]) and math.isnan(r.paper["pauc_target"])
    # Official target AUC has the source anomaly vs no target normals: one class -> NaN too.
    assert math.isnan(r.official["auc_target"])
    assert any("auc_target" in str(w.message) for w in caught)
    # The official score needs every value (issue 19): undefined, with the reason; the mean
    # over the defined values only is kept apart, and every per-key mean leaves NaN out.
    fan = ev.sections[("fan", "00")]
    want = hmean([fan.official["auc_source"], fan.official["auc_target"], fan.official["pauc"],
                  r.official["auc_source"], r.official["pauc"]])
    assert math.isnan(ev.official_score)
    assert "1 of 6 official values are undefined (pump/00 auc_target)" in ev.undefined["official_score"]
    assert ev.partial_official_score == pytest.approx(want, rel=1e-12)
    assert ev.official["auc_source"] == pytest.approx(
        hmean([fan.official["auc_source"], r.official["auc_source"]]), rel=1e-12)
    assert ev.paper["auc_target"] == pytest.approx(fan.paper["auc_target"], rel=1e-12)
    d = ev.to_dict()
    json.dumps(d, allow_nan=False)  # NaN written as null
    pump = next(s for s in d["sections"] if s["machine_type"] == "pump")
    assert pump["paper"]["auc_target"] is None
    assert pump["undefined"]["paper.auc_target"] == "it has no clips"
    table = ev.format_table()
    assert "undef." in table and "pump/00: off. auc_target: its clips hold 0 normal and 1 anomalous" in table


def test_unknown_label_names_the_files():
    records = six_clip_section()
    records[2] = dict(records[2], label="unknown")
    records[4] = dict(records[4], label="unknown")
    with pytest.raises(ValueError, match=r"fan/00.*s_a1\.wav, t_n2\.wav.*cannot evaluate"):
        evaluate_records(records)


def test_missing_or_unknown_domain_is_an_error():
    records = six_clip_section()
    del records[0]["domain"]
    with pytest.raises(ValueError, match=r"s_n1\.wav.*fan/00.*misses domain"):
        evaluate_records(records)
    records = six_clip_section()
    records[1]["domain"] = "unknown"
    with pytest.raises(ValueError, match=r"section fan/00: no domain.*s_n2\.wav"):
        evaluate_records(records)
    records = six_clip_section()
    records[1]["label"] = "broken"
    with pytest.raises(ValueError, match=r"fan/00: label must be.*s_n2\.wav"):
        evaluate_records(records)


def test_duplicate_and_nonfinite_are_errors():
    records = six_clip_section() + [rec("s_n1.wav", "source", "normal", 0.3)]
    with pytest.raises(ValueError, match=r"fan/00: duplicate file name\(s\) s_n1\.wav"):
        evaluate_records(records)
    # The same name in another section is fine (sections are evaluated separately).
    evaluate_records(six_clip_section() + six_clip_section(sec="01"))
    records = six_clip_section()
    records[3]["score"] = float("nan")
    with pytest.raises(ValueError, match=r"fan/00: score is not a finite number for t_n1\.wav"):
        evaluate_records(records)
    with pytest.raises(ValueError, match="no records"):
        evaluate_records([])


def test_inputs_not_modified_and_numpy_scores():
    records = six_clip_section()
    for r in records:
        r["score"] = np.float32(r["score"])
    before = [dict(r) for r in records]
    evaluate_records(records)
    assert records == before


def test_to_dict_and_table():
    records = six_clip_section() + six_clip_section(sec="01") + six_clip_section(mt="pump")
    ev = evaluate_records(records)
    d = ev.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text)["official_score"] == pytest.approx(ev.official_score)
    assert list(d)[0] == "official_score" and 0.0 <= d["official_score"] <= 1.0
    assert set(d["machine_types"]) == {"fan", "pump"}
    assert set(d["official"]) == set(OFFICIAL_KEYS) and set(d["paper"]) == set(PAPER_KEYS)
    assert len(d["sections"]) == 3
    s0 = d["sections"][0]
    assert (s0["machine_type"], s0["section"]) == ("fan", "00")
    assert s0["official"]["auc_source"] == pytest.approx(0.75)
    table = ev.format_table()
    lines = table.splitlines()
    # percentages with two decimals: official auc_source 75.00, pAUC 73.68, paper source 50.00
    src_row = next(line for line in lines if line.startswith("fan") and " 00 " in line and "source" in line)
    assert src_row.split()[3:] == ["75.00", "-", "50.00", "47.37"]
    mixed_row = next(line for line in lines if line.startswith("fan") and " 00 " in line and "mixed" in line)
    assert mixed_row.split()[3:] == ["-", "73.68", "62.50", "73.68"]
    assert any(line.startswith("pump") and "hmean" in line for line in lines)
    assert any(line.startswith("all") and "hmean" in line for line in lines)
    final = next(line for line in lines if line.startswith("official score ("))
    assert final.endswith(f"{100 * ev.official_score:.2f} %")
    # fixed width: every table row is as wide as the header
    width = len(lines[0])
    assert all(len(line) == width for line in lines if line.split()[2:3] in (["source"], ["target"], ["mixed"]))


# --------------------------------------------------------------------------- every year's metric
# (issue 19) Each official metric against the independent computation of tests/auc_reference.py
# (rank-statistic AUC, hand-integrated McClish pAUC, means written out).

from auc_reference import amean, hmean as ref_hmean, mcclish_pauc, rank_auc  # noqa: E402

from fastasd.metrics import METRICS, metric_by_name, resolve_metric  # noqa: E402

SECTIONS = (("fan", "00"), ("fan", "01"), ("pump", "00"))


def random_records(seed=1, names_2020=False, domains=True):
    """Per section 7 + 4 source and 5 + 3 target normal + anomalous clips, scores on a 0.1 grid
    (many ties), anomalies higher on average. ``names_2020``: DCASE 2020 file names."""
    rng = np.random.default_rng(seed)
    out = []
    for mt, sec in SECTIONS:
        i = 0
        for domain, label, n in (("source", "normal", 7), ("source", "anomaly", 4),
                                 ("target", "normal", 5), ("target", "anomaly", 3)):
            for _ in range(n):
                score = round(float(rng.normal(0.6 if label == "anomaly" else 0.3, 0.25)), 1)
                name = (f"{label}_id_{sec}_{i:08d}.wav" if names_2020
                        else f"section_{sec}_{domain}_test_{label}_{i:04d}.wav")
                r = {"file_name": name, "machine_type": mt, "section": sec, "label": label,
                     "score": score}
                if domains:
                    r["domain"] = domain
                out.append(r)
                i += 1
    return out


def _subset(records, mt, sec, keep):
    rs = [r for r in records if (r["machine_type"], r["section"]) == (mt, sec) and keep(r)]
    return [r["label"] == "anomaly" for r in rs], [r["score"] for r in rs]


def _is(domain):
    return lambda r: r["domain"] == domain


def _with_anomalies(domain):
    return lambda r: r["domain"] == domain or r["label"] == "anomaly"


def _all(r):
    return True


def test_reference_helpers_on_hand_values():
    # 2 normals {.1, .4}, anomalies {.35, .9}: 3 of 4 pairs won.
    assert rank_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.9]) == 0.75
    assert rank_auc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts one half
    # The six-clip section of test_six_clip_section_by_hand: pAUC 14/19 over all clips.
    six = six_clip_section()
    assert mcclish_pauc([r["label"] == "anomaly" for r in six], [r["score"] for r in six]) == \
        pytest.approx(14 / 19, abs=1e-12)
    assert mcclish_pauc([0, 1], [0.0, 1.0]) == pytest.approx(1.0)  # perfect
    assert mcclish_pauc([0, 1], [1.0, 0.0]) == pytest.approx(0.5 * (1 + (0 - 0.005) / 0.095))


def test_dcase2022_to_2025_against_independent_computation():
    records = random_records()
    ev = evaluate_records(records)
    assert ev.metric == "dcase2022" and "source/target domains" in ev.metric_reason
    for year in ("2022", "2023", "2024", "2025"):  # one metric for the four years
        assert evaluate_records(records, metric=year).official_score == ev.official_score
    values = []
    for (mt, sec), r in ev.sections.items():
        want = {"auc_source": rank_auc(*_subset(records, mt, sec, _with_anomalies("source"))),
                "auc_target": rank_auc(*_subset(records, mt, sec, _with_anomalies("target"))),
                "pauc": mcclish_pauc(*_subset(records, mt, sec, _all))}
        assert r.official == pytest.approx(want, abs=1e-12)
        assert r.paper == pytest.approx({
            "auc_source": rank_auc(*_subset(records, mt, sec, _is("source"))),
            "pauc_source": mcclish_pauc(*_subset(records, mt, sec, _is("source"))),
            "auc_target": rank_auc(*_subset(records, mt, sec, _is("target"))),
            "pauc_target": mcclish_pauc(*_subset(records, mt, sec, _is("target"))),
            "auc_mixed": rank_auc(*_subset(records, mt, sec, _all)),
            "pauc_mixed": want["pauc"]}, abs=1e-12)
        values += want.values()
    assert ev.official_score == pytest.approx(ref_hmean(values), rel=1e-12)
    assert ev.official["auc_target"] == pytest.approx(
        ref_hmean(r.official["auc_target"] for r in ev.sections.values()), rel=1e-12)
    fan = [v for (mt, _), r in ev.sections.items() if mt == "fan" for v in r.official.values()]
    assert ev.machine_types["fan"]["official_score"] == pytest.approx(ref_hmean(fan), rel=1e-12)


def test_dcase2021_against_independent_computation():
    records = random_records(seed=2)
    ev = evaluate_records(records, metric="2021")
    assert ev.metric == "dcase2021" and ev.metric_reason == "chosen by metric='2021'"
    values = []
    for (mt, sec), r in ev.sections.items():
        # 2021: each domain's normals against that domain's anomalies only
        want = {"auc_source": rank_auc(*_subset(records, mt, sec, _is("source"))),
                "auc_target": rank_auc(*_subset(records, mt, sec, _is("target"))),
                "pauc_source": mcclish_pauc(*_subset(records, mt, sec, _is("source"))),
                "pauc_target": mcclish_pauc(*_subset(records, mt, sec, _is("target")))}
        assert r.official == pytest.approx(want, abs=1e-12)
        values += want.values()
    assert len(values) == 12
    assert ev.official_score == pytest.approx(ref_hmean(values), rel=1e-12)
    # It differs from 2022's per-domain AUC (all anomalies of the section there).
    r = ev.sections[("fan", "00")]
    assert r.official["auc_source"] != evaluate_records(records).sections[("fan", "00")].official["auc_source"]
    rows = ev.format_table().splitlines()
    src = next(line for line in rows if line.startswith("fan") and " 00 " in line and "source" in line)
    assert src.split()[3:5] == [f"{100 * r.official['auc_source']:.2f}", f"{100 * r.official['pauc_source']:.2f}"]


@pytest.mark.parametrize("names_2020, domains", [(True, True), (True, False), (False, False)],
                         ids=["2020-names", "2020-names-no-domain", "no-domain"])
def test_dcase2020_against_independent_computation(names_2020, domains):
    records = random_records(seed=3, names_2020=names_2020, domains=domains)
    if domains:  # the 2020 parser gives every clip the source domain
        records = [dict(r, domain="source") for r in records]
    ev = evaluate_records(records)
    assert ev.metric == "dcase2020"
    assert ("DCASE 2020 layout" if names_2020 else "no clip has a domain") in ev.metric_reason
    per_type = {}
    for (mt, sec), r in ev.sections.items():
        want = {"auc": rank_auc(*_subset(records, mt, sec, _all)),
                "pauc": mcclish_pauc(*_subset(records, mt, sec, _all))}
        assert r.official == pytest.approx(want, abs=1e-12)
        assert set(r.paper) == {"auc_mixed", "pauc_mixed"}  # no domains: the mixed figures only
        per_type.setdefault(mt, []).append(want)
    for mt, secs in per_type.items():  # the 2020 evaluator's "Average" rows: arithmetic
        s = ev.machine_types[mt]
        assert s["official"]["auc"] == pytest.approx(amean(w["auc"] for w in secs), abs=1e-12)
        assert s["official"]["pauc"] == pytest.approx(amean(w["pauc"] for w in secs), abs=1e-12)
        assert s["official_score"] == pytest.approx(
            amean([w["auc"] for w in secs] + [w["pauc"] for w in secs]), abs=1e-12)
    assert ev.official_score == pytest.approx(
        amean(ev.machine_types[mt]["official_score"] for mt in per_type), abs=1e-12)
    assert ev.official["auc"] == pytest.approx(
        amean(ev.machine_types[mt]["official"]["auc"] for mt in per_type), abs=1e-12)
    table = ev.format_table()
    assert "arithmetic mean over 2 machine type(s)" in table and "DCASE 2020" in table
    assert any(line.startswith("fan") and " mean " in line for line in table.splitlines())
    assert ev.to_dict()["metric"]["name"] == "dcase2020"


def test_metric_choice_and_names():
    with_domains = random_records()
    assert resolve_metric("auto", with_domains)[0].name == "dcase2022"
    assert resolve_metric("auto", with_domains, layout_year=2021)[0].name == "dcase2021"
    assert resolve_metric("auto", with_domains, layout_year=2020)[0].name == "dcase2020"
    assert resolve_metric("auto", random_records(domains=False))[0].name == "dcase2020"
    assert resolve_metric("2020", with_domains)[0].name == "dcase2020"  # forced
    assert metric_by_name("dcase2025") is METRICS["dcase2022"] is metric_by_name("2024")
    with pytest.raises(ValueError, match="unknown metric '2019'.*auto"):
        evaluate_records(with_domains, metric="2019")
    # The 2022 metric needs every domain: one record without is an error, as before.
    mixed = random_records()
    del mixed[0]["domain"]
    with pytest.raises(ValueError, match="misses domain"):
        evaluate_records(mixed)


def test_partial_labels_every_year():
    """A section without anomalies and one without target normals: strict raises; otherwise the
    undefined figures have reasons, every other figure is computed, the score is undefined."""
    records = random_records(seed=4)
    records = [r for r in records if not (r["section"] == "01" and r["label"] == "anomaly")]
    records = [r for r in records if not (r["machine_type"] == "pump" and r["domain"] == "target"
                                          and r["label"] == "normal")]
    for metric in ("2020", "2021", "2022"):
        with pytest.raises(ValueError, match=r"section fan/01: official .* is undefined: its clips hold \d+ normal and 0 anomalous"):
            evaluate_records(records, metric=metric)
        with pytest.warns(UndefinedMetricWarning, match="fan/01 official"):
            ev = evaluate_records(records, metric=metric, allow_undefined=True)
        assert math.isnan(ev.official_score) and "fan/01" in ev.undefined["official_score"]
        fan00 = ev.sections[("fan", "00")]
        assert not any(math.isnan(v) for v in fan00.official.values()) and not fan00.undefined
        fan01 = ev.sections[("fan", "01")]
        assert all(math.isnan(v) for v in fan01.official.values())
        assert all("0 anomalous" in why for why in fan01.undefined.values())
        defined = [v for r in ev.sections.values() for v in r.official.values() if not math.isnan(v)]
        mean = amean if metric == "2020" else ref_hmean
        if metric != "2020":  # 2020 averages per machine type first
            assert ev.partial_official_score == pytest.approx(mean(defined), rel=1e-12)
        json.dumps(ev.to_dict(), allow_nan=False)
        assert "undefined:" in ev.format_table()
    with pytest.warns(UndefinedMetricWarning):
        pump = evaluate_records(records, metric="2022", allow_undefined=True).sections[("pump", "00")]
    # no target normals: the official target AUC (target normals + all 7 anomalies) and the
    # paper's target figures (the 3 target anomalies) are undefined; the rest is computed
    assert set(pump.undefined) == {"official.auc_target", "paper.auc_target", "paper.pauc_target"}
    assert pump.undefined["official.auc_target"] == "its clips hold 0 normal and 7 anomalous (it needs both)"
    assert pump.undefined["paper.auc_target"] == "its clips hold 0 normal and 3 anomalous (it needs both)"
    assert pump.official["auc_source"] == pytest.approx(
        rank_auc(*_subset(records, "pump", "00", _with_anomalies("source"))), abs=1e-12)
