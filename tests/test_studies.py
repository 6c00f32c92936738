"""The study scripts' own helpers (benchmarks/studies.py)."""
import importlib.util
from pathlib import Path

import numpy as np
import torch

from fastasd.model import EmbeddingNet
from tiny import tiny_config

_SPEC = importlib.util.spec_from_file_location(
    "studies", Path(__file__).resolve().parents[1] / "benchmarks" / "studies.py")
studies = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(studies)


def test_recalibrated_batchnorm_averages_batch_statistics():
    """The re-estimated input BatchNorm holds the equal-weight mean of the per-batch means and
    (unbiased) variances of the normalized spectrogram over the full batches of the shuffled pass;
    the weights and the original model are untouched. Tolerance 1e-5 relative (float32 sums)."""
    cfg = tiny_config()
    torch.manual_seed(0)
    model = EmbeddingNet(cfg).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    waves = np.random.default_rng(1).standard_normal((11, cfg.num_samples)).astype(np.float32)
    recal = studies.recalibrated_batchnorm(model, waves, batch=4, seed=3)

    order = np.random.default_rng(3).permutation(11)[:8]  # two full batches; the last 3 are left out
    means, variances = [], []
    with torch.no_grad():
        for part in (order[:4], order[4:8]):
            spec, _ = model.frontend(torch.from_numpy(waves[part]))
            x = spec.squeeze(1)  # [B, T, F]: statistics over batch and time, per bin
            means.append(x.mean(dim=(0, 1)))
            variances.append(x.var(dim=(0, 1), unbiased=True))
    bn = recal.spectrogram_branch.input_bn
    torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, torch.stack(variances).mean(0), rtol=1e-5, atol=1e-6)
    assert not recal.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for name, p in recal.named_parameters():
        assert torch.equal(p, dict(model.named_parameters())[name]), name


def test_backend_variants_are_evaluated_on_the_same_embeddings(tmp_path):
    """evaluate_model with backend variants: the configured result is unchanged, and each variant
    equals a separate evaluation with that backend (same model, same embeddings)."""
    from fastasd.data.synth import generate
    from tiny import TINY

    generate(tmp_path, seed=3, **TINY)
    cfg = tiny_config()
    data = (studies.load_split(tmp_path, "train", cfg), studies.load_split(tmp_path, "test", cfg))
    torch.manual_seed(0)
    model = EmbeddingNet(cfg).eval()
    variants = {"gmm": {"backend": "gmm", "gmm_components": 2}, "all": {"kmeans_on": "all", "n_clusters": 3}}
    both = studies.evaluate_model(model, cfg, data, variants)
    alone = studies.evaluate_model(model, cfg, data)
    assert both["official"] == alone["official"] and both["paper"] == alone["paper"]
    assert set(both["backends"]) == set(variants)
    for name, over in variants.items():
        direct = studies.evaluate_model(model, cfg.replace(**over), data)
        assert both["backends"][name]["official"] == direct["official"], name
        assert both["backends"][name]["paper"] == direct["paper"], name
    assert "backends" not in alone


def test_dumped_embeddings_give_the_same_figures(tmp_path):
    """steps --dump-embeddings + the backends study: a dump reloads (no pickle) into the same
    clips and embeddings, and evaluating a backend on it equals evaluate_model's figures."""
    import argparse

    from fastasd.data.synth import generate
    from tiny import TINY

    generate(tmp_path / "data", seed=4, **TINY)
    cfg = tiny_config()
    data = (studies.load_split(tmp_path / "data", "train", cfg), studies.load_split(tmp_path / "data", "test", cfg))
    torch.manual_seed(1)
    model = EmbeddingNet(cfg).eval()
    variants = {"ld": {"score_normalization": "local_density", "references": "clips"}}
    direct = studies.evaluate_model(model, cfg, data, variants, dump=tmp_path / "emb" / "m_step1.npz")
    config, train_clips, tr, test_clips, te = studies.load_dump(tmp_path / "emb" / "m_step1.npz")
    assert config == cfg and len(tr) == len(data[0][0]) and len(te) == len(data[1][0])
    assert [c.file_name for c in test_clips] == [c.file_name for c in data[1][0]]
    args = argparse.Namespace(embeddings=[str(tmp_path / "emb")], data=None, note="dumped by a test",
                              backend_variant=["ld:score_normalization=local_density,references=clips"])
    out = studies.run_backends(args)
    res = out["dumps"]["m_step1.npz"]["results"]
    assert res["as dumped"]["official"] == direct["official"]
    assert res["ld"]["official"] == direct["backends"]["ld"]["official"]
    assert "| ld |" in out["markdown"] and "dumped by a test" in out["markdown"]
