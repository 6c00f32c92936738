"""FeatEx feature exchange (Wilkinghoff, ICASSP 2024): the exchange and its labels against the
definition, its rows in data-parallel shares, and training with it (and with AdaProj and other
auxiliary classes): resume, refusal of other settings, mixup off, ensembles, and a saved model
that loads and scores through the fused path exactly like a model trained without it."""
from __future__ import annotations

import pytest
import torch

from fastasd.config import Config
from fastasd.data.layout import discover
from fastasd.data.synth import generate
from fastasd.loss import AdaProj, FeatEx, SubclusterAdaCos, feature_exchange
from fastasd.reference import adacos_initial_scale
from fastasd.training import checkpoint_path, load_checkpoint, train_model
from fastasd.training.distributed import mirrored_positions

from tiny import TINY, tiny_config  # tests/tiny.py

OPTIONS = dict(featex_prob=0.5, loss="adaproj", adaproj_dim=8)


def _batch(B=7, D=6, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g, dtype=torch.float64), torch.eye(C, dtype=torch.float64)[torch.arange(B) % C]


def test_exchange_and_labels_follow_the_definition():
    e, y = _batch()
    x, y3 = feature_exchange(e, y, 2, 1.0)  # prob 1: every clip but the middle one (its own partner)
    for b in range(7):
        p = 6 - b
        if b == 3:
            assert torch.equal(x[b], e[b]) and torch.equal(y3[b], torch.cat([y[b], 0 * y[b], 0 * y[b]]))
        else:
            assert torch.equal(x[b], torch.cat([e[b, :2], e[p, 2:]]))
            assert torch.equal(y3[b], torch.cat([0 * y[b], 0.5 * y[b], 0.5 * y[p]]))
    x0, y0 = feature_exchange(e, y, 2, 0.0)
    assert torch.equal(x0, e) and torch.equal(y0, torch.cat([y, 0 * y, 0 * y], dim=1))
    # prob 0.5: about half of many clips, drawn from the generator (the same draw, the same rows)
    e, y = _batch(B=400)
    a = feature_exchange(e, y, 2, 0.5, torch.Generator().manual_seed(3))
    b = feature_exchange(e, y, 2, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    share = float(a[1][:, 3:].sum(1).gt(0).double().mean())
    assert 0.4 < share < 0.6
    with pytest.raises(ValueError, match="split"):
        feature_exchange(e, y, 6, 0.5)


def test_exchange_of_a_share_equals_those_rows_of_the_whole_batch():
    e, y = _batch(B=9)
    full = feature_exchange(e, y, 3, 0.5, torch.Generator().manual_seed(1))
    for world in (2, 3):
        for r in range(world):
            pos = mirrored_positions(9, r, world)
            part = feature_exchange(e[pos], y[pos], 3, 0.5, torch.Generator().manual_seed(1),
                                    positions=pos, batch_size=9)
            assert torch.equal(part[0], full[0][pos]) and torch.equal(part[1], full[1][pos])


@pytest.mark.parametrize("head_cls", [SubclusterAdaCos, AdaProj])
def test_featex_loss_is_the_weighted_head_loss(head_cls):
    e, y = _batch()
    head = head_cls(6, 9, 2)
    fx = FeatEx(head, 2, 0.5, weight=0.25).eval()
    x, y3 = feature_exchange(e, y, 2, 0.5, torch.Generator().manual_seed(4))
    got = fx(e, y, torch.Generator().manual_seed(4))
    assert float(got) == pytest.approx(0.25 * float(head(x.float(), y3.float())), rel=1e-6)
    with pytest.raises(ValueError, match="3 x"):
        fx(e, torch.eye(4, dtype=torch.float64)[torch.arange(7) % 4])
    with pytest.raises(ValueError, match="3 \\* C"):
        FeatEx(head_cls(6, 4, 2), 2, 0.5)


def test_config_fields_and_their_checks():
    cfg = Config().replace(featex_prob=0.5, loss="adaproj", aux_classes="no_attributes")
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert Config().featex_prob == 0 and Config().loss == "subcluster_adacos" and Config().aux_classes == "paper"
    for bad in (dict(representation="spectrum"), dict(combine="add")):
        with pytest.raises(ValueError, match="featex_prob"):
            Config(featex_prob=0.5, **bad)
    with pytest.raises(ValueError, match="featex_prob"):
        Config(featex_prob=1.5)
    with pytest.raises(ValueError, match="aux_classes"):
        Config(aux_classes="speed")
    assert Config.preset("paper") == Config()  # the paper preset never turns anything on


# --------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_featex")
    generate(root, seed=3, **TINY)
    return root


@pytest.fixture(scope="module")
def tiny_clips(tiny_root):
    return discover(tiny_root, splits=("train",))


def _state(m) -> dict:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_options_change_training_and_off_is_the_paper(tiny_clips):
    paper = train_model(tiny_clips, tiny_config(epochs=1), progress=False)
    off = train_model(tiny_clips, tiny_config(epochs=1, featex_prob=0.0), progress=False)
    _same(_state(paper[0]), _state(off[0]))  # FeatEx off draws nothing: the paper's training
    model, loss, enc, _h = train_model(tiny_clips, tiny_config(epochs=1, **OPTIONS), progress=False)
    assert isinstance(loss, AdaProj) and isinstance(loss.featex.head, AdaProj)
    assert loss.featex.head.n_classes == 3 * len(enc) and loss.featex.head.centers.requires_grad
    assert not torch.equal(paper[0].state_dict()["spectrum_branch.embed.weight"],
                           model.state_dict()["spectrum_branch.embed.weight"])
    # the network is the same as the paper's: the same parameters, nothing of FeatEx in it
    assert paper[0].state_dict().keys() == model.state_dict().keys()
    # other auxiliary classes
    enc2 = train_model(tiny_clips, tiny_config(epochs=1, aux_classes="section"), progress=False)[2]
    assert len(enc2) == len({(c.machine_type, c.section) for c in tiny_clips}) and enc2.aux_classes == "section"


def test_featex_without_mixup_and_with_subcluster_adacos(tiny_clips):
    _m, loss, _e, hist = train_model(tiny_clips, tiny_config(epochs=1, mixup=False, featex_prob=1.0),
                                     progress=False)
    assert isinstance(loss.featex.head, SubclusterAdaCos)
    h = loss.featex.head
    assert float(h.scale) != pytest.approx(adacos_initial_scale(h.n_classes * h.n_subclusters), rel=1e-4)
    assert all(torch.isfinite(torch.tensor(x)) for x in hist[0]["losses"])


class _Interrupt(Exception):
    pass


def test_resume_with_the_options_equals_uninterrupted(tiny_clips, tmp_path):
    """The FeatEx head (centers, scale, optimizer state) and its random draws are checkpointed:
    interrupted in epoch 2 and resumed, the run ends exactly as one without interruption."""
    cfg = tiny_config(epochs=3, **OPTIONS)
    full = train_model(tiny_clips, cfg, out_dir=tmp_path / "full", progress=False)

    def stop(step, model, loss):
        if step == 7:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_model(tiny_clips, cfg, out_dir=tmp_path / "cut", progress=False, step_callback=stop)
    ckpt = load_checkpoint(checkpoint_path(tmp_path / "cut"))
    assert any(k.startswith("featex.head.") for k in ckpt["loss"])
    resumed = train_model(tiny_clips, cfg, out_dir=tmp_path / "cut", resume=True, progress=False)
    _same(_state(full[0]), _state(resumed[0]))
    _same(_state(full[1]), _state(resumed[1]))  # main and FeatEx head: centers and scales
    assert [h["loss"] for h in full[3]] == [h["loss"] for h in resumed[3]]


@pytest.mark.parametrize("other", [dict(featex_prob=0.25), dict(loss="subcluster_adacos"),
                                   dict(aux_classes="no_domain"), dict(adaproj_dim=4)])
def test_resume_refuses_other_options(tiny_clips, tmp_path, other):
    train_model(tiny_clips, tiny_config(epochs=1, **OPTIONS), out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=list(other)[0]):
        train_model(tiny_clips, tiny_config(epochs=2, **{**OPTIONS, **other}), out_dir=tmp_path,
                    resume=True, progress=False)


def test_ensemble_saves_loads_and_scores_through_the_fused_path(tiny_root, tmp_path):
    import fastasd
    from fastasd.inference import FusedEmbeddingNet

    cfg = tiny_config(ensemble_size=2, aux_classes="no_attributes", **OPTIONS)
    det = fastasd.train(tiny_root, out_dir=tmp_path / "m", config=cfg, progress=False)
    loaded = fastasd.load(tmp_path / "m")
    assert loaded.config == cfg and loaded.encoder.aux_classes == "no_attributes"
    assert isinstance(loaded.inference_model(1), FusedEmbeddingNet)
    a, b = det.score(tiny_root), loaded.score(tiny_root)
    assert [r["file"] for r in a] == [r["file"] for r in b]
    for ra, rb in zip(a, b):
        assert rb["score"] == pytest.approx(ra["score"], rel=1e-5, abs=1e-6)


def test_the_split_is_between_the_spectrum_and_the_spectrogram_branch():
    """FeatEx keeps ``emb[:, :embedding_dim]`` and exchanges the rest: the first half must be the
    spectrum branch's embedding and the second the spectrogram branch's."""
    from fastasd.model import EmbeddingNet

    cfg = tiny_config(embedding_dim=8)
    model = EmbeddingNet(cfg).eval()
    x = torch.randn(3, cfg.num_samples)
    with torch.no_grad():
        spec, spectrum = model.frontend(x)
        emb = model(x)
        torch.testing.assert_close(emb[:, :8], model.spectrum_branch(spectrum))
        torch.testing.assert_close(emb[:, 8:], model.spectrogram_branch(spec))
