"""What training says about its data (issue 19), without the real clips: the few-classes
message, the crop/pad line, ``clip_seconds="auto"`` (tests/test_real_dcase.py runs them on real
DCASE recordings when ../shared/real is there)."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from fastasd.config import Config
from fastasd.data.labels import FEW_CLASSES, ClassEncoder, few_classes_message
from fastasd.data.layout import Clip, discover
from fastasd.data.lengths import header_seconds, length_fit_message, most_common_seconds
from fastasd.training.datacheck import resolve_clip_seconds


def _clip(mt="slider", sec="00", attrs="", domain="source"):
    return Clip(f"/x/{mt}/train/a.wav", mt, sec, domain, "train", "normal", attrs)


def test_few_classes_message_says_what_is_missing():
    # One DCASE 2020 machine id: one machine type, one section, no attribute, one domain.
    clips = [_clip() for _ in range(3)]
    text = few_classes_message(ClassEncoder().fit(clips), clips)
    assert text.startswith("the auxiliary task has only 1 class(es) (slider/00//source): the 3 "
                           "training clips hold 1 machine type(s), 1 section(s), no attribute in "
                           "their names, 1 domain(s) (source).")
    assert "nothing to learn" in text and "fastasd baseline" in text and "--featex-prob" in text
    # Three classes are still few; the chosen aux_classes that leaves parts out is named.
    clips = [_clip(sec=s, attrs="a_1", domain=d) for s in ("00", "01", "02") for d in ("source", "target")]
    text = few_classes_message(ClassEncoder("section").fit(clips), clips)
    assert "only 3 class(es)" in text and "aux_classes='section' leaves out the attributes and domain" in text
    assert few_classes_message(ClassEncoder().fit(clips), clips) is None  # 6 classes
    assert FEW_CLASSES == 4


def test_lengths_and_the_crop_pad_line(tmp_path):
    for i, seconds in enumerate((1.0, 1.0, 1.5, 0.25)):
        sf.write(tmp_path / f"c{i}.wav", np.zeros(int(16000 * seconds), np.float32), 16000)
    sf.write(tmp_path / "r.wav", np.zeros(8000, np.float32), 8000)  # 1 s at another rate
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    paths = [tmp_path / f"c{i}.wav" for i in range(4)] + [tmp_path / "r.wav", tmp_path / "bad.wav"]
    seconds = header_seconds(paths)
    assert seconds == [1.0, 1.0, 1.5, 0.25, 1.0, None]
    assert most_common_seconds(seconds) == 1.0
    assert most_common_seconds([2.0, 3.0]) == 3.0  # a tie goes to the longer length
    assert most_common_seconds([None]) is None
    assert length_fit_message(seconds, 1.0, "scoring") == (
        "scoring: 1 cropped (by 0.50 s; their end is not used) and 1 zero-padded (by 0.75 s) of 5 "
        "to the model's 1-s input (lengths 1 s: 3, 1.5 s: 1, 0.25 s: 1)")
    assert length_fit_message([1.0, 1.0004], 1.0, "x") is None  # every clip fits


def test_clip_seconds_auto(tmp_path):
    cfg = Config.preset("demo").replace(clip_seconds="auto")
    assert Config.parse_value("clip_seconds", "AUTO") == "auto"
    assert Config.from_dict(cfg.to_dict()).clip_seconds == "auto"
    with pytest.raises(ValueError, match="clip_seconds='auto' has no length until training"):
        cfg.num_samples
    with pytest.raises(ValueError, match="expected a number"):
        Config(clip_seconds="longest")
    for i, seconds in enumerate((2.0, 2.0, 3.0)):
        path = tmp_path / "fan" / "train" / f"section_00_source_train_normal_{i:04d}_a_1.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, np.zeros(int(16000 * seconds), np.float32), 16000)
    assert len(discover(tmp_path)) == 3
    resolved = resolve_clip_seconds(cfg, tmp_path)
    assert resolved.clip_seconds == 2.0 and resolved.num_samples == 32000
    assert resolve_clip_seconds(resolved, tmp_path) is resolved  # a number stays
