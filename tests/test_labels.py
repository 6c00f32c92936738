"""Auxiliary-task class encoding: keys, deterministic order, unknown keys, JSON round-trip."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fastasd.data.labels import ClassEncoder, class_key
from fastasd.data.layout import Clip


def _clip(mt, section, attributes, domain, split="train", label="normal", i=0):
    return Clip(f"/d/{mt}/{split}/f{i}.wav", mt, section, domain, split, label, attributes)


TRAIN = [
    _clip("fan", "00", "m-n_W", "source", i=0),
    _clip("fan", "00", "m-n_W", "source", i=1),  # same class as the one above
    _clip("fan", "00", "m-n_W", "target", i=2),  # domain makes a class
    _clip("fan", "01", "m-n_W", "source", i=3),  # section makes a class
    _clip("fan", "00", "m-n_X", "source", i=4),  # attribute tail makes a class
    _clip("ToyCar", "00", "", "source", i=5),
    _clip("RoboticArm", "03", "weight15_BckgF", "target", i=6),
]


def test_class_key():
    assert class_key(TRAIN[0]) == "fan/00/m-n_W/source"
    assert class_key(TRAIN[5]) == "ToyCar/00//source"


def test_fit_sorted_distinct_and_deterministic():
    enc = ClassEncoder().fit(TRAIN)
    assert len(enc) == 6
    assert enc.classes_ == sorted({class_key(c) for c in TRAIN})
    assert ClassEncoder().fit(TRAIN[::-1]).classes_ == enc.classes_  # order of input irrelevant
    y = enc.transform(TRAIN)
    assert y.dtype == np.int64 and y.shape == (7,)
    assert y[0] == y[1] and len(set(y.tolist())) == 6
    assert [enc.classes_[i] for i in y] == [class_key(c) for c in TRAIN]


def test_fit_ignores_test_clips_and_unknown_key_raises():
    test_clip = _clip("fan", "00", "", "unknown", split="test", label="unknown", i=9)
    enc = ClassEncoder().fit(TRAIN + [test_clip])
    assert len(enc) == 6  # the test clip made no class
    with pytest.raises(KeyError, match=r"fan/00//unknown.*f9\.wav"):
        enc.transform([test_clip])
    with pytest.raises(ValueError, match="no training clips"):
        ClassEncoder().fit([test_clip])


def test_save_load_roundtrip(tmp_path):
    enc = ClassEncoder().fit(TRAIN)
    path = tmp_path / "sub" / "classes.json"
    enc.save(path)
    loaded = ClassEncoder.load(path)
    assert loaded == enc and loaded.classes_ == enc.classes_
    np.testing.assert_array_equal(loaded.transform(TRAIN), enc.transform(TRAIN))
    assert json.loads(path.read_text())["classes"] == enc.classes_
    assert ClassEncoder.from_dict(enc.to_dict()) == enc
    # saving the loaded encoder again gives the same bytes
    loaded.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"something": 1}')
    with pytest.raises(ValueError, match="x.json"):
        ClassEncoder.load(path)
    path.write_text("not json")
    with pytest.raises(ValueError, match="x.json"):
        ClassEncoder.load(path)


# --------------------------------------------------------------------------- aux_classes
@pytest.mark.parametrize("aux,key,n", [
    ("paper", "fan/00/m-n_W/source", 6),
    ("no_attributes", "fan/00/source", 5),   # m-n_X merges into m-n_W's class
    ("no_domain", "fan/00/m-n_W", 5),        # the target clip merges into the source class
    ("section", "fan/00", 4),                # fan/00, fan/01, ToyCar/00, RoboticArm/03
])
def test_aux_classes_choose_the_parts(aux, key, n):
    assert class_key(TRAIN[0], aux) == key
    enc = ClassEncoder(aux).fit(TRAIN)
    assert len(enc) == n and enc.aux_classes == aux
    assert enc.classes_ == sorted({class_key(c, aux) for c in TRAIN})
    np.testing.assert_array_equal(enc.transform(TRAIN), [enc.classes_.index(class_key(c, aux)) for c in TRAIN])


def test_aux_classes_saved_with_the_encoder_and_old_files_load(tmp_path):
    enc = ClassEncoder("no_attributes").fit(TRAIN)
    enc.save(tmp_path / "enc.json")
    assert json.loads((tmp_path / "enc.json").read_text())["aux_classes"] == "no_attributes"
    loaded = ClassEncoder.load(tmp_path / "enc.json")
    assert loaded == enc and loaded.aux_classes == "no_attributes"
    assert loaded != ClassEncoder("paper").fit(TRAIN)
    # an encoder.json written before aux_classes existed: the paper's classes
    old = {"format": "fastasd.ClassEncoder", "version": 1, "classes": ClassEncoder().fit(TRAIN).classes_}
    assert ClassEncoder.from_dict(old).aux_classes == "paper"
    with pytest.raises(ValueError, match="aux_classes 'speed'"):
        ClassEncoder("speed")
    with pytest.raises(ValueError, match="aux_classes 'speed'"):
        ClassEncoder.from_dict({**old, "aux_classes": "speed"})
