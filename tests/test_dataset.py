"""ClipDataset (streaming, cache) and the fault-tolerant batch reader."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from fastasd.data.audio import AudioError
from fastasd.data.dataset import ClipDataset, iter_audio_batches, read_clip
from fastasd.data.labels import ClassEncoder
from fastasd.data.layout import discover

SR = 16000
N = 1600  # 0.1 s


@pytest.fixture()
def clips(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for i in range(5):
        for domain in ("source", "target"):
            path = root / "fan" / "train" / f"section_00_{domain}_train_normal_{i:04d}_a_{i % 2}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            # different lengths: cropped or padded to N
            sf.write(path, rng.uniform(-0.5, 0.5, N - 100 + 50 * i).astype(np.float32), SR, subtype="FLOAT")
    return discover(root)


def test_clip_dataset_items(clips):
    enc = ClassEncoder().fit(clips)
    ds = ClipDataset(clips, N, encoder=enc)
    assert len(ds) == 10
    x, y = ds[3]
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (N,)
    assert y == int(enc.transform([clips[3]])[0])
    np.testing.assert_array_equal(x.numpy(), read_clip(clips[3], N))
    assert ds[-1][1] == ds[9][1]
    assert ClipDataset(clips, N)[0][1] == -1
    batch_x, batch_y = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch_x.shape == (4, N) and batch_y.dtype == torch.int64


def test_clip_dataset_cache(clips):
    plain = ClipDataset(clips, N)
    cached = ClipDataset(clips, N, cache=True)
    first = [cached[i][0].clone() for i in range(len(cached))]
    for c in clips:  # from now on only the cache can answer
        os.remove(c.path)
    for i in range(len(cached)):
        x = cached[i][0]
        assert torch.equal(x, first[i])
        x.zero_()  # changing a returned tensor must not change the cache
        assert torch.equal(cached[i][0], first[i])
    with pytest.raises(AudioError, match="section_00_source_train_normal_0000"):
        plain[0]


def test_clip_dataset_unknown_class(clips):
    enc = ClassEncoder().fit(clips[:2])
    with pytest.raises(KeyError):
        ClipDataset(clips, N, encoder=enc)


@pytest.mark.parametrize("num_workers,executor", [(0, "thread"), (2, "thread"), (2, "process")])
def test_iter_audio_batches_skips_bad_files(clips, tmp_path, caplog, num_workers, executor):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(1).bytes(3000))
    missing = tmp_path / "missing.wav"
    items = [clips[0], str(corrupt), clips[1], clips[2], str(missing), clips[3], clips[4]]
    errors: list = []
    with caplog.at_level(logging.WARNING, logger="fastasd.data.dataset"):
        batches = list(iter_audio_batches(items, 2, N, errors=errors, num_workers=num_workers,
                                          executor=executor, progress=True))
    assert [idx for idx, _ in batches] == [[0, 2], [3, 5], [6]]  # full batches, order kept
    for idx, wave in batches:
        assert wave.dtype == np.float32 and wave.shape == (len(idx), N)
        for j, i in enumerate(idx):
            np.testing.assert_array_equal(wave[j], read_clip(items[i], N))
    assert [p for p, _ in errors] == [str(corrupt), str(missing)]
    assert "file not found" in errors[1][1]
    assert "corrupt.wav" in caplog.text and "missing.wav" in caplog.text
    assert "skipped 2 of 7" in caplog.text


def test_iter_audio_batches_stops_early_cleanly(clips):
    gen = iter_audio_batches(clips, 3, N, num_workers=2)
    idx, _ = next(gen)
    assert idx == [0, 1, 2]
    gen.close()  # shuts the pool down without reading the rest
    with pytest.raises(ValueError):
        next(iter_audio_batches(clips, 0, N))
