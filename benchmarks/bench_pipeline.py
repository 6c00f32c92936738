"""End-to-end benchmarks: ours (``FASTASD_BACKEND=native``) vs the reference
(``FASTASD_BACKEND=reference``), switched per test by the ``backend_switch`` fixture of conftest.py.

* ``train_step``: one optimizer step of the paper's system at batch 64 on 10-s clips: mixup,
  the real :class:`fastasd.model.EmbeddingNet` (both branches, concatenated 256-d embedding),
  :class:`fastasd.loss.SubclusterAdaCos` (342 classes x 16), the L2 term, backward, Adam.
* ``train_epoch``: :func:`fastasd.training.train_model` for one epoch on a small synthetic DCASE set
  of WAV files (decode, shuffling, mixup, steps; a fresh model each call).
* ``score_wav``: :func:`fastasd.scoring.score_inputs` on a synthetic DCASE root of WAV files
  (discovery, decode in the default worker setup, model, cosine backend); reported as clips/s.
  The detector has untrained weights (timing does not depend on them), fitted backends. Ours
  embeds with the network fused for inference (``Detector.inference_model``, fastasd/inference.py);
  the reference, under ``FASTASD_BACKEND=reference``, with the plain ``EmbeddingNet``.

Providers, with the precision as an axis: ``reference-eager`` (float32, plain network and
reference operators), ``ours`` (float32: fused network for scoring), ``ours-bf16`` (bfloat16:
the fused network's convolutions in bfloat16 for scoring, ``precision="bfloat16"``; bfloat16
autocast with channels-last weights for training, as ``mixed_precision`` does on CPU). Each row
records its network FLOPs (convolutions and matmuls, ``torch.utils.flop_counter``) so that
run.py can set a compute floor from the float32 or the bfloat16 matmul ceiling.

The synthetic sets are band-limited noise written as 16-bit PCM WAV with DCASE 2022 names
(decoding cost does not depend on the content). Each provider is checked on a small call first:
ours must run a native kernel (else skipped), the reference none (else failed).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness import (OURS, OURS_BF16, REF_EAGER, Policy, check_pipeline_provider, clone_module,
                     describe_case, for_op, make_generator, ops_provider)
from sizes import CLIP_SAMPLES, N_CLASSES, N_SUB, PIPELINE_CASES

CASES = PIPELINE_CASES
SAMPLE_RATE = 16000

# Synthetic sets per case size: (machine types, sections, source train, target train, test) per section.
DATASETS = {
    64: (("fan", "pump"), 1, 28, 4, 32),               # 64 train clips, 64 test clips
    512: (("fan", "pump", "gearbox", "valve"), 2, 60, 4, 64),
    1024: (("fan", "pump", "gearbox", "valve"), 2, 60, 4, 128),
}


def providers(device: str) -> list[str]:
    return [REF_EAGER, OURS, OURS_BF16]


def precision_of(provider: str) -> str:
    return "bfloat16" if provider == OURS_BF16 else "float32"


_FLOPS: dict = {}


def network_flops(train: bool) -> float:
    """Convolution and matmul FLOPs per 10-s clip of the paper's network: a forward in eval
    mode (scoring) or a forward + backward (a training step; the loss's matmul not counted)."""
    if train not in _FLOPS:
        from torch.utils.flop_counter import FlopCounterMode

        from fastasd.model import EmbeddingNet

        model = EmbeddingNet(_paper_config(torch.device("cpu"))).train(train)
        x = torch.rand(2, CLIP_SAMPLES, generator=torch.Generator().manual_seed(0)) * 0.1
        with FlopCounterMode(display=False) as counter:
            if train:
                model(x).sum().backward()
            else:
                with torch.no_grad():
                    model(x)
        _FLOPS[train] = counter.get_total_flops() / 2
    return _FLOPS[train]


def pipeline_policy(op: str, device: torch.device, quick: bool) -> Policy:
    """Few rounds on CPU (a 10-s-clip training step at batch 64 takes seconds there)."""
    if quick:
        return Policy(warmup=0, min_rounds=1, max_rounds=1, budget_s=0.0)
    cuda = device.type == "cuda"
    rounds = {"train_step": 20 if cuda else 3, "train_epoch": 3 if cuda else 2,
              "score_wav": 5 if cuda else 3}[op]
    return Policy(warmup=2 if cuda and op == "train_step" else 0, min_rounds=rounds,
                  max_rounds=rounds, budget_s=0.0)


def write_dcase_set(root, machine_types, sections: int, n_source: int, n_target: int, n_test: int,
                    seed: int = 0) -> int:
    """Write ``<root>/<mt>/{train,test}/section_<ss>_<domain>_<split>_<label>_<nnnn>_<attrs>.wav``
    (10-s band-limited noise, 16-bit PCM); returns the number of files."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    count = 0

    def clip() -> np.ndarray:
        x = rng.standard_normal(CLIP_SAMPLES).astype(np.float32)
        x = np.convolve(x, np.ones(8, np.float32) / 8, mode="same")  # a little colour
        return 0.1 * x / (np.abs(x).max() + 1e-9)

    for mt in machine_types:
        for s in range(sections):
            files = [("train", "source", "normal", i, f"spd_{i % 3}") for i in range(n_source)]
            files += [("train", "target", "normal", i, "spd_9") for i in range(n_target)]
            files += [("test", ("source", "target")[i % 2], ("normal", "anomaly")[(i // 2) % 2], i,
                       f"spd_{i % 3}") for i in range(n_test)]
            for split, domain, label, i, attrs in files:
                d = root / mt / split
                d.mkdir(parents=True, exist_ok=True)
                name = f"section_{s:02d}_{domain}_{split}_{label}_{i:04d}_{attrs}.wav"
                sf.write(d / name, clip(), SAMPLE_RATE, subtype="PCM_16")
                count += 1
    return count


_DATA: dict = {}
_DETECTORS: dict = {}


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """``get(clips) -> root``: the synthetic set for a case size, written once per session."""
    def get(clips: int):
        if clips not in _DATA:
            root = tmp_path_factory.mktemp(f"dcase{clips}")
            mts, sections, n_src, n_tgt, n_test = DATASETS[clips]
            write_dcase_set(root, mts, sections, n_src, n_tgt, n_test)
            _DATA[clips] = root
        return _DATA[clips]
    return get


def _paper_config(device: torch.device):
    from fastasd.config import Config

    return Config(ensemble_size=1, num_workers=0, device=str(device))


def _train_probe(model, loss_mod, device):
    """A forward + loss + backward on 2 clips with copies (the benchmarked state is untouched)."""
    m, lm = clone_module(model), clone_module(loss_mod)
    gen = make_generator(device, 7)
    x = (torch.rand(2, CLIP_SAMPLES, generator=gen, device=device) * 2 - 1) * 0.1
    y = torch.nn.functional.one_hot(torch.tensor([0, 1], device=device), lm.n_classes).float()
    return lambda: lm(m(x).float(), y).backward()


@for_op("train_step")
def test_train_step(case, provider, device, quick, runner, benchmark):
    from fastasd.loss import SubclusterAdaCos, mixup
    from fastasd.model import EmbeddingNet, l2_penalty

    cfg = _paper_config(device)
    B = case.params["B"]
    bf16 = provider == OURS_BF16
    describe_case(benchmark, case, provider, items_per_call=B, items="clips",
                  precision=precision_of(provider), flops=B * network_flops(True))
    torch.manual_seed(0)
    model = EmbeddingNet(cfg).to(device)
    if bf16 and device.type == "cpu":  # as train_model with mixed_precision on CPU
        model.to(memory_format=torch.channels_last)
    loss_mod = SubclusterAdaCos(model.embedding_dim, N_CLASSES, N_SUB,
                                generator=torch.Generator().manual_seed(1)).to(device)
    params = list(model.parameters()) + [p for p in loss_mod.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.learning_rate, eps=cfg.adam_eps)
    gen = make_generator(device, 0)
    waves = (torch.rand(B, cfg.num_samples, generator=gen, device=device) * 2 - 1) * 0.1
    labels = torch.nn.functional.one_hot(
        torch.randint(0, N_CLASSES, (B,), generator=gen, device=device), N_CLASSES).float()
    mix_gen = torch.Generator().manual_seed(2)  # CPU generator, as train_model
    model.train()
    loss_mod.train()

    def step(w, y):  # the body of train_model's loop (bfloat16 autocast for ours-bf16 only)
        w, y = mixup(w, y, mix_gen, label_rule=cfg.mixup_label)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            emb = model(w)
        loss = loss_mod(emb.float(), y)
        if cfg.l2 > 0:
            loss = loss + cfg.l2 * l2_penalty(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    native = check_pipeline_provider(provider, _train_probe(model, loss_mod, device), device)
    benchmark.extra_info.update(native_ops=native)
    runner.run(step, [(waves, labels)], pipeline_policy(case.op, device, quick), cuda_extras=False)


@for_op("train_epoch")
def test_train_epoch(case, provider, device, quick, runner, benchmark, dataset):
    from fastasd.data.layout import discover
    from fastasd.loss import SubclusterAdaCos
    from fastasd.model import EmbeddingNet
    from fastasd.training import train_model

    n = case.params["clips"]
    root = dataset(n)
    clips = discover(root, splits=("train",))
    assert len(clips) == n, f"synthetic set has {len(clips)} training clips, expected {n}"
    cfg = _paper_config(device).replace(epochs=1, mixed_precision=provider == OURS_BF16)
    if provider == OURS_BF16 and device.type == "cpu":
        from fastasd.precision import cpu_prefers_bfloat16

        if not cpu_prefers_bfloat16():
            pytest.skip("ours-bf16: this CPU computes bfloat16 no faster (fastasd.precision), so "
                        "train_model trains in float32: it would repeat ours")
    describe_case(benchmark, case, provider, items_per_call=n, items="clips",
                  batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                  precision=precision_of(provider), flops=n * network_flops(True))
    torch.manual_seed(0)
    probe_model = EmbeddingNet(cfg).to(device).train()
    probe_loss = SubclusterAdaCos(probe_model.embedding_dim, 8, N_SUB).to(device).train()

    def epoch():
        train_model(clips, cfg, device=device, progress=False)

    native = check_pipeline_provider(provider, _train_probe(probe_model, probe_loss, device), device)
    benchmark.extra_info.update(native_ops=native)
    runner.run(epoch, [()], pipeline_policy(case.op, device, quick), first_call=False,
               cuda_extras=False)


def _detector(root, device):
    """A detector with untrained (seeded) weights and backends fitted on the set's training clips."""
    key = (str(root), str(device))
    if key not in _DETECTORS:
        from fastasd.api import fit_detector
        from fastasd.data.labels import ClassEncoder
        from fastasd.data.layout import discover
        from fastasd.model import EmbeddingNet

        cfg = _paper_config(device)
        train = discover(root, splits=("train",))
        enc = ClassEncoder().fit(train)
        torch.manual_seed(0)
        model = EmbeddingNet(cfg).eval()
        with ops_provider(REF_EAGER):  # the same detector for both providers, whatever is built
            _DETECTORS[key] = fit_detector(cfg, [model], enc, train, device=device, progress=False)
    return _DETECTORS[key]


@for_op("score_wav")
def test_score_wav(case, provider, device, quick, runner, benchmark, dataset):
    from fastasd.scoring import default_num_workers, score_inputs

    n = case.params["clips"]
    root = dataset(n)
    precision = precision_of(provider)
    describe_case(benchmark, case, provider, items_per_call=n, items="clips", batch_size=64,
                  num_workers=default_num_workers(device.type == "cuda"), precision=precision,
                  flops=n * network_flops(False))
    try:
        det = _detector(root, device)
    except Exception as e:
        pytest.fail(f"could not build a detector: {type(e).__name__}: {e}")
    mt, sec = sorted(det.known_sections)[0]
    probe_x = (torch.rand(2, CLIP_SAMPLES, generator=make_generator(torch.device("cpu"), 7)) * 2 - 1) * 0.1

    def score():
        records = score_inputs(det, [str(root)], batch_size=64, progress=False, precision=precision)
        if len(records) != n:
            raise AssertionError(f"scored {len(records)} clips, expected {n}")

    native = check_pipeline_provider(
        provider, lambda: det.score_waveforms(probe_x, [mt, mt], [sec, sec], precision=precision), device)
    benchmark.extra_info.update(native_ops=native)
    runner.run(score, [()], pipeline_policy(case.op, device, quick), cuda_extras=False)
