"""Label regimes of a synthetic set (fastasd.data.synth.label_regime): DCASE 2023-like (one
section per machine type) and no metadata (every machine its own type, noAttribute), linked
from the same audio; and the set's domain shift along an attribute."""
from __future__ import annotations

import json
import os

import pytest

from fastasd.data.labels import ClassEncoder
from fastasd.data.layout import discover
from fastasd.data.synth import INFO_FILE, label_regime, generate

SIZES = dict(machine_types=["fan", "valve", "pump"], sections=2, n_train_source=6, n_train_target=2,
             n_test=4, clip_seconds=0.5)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("regimes")
    generate(r / "set", seed=1, **SIZES)
    return r / "set"


def test_dcase2023_keeps_one_section_per_machine_type(root, tmp_path):
    info = label_regime(root, tmp_path / "v", "dcase2023")
    clips = discover(tmp_path / "v")
    kept = {(c.machine_type, c.section) for c in clips}
    assert kept == {("fan", "00"), ("valve", "01"), ("pump", "00")}  # both kinds of shift stay
    full = discover(root)
    assert len(clips) == info["n_files"] == sum((c.machine_type, c.section) in kept for c in full)
    assert all(c.attributes and c.attributes != "noAttribute" for c in clips)
    assert (tmp_path / "v" / "valve" / "attributes_01.csv").is_file()
    same = {c.file_name for c in full if (c.machine_type, c.section) in kept}
    assert {c.file_name for c in clips} == same
    f = next(c for c in clips if c.split == "train")
    assert os.path.samefile(f.path, root / f.machine_type / "train" / f.file_name)  # a link, no copy


def test_nometa_makes_every_machine_a_type_without_attributes(root, tmp_path):
    label_regime(root, tmp_path / "v", "nometa")
    clips = discover(tmp_path / "v")
    full = discover(root)
    assert len(clips) == len(full)
    assert {c.machine_type for c in clips} == {f"{m}{s}" for m in SIZES["machine_types"] for s in ("00", "01")}
    assert {c.section for c in clips} == {"00"} and {c.attributes for c in clips} == {"noAttribute"}
    assert sorted((c.domain, c.split, c.label) for c in clips) == sorted((c.domain, c.split, c.label) for c in full)
    # only machine and domain can form classes: the paper's classes = 6 machines x 2 domains
    assert len(ClassEncoder().fit(clips)) == 12 and len(ClassEncoder("section").fit(clips)) == 6


def test_a_copy_is_replaced_and_foreign_folders_are_refused(root, tmp_path):
    label_regime(root, tmp_path / "v", "nometa")
    label_regime(root, tmp_path / "v", "dcase2023")  # replaces the earlier copy
    assert json.loads((tmp_path / "v" / INFO_FILE).read_text())["label_regime"] == "dcase2023"
    assert not (tmp_path / "v" / "fan00").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        label_regime(root, tmp_path / "other", "full")
    with pytest.raises(ValueError, match="regime"):
        label_regime(root, tmp_path / "w", "dcase2020")
    with pytest.raises(ValueError, match="not a complete generated set"):
        label_regime(tmp_path / "v", tmp_path / "w", "full")  # a copy is no source


def test_the_target_domain_runs_a_speed_never_seen_in_the_source(root):
    """Section 00 shifts the speed-like attribute: the target's speeds are unseen in the source
    (the shift along an attribute that real machines have, and that paper classes name)."""
    clips = [c for c in discover(root) if c.section == "00" and c.machine_type == "fan"]
    speed = {d: {c.attribute_values[0][1] for c in clips if c.domain == d} for d in ("source", "target")}
    assert speed["target"] and not speed["target"] & speed["source"]
