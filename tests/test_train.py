"""Training: determinism, resume, safe checkpoints, the train CLI, and an end-to-end run that
must beat the simple baseline."""
from __future__ import annotations

import contextlib
import io
import os
import pickle

import numpy as np
import pytest
import torch

from fastasd.config import Config
from fastasd.data.layout import discover
from fastasd.data.synth import generate
from fastasd.training import checkpoint_path, load_checkpoint, train_model

from tiny import TINY, tiny_config  # tests/tiny.py


@pytest.fixture(scope="module")
def tiny_clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_data")
    generate(root, seed=3, **TINY)
    return discover(root, splits=("train",))


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_same_seed_same_model_on_cpu(tiny_clips):
    """Two trainings with the same seed give bit-identical weights, loss state and history."""
    runs = [train_model(tiny_clips, tiny_config(epochs=1), progress=False) for _ in range(2)]
    (m1, l1, e1, h1), (m2, l2, e2, h2) = runs
    _assert_same_state(_state(m1), _state(m2))
    _assert_same_state(_state(l1), _state(l2))
    assert e1.classes_ == e2.classes_
    assert [h["loss"] for h in h1] == [h["loss"] for h in h2]
    # ... and a different seed gives a different model (the test could not pass by accident)
    m3 = train_model(tiny_clips, tiny_config(epochs=1, seed=1), progress=False)[0]
    assert not torch.equal(m1.state_dict()["spectrum_branch.embed.weight"],
                           m3.state_dict()["spectrum_branch.embed.weight"])


def test_history_and_scale(tiny_clips):
    model, loss, enc, hist = train_model(tiny_clips, tiny_config(epochs=2), progress=False)
    assert len(enc) == len({(c.machine_type, c.section, c.attributes, c.domain) for c in tiny_clips})
    assert [h["epoch"] for h in hist] == [1, 2]
    assert [h["step"] for h in hist] == [5, 10]  # 20 clips / batch 4
    assert all(np.isfinite(h["loss"]) and h["clips_per_second"] > 0 for h in hist)
    # the adaptive scale moved away from its initial value sqrt(2) * ln(C*K - 1)
    initial = np.sqrt(2) * np.log(len(enc) * loss.n_subclusters - 1)
    assert abs(float(loss.scale) - initial) > 1e-4
    assert not model.training and not loss.training


class _Interrupt(Exception):
    pass


def test_resume_equals_uninterrupted(tiny_clips, tmp_path):
    """Interrupted in epoch 2, resumed from the epoch-1 checkpoint: the same final state as a
    run without interruption (exact equality on CPU)."""
    cfg = tiny_config(epochs=3)
    full = train_model(tiny_clips, cfg, out_dir=tmp_path / "full", progress=False)

    def stop(step, model, loss):
        if step == 7:  # inside epoch 2 (5 steps per epoch)
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_model(tiny_clips, cfg, out_dir=tmp_path / "cut", progress=False, step_callback=stop)
    ckpt = load_checkpoint(checkpoint_path(tmp_path / "cut"))
    assert ckpt["epoch"] == 1 and ckpt["step"] == 5
    resumed = train_model(tiny_clips, cfg, out_dir=tmp_path / "cut", resume=True, progress=False)
    _assert_same_state(_state(full[0]), _state(resumed[0]))
    _assert_same_state(_state(full[1]), _state(resumed[1]))  # centers and scale
    assert [h["loss"] for h in full[3]] == [h["loss"] for h in resumed[3]]
    # the final checkpoints agree too (optimizer state included)
    a, b = (load_checkpoint(checkpoint_path(tmp_path / d)) for d in ("full", "cut"))
    assert a["epoch"] == b["epoch"] == 3
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg"], b["optimizer"]["state"][k]["exp_avg"])


def test_resume_can_extend_training(tiny_clips, tmp_path):
    """A finished run resumed with more epochs continues where it stopped (same as a longer run)."""
    longer = train_model(tiny_clips, tiny_config(epochs=2), out_dir=tmp_path / "a", progress=False)
    train_model(tiny_clips, tiny_config(epochs=1), out_dir=tmp_path / "b", progress=False)
    extended = train_model(tiny_clips, tiny_config(epochs=2), out_dir=tmp_path / "b", resume=True,
                           progress=False)
    _assert_same_state(_state(longer[0]), _state(extended[0]))


def test_resume_refuses_other_settings(tiny_clips, tmp_path):
    train_model(tiny_clips, tiny_config(epochs=1), out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="learning_rate"):
        train_model(tiny_clips, tiny_config(epochs=2, learning_rate=5e-4), out_dir=tmp_path,
                    resume=True, progress=False)


class _Evil:
    """Unpickling this would create a marker file: a checkpoint loader must never do it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_loading_never_unpickles(tiny_clips, tmp_path):
    train_model(tiny_clips, tiny_config(epochs=1), out_dir=tmp_path, progress=False)
    path = checkpoint_path(tmp_path)
    # the real checkpoint holds plain data only: the restricted loader reads it
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["format"] == "fastasd.checkpoint" and ckpt["epoch"] == 1
    # a checkpoint with a pickled object is refused, and the object is never built
    marker = tmp_path / "pwned"
    torch.save({"format": "fastasd.checkpoint", "version": 1, "evil": _Evil(str(marker))}, path)
    with pytest.raises(ValueError, match="member_0.pt"):
        load_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(ValueError, match="member_0.pt"):
        train_model(tiny_clips, tiny_config(epochs=1), out_dir=tmp_path, resume=True, progress=False)
    assert not marker.exists()
    # a plain pickle (not a torch zip file) is refused as well
    path.write_bytes(pickle.dumps({"format": "fastasd.checkpoint"}))
    with pytest.raises(ValueError, match="member_0.pt"):
        load_checkpoint(path)


def test_train_help_lists_every_config_field(capsys):
    from fastasd.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for name, *_ in Config.fields_help():
        assert "--" + name.replace("_", "-") in text, name
    for opt in ("--out", "--resume", "--preset", "--ground-truth", "DATA_ROOT"):
        assert opt in text


def test_train_cli_config_parsing():
    import argparse

    from fastasd.cli.train import add_cli_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_cli_arguments(p)
    args = p.parse_args(["root", "--out", "m", "--preset", "standard", "--epochs", "3",
                         "--use-bias", "false", "--channel", "none", "--learning-rate", "5e-4"])
    cfg = config_from_args(args)
    assert cfg.epochs == 3 and cfg.use_bias is False and cfg.channel is None
    assert cfg.learning_rate == 5e-4 and cfg.backend == "gmm"  # the rest from the preset
    assert config_from_args(p.parse_args(["root", "--out", "m"])) == Config()  # paper defaults


def test_train_cli_end_to_end(tiny_clips, tmp_path):
    """``fastasd train`` in-process: writes a loadable model; bad settings exit with status 2."""
    from fastasd.cli import main

    root = os.path.dirname(os.path.dirname(os.path.dirname(tiny_clips[0].path)))
    out = tmp_path / "model"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["train", root, "--out", str(out), "--preset", "demo", "--clip-seconds", "0.5",
                   "--batch-size", "4", "--epochs", "1", "--device", "cpu", "--no-progress"])
    assert rc == 0, buf.getvalue()
    assert "saved to" in buf.getvalue()
    assert (out / "manifest.json").is_file() and checkpoint_path(out).is_file()
    assert main(["train", root, "--out", str(out), "--epochs", "0"]) == 2


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "known gap (issue 3): on our synthetic data the paper's system does not beat the "
    "mean-spectrum baseline within a CPU budget; measured 2026-11-24 on CPU, seed 0, demo set: "
    "model 0.577 vs baseline 0.672 official score (benchmarks/results/demo_cpu.md, "
    "steps_curve_cpu.md, steps_curve_bn-recal.md, steps_curve_backends.md). strict: once a "
    "preset beats the baseline this XPASS fails, and the marker must go."))
def test_training_beats_baseline(tmp_path):
    """End to end on a small synthetic set: the demo preset's model must beat the simple
    baseline's official score by at least MARGIN (absolute, in score units of [0, 1]).

    Seeded data and training.
    """
    pytest.importorskip("fastasd.baseline", reason="fastasd.baseline not available")
    from fastasd import api
    from fastasd.cli.demo import DEMO_SYNTH, baseline_evaluation, evaluate_detector

    MARGIN = 0.03
    root = tmp_path / "data"
    generate(root, seed=0, **DEMO_SYNTH)
    det = api.train(root, config="demo", device="cpu", progress=False)
    model_score = evaluate_detector(det, root).official_score
    base_score = baseline_evaluation(root).official_score
    assert model_score >= base_score + MARGIN, (model_score, base_score)
