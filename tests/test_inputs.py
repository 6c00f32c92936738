"""Input enumeration for batch scoring: folders, globs, list files, zip/tar archives, sharding.

The helpers at the top (:func:`build_dataset`) build a tiny DCASE-style data set as plain files
and as .zip, .tar and .tar.gz archives with a corrupt WAV, a non-audio member, a training clip
and hostile member names; tests/test_score.py scores the same data.
"""
from __future__ import annotations

import io
import os
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fastasd.data.inputs import (
    AudioSource,
    decode_source,
    describe,
    is_unsafe_member,
    iter_payloads,
    iter_sources,
    parse_section,
    parse_shard,
    resolve_shard,
    shard_sources,
)

SR = 16000
N = 3200  # 0.2 s clips keep the tests fast

# Good test clips (member paths, nested below top folders inside the archives).
GOOD = [
    "data/fan/test/section_00_source_test_normal_0000_a.wav",
    "data/fan/test/section_00_target_test_anomaly_0001_b.wav",
    "data/fan/test/section_00_0002.wav",
    "data/pump/test/section_01_source_test_normal_0000.wav",
    "data/pump/test/section_01_target_test_normal_0001.wav",
    "deep/nest/valve/test/section_00_source_test_anomaly_0003.wav",
    "loose/recording_0001.wav",
]
TRAIN = "data/fan/train/section_00_source_train_normal_0000_a.wav"
CORRUPT = "data/fan/test/section_00_source_test_normal_0099.wav"
NON_AUDIO = "data/notes.txt"
EVIL = ["../evil.wav", "/abs/evil.wav"]


def wav_bytes(seed: int, n: int = N) -> bytes:
    """A distinct short PCM-16 WAV (random noise of a seed-dependent level)."""
    rng = np.random.default_rng(seed)
    x = (0.05 + 0.05 * (seed % 7)) * rng.standard_normal(n)
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1, 1).astype(np.float32), SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


CORRUPT_BYTES = b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + b"\xff" * 40


def members() -> dict[str, bytes]:
    """Every archive member (name -> bytes) except the hostile ones."""
    out = {m: wav_bytes(k) for k, m in enumerate(GOOD)}
    out[TRAIN] = wav_bytes(100)
    out[CORRUPT] = CORRUPT_BYTES
    out[NON_AUDIO] = b"not audio\n"
    return out


def build_dataset(root: Path) -> dict[str, Path]:
    """Plain files under root/plain/ plus root/archives/{a.zip, b.tar, c.tar.gz} with the same
    members and two hostile ones (``../evil.wav``, ``/abs/evil.wav``)."""
    files = members()
    plain = root / "plain"
    for name, data in files.items():
        p = plain / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    arch = root / "archives"
    arch.mkdir(parents=True, exist_ok=True)
    evil = wav_bytes(666)
    with zipfile.ZipFile(arch / "a.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("data/fan/", b"")  # a directory entry
        for name in EVIL:
            z.writestr(name, evil)
    for fname, mode in (("b.tar", "w"), ("c.tar.gz", "w:gz")):
        with tarfile.open(arch / fname, mode) as t:
            for name, data in list(files.items()) + [(e, evil) for e in EVIL]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            link = tarfile.TarInfo("data/fan/test/link.wav")
            link.type = tarfile.SYMTYPE
            link.linkname = "section_00_0002.wav"
            t.addfile(link)
    return {"plain": plain, "zip": arch / "a.zip", "tar": arch / "b.tar", "tgz": arch / "c.tar.gz"}


@pytest.fixture
def dataset(tmp_path) -> dict[str, Path]:
    return build_dataset(tmp_path)


# Members an archive yields: the good clips, the corrupt one (only decoding finds it out); the
# training clip is skipped because the archive holds a DCASE layout (it has test/ folders).
EXPECTED_MEMBERS = sorted(GOOD + [CORRUPT])


# --------------------------------------------------------------------------- archives


@pytest.mark.parametrize("kind", ["zip", "tar", "tgz"])
def test_archive_members_metadata_and_skips(dataset, kind):
    stats = Counter()
    srcs = list(iter_sources(dataset[kind], stats=stats))
    arch = os.path.normpath(dataset[kind])
    # sorted by name; a compressed tar is streamed, so it keeps the archive's order
    order = [m for m in members() if m in EXPECTED_MEMBERS] if kind == "tgz" else EXPECTED_MEMBERS
    assert [s.name for s in srcs] == [f"{arch}::{m}" for m in order]
    assert stats["not audio"] == 1 and stats["training clip"] == 1 and stats["unsafe name"] == 2
    assert stats["not a regular file"] == (0 if kind == "zip" else 1)  # the tar symlink
    by = {s.member: s for s in srcs}
    s = by["data/fan/test/section_00_target_test_anomaly_0001_b.wav"]
    assert (s.machine_type, s.section, s.domain, s.label) == ("fan", "00", "target", "anomaly")
    assert s.file_name == "section_00_target_test_anomaly_0001_b.wav"
    s = by["data/fan/test/section_00_0002.wav"]
    assert (s.machine_type, s.section, s.domain, s.label) == ("fan", "00", "unknown", "unknown")
    s = by["deep/nest/valve/test/section_00_source_test_anomaly_0003.wav"]
    assert (s.machine_type, s.section) == ("valve", "00")
    s = by["loose/recording_0001.wav"]
    assert (s.machine_type, s.section, s.domain, s.label) == ("unknown",) * 4
    assert {s.kind for s in srcs} == {"zip" if kind == "zip" else "tar" if kind == "tar" else "tarstream"}
    # open() gives the member's exact bytes, from memory
    files = members()
    for src in srcs:
        with src.open() as f:
            assert f.read() == files[src.member]


def test_unsafe_members_reported_never_read(dataset, tmp_path):
    for kind in ("zip", "tgz"):
        srcs = [s for s in iter_sources(dataset[kind], include_unsafe=True) if s.problem]
        assert sorted(s.member for s in srcs) == sorted(EVIL)
        for s in srcs:
            assert s.problem.startswith("unsafe member name")
            with pytest.raises(ValueError, match="not read"):
                s.open()
            x, reason = decode_source(s, sample_rate=SR, num_samples=N)
            assert x is None and "unsafe" in reason
    assert not (tmp_path.parent / "evil.wav").exists() and not Path("/abs/evil.wav").exists()


@pytest.mark.parametrize("name,unsafe", [
    ("a/b.wav", False), ("a..b.wav", False), ("./a.wav", False), ("../a.wav", True), ("a/../../b.wav", True),
    ("/a.wav", True), ("\\a.wav", True), ("C:/a.wav", True), ("a\\..\\b.wav", True), ("", True),
])
def test_is_unsafe_member(name, unsafe):
    assert is_unsafe_member(name) is unsafe


def test_iter_payloads_streams_compressed_tar_in_order(dataset):
    srcs = list(iter_sources([dataset["tgz"], dataset["zip"]]))
    out = list(iter_payloads(srcs))
    assert [o[0] for o in out] == srcs
    files = members()
    for src, data, err in out:
        assert err is None
        if src.kind == "tarstream":
            assert data == files[src.member]
        else:
            assert data is None  # read by the decoder itself
    # a subset (as after sharding / resuming) still streams in order
    subset = srcs[1:5:2]
    assert [(s, d) for s, d, _ in iter_payloads(subset)] == [(s, files[s.member]) for s in subset]


def test_damaged_archives_are_reported(tmp_path, dataset):
    bad_zip = tmp_path / "bad.zip"
    bad_zip.write_bytes(b"PK\x03\x04 this is not a zip")
    cut_tgz = tmp_path / "cut.tar.gz"
    data = dataset["tgz"].read_bytes()
    cut_tgz.write_bytes(data[: len(data) // 2])
    srcs = list(iter_sources([bad_zip, cut_tgz], include_unsafe=True))
    problems = {s.name: s.problem for s in srcs if s.problem and not s.problem.startswith("unsafe")}
    assert set(problems) == {str(bad_zip), str(cut_tgz)}
    assert all(p.startswith("cannot read archive") for p in problems.values())


def test_decode_source_good_and_corrupt(dataset):
    srcs = {s.member: s for s in iter_sources(dataset["zip"])}
    x, reason = decode_source(srcs[GOOD[0]], sample_rate=SR, num_samples=N + 100)
    assert reason is None and x.dtype == np.float32 and x.shape == (N + 100,)
    assert np.all(x[N:] == 0)  # zero-padded at the end
    ref, _ = sf.read(io.BytesIO(wav_bytes(0)), dtype="float32")
    np.testing.assert_array_equal(x[:N], ref)
    x, reason = decode_source(srcs[CORRUPT], sample_rate=SR, num_samples=N)
    assert x is None and "cannot read audio" in reason


# --------------------------------------------------------------------------- folders, globs, lists


def test_dcase_root_folder_gives_test_clips_only(dataset):
    root = dataset["plain"] / "data"  # a DCASE root: fan/, pump/ with train/ and test/
    srcs = list(iter_sources(root))
    names = [os.path.relpath(s.name, dataset["plain"]) for s in srcs]
    assert names == sorted(m for m in GOOD + [CORRUPT] if m.startswith("data/"))
    assert all(s.kind == "file" for s in srcs)
    fan = next(s for s in srcs if s.name.endswith("anomaly_0001_b.wav"))
    assert (fan.machine_type, fan.section, fan.domain, fan.label) == ("fan", "00", "target", "anomaly")
    # a machine-type folder too
    assert [s.name for s in iter_sources(root / "pump")] == [s.name for s in srcs if "/pump/" in s.name]


def test_plain_folder_is_recursive_and_counts_non_audio(dataset):
    stats = Counter()
    srcs = list(iter_sources(dataset["plain"], stats=stats))
    rel = sorted(os.path.relpath(s.name, dataset["plain"]) for s in srcs)
    # the tree holds test/ folders: everything below but the training clip (as for archives)
    assert rel == sorted(GOOD + [CORRUPT])
    assert [s.name for s in srcs] == sorted(s.name for s in srcs)
    assert stats["not audio"] == 1 and stats["training clip"] == 1
    # a train/ folder given on its own is scored whole
    (train,) = iter_sources(dataset["plain"] / "data" / "fan" / "train")
    assert (train.machine_type, train.section, train.label) == ("fan", "00", "normal")
    valve = next(s for s in srcs if "valve" in s.name)
    assert (valve.machine_type, valve.section) == ("valve", "00")


def test_glob_list_file_and_member_inputs(dataset, tmp_path):
    plain = dataset["plain"]
    srcs = list(iter_sources(str(plain / "data" / "*" / "test" / "*_normal_*.wav")))
    assert sorted(Path(s.name).name for s in srcs) == sorted(
        Path(m).name for m in GOOD + [CORRUPT] if m.startswith("data/") and "_normal_" in m)
    srcs = list(iter_sources(str(plain / "**" / "*.wav")))
    assert len(srcs) == len(GOOD) + 2  # + corrupt + train clip
    lst = tmp_path / "lists" / "inputs.txt"
    lst.parent.mkdir()
    lst.write_text(
        "# clips to score\n\n"
        f"../plain/{GOOD[0]}\n"
        f"  {dataset['zip']}::{GOOD[3]}  \n"
        "../archives/b.tar\n"
        f"../plain/{GOOD[0]}\n"  # the same clip again: kept once
    )
    stats = Counter()
    srcs = list(iter_sources(lst, stats=stats))
    assert srcs[0].name == os.path.normpath(str(lst.parent / ".." / "plain" / GOOD[0]))
    assert srcs[1].name == f"{dataset['zip']}::{GOOD[3]}" and srcs[1].machine_type == "pump"
    assert len(srcs) == 2 + len(EXPECTED_MEMBERS) and stats["duplicate"] == 1
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        list(iter_sources(tmp_path / "nope.wav"))
    with pytest.raises(FileNotFoundError, match="no audio member"):
        list(iter_sources(f"{dataset['zip']}::nope.wav"))


def test_section_override(dataset):
    loose = dataset["plain"] / "loose" / "recording_0001.wav"
    (src,) = iter_sources(loose)
    assert (src.machine_type, src.section) == ("unknown", "unknown")
    (src,) = iter_sources(loose, section="fan:0")
    assert (src.machine_type, src.section) == ("fan", "00")
    (src,) = iter_sources(f"{dataset['zip']}::{GOOD[1]}", section=("gearbox", "03"))
    assert (src.machine_type, src.section, src.label) == ("gearbox", "03", "anomaly")
    assert parse_section("ToyCar:12") == ("ToyCar", "12")
    for bad in ("fan", ":00", "fan:", ("fan",)):
        with pytest.raises(ValueError, match="section"):
            parse_section(bad)


def test_describe_2021_folder_domain():
    d = describe(["gearbox", "target_test", "section_03_0000.wav"])
    assert d == {"machine_type": "gearbox", "section": "03", "domain": "target", "label": "unknown",
                 "split": "test"}


# --------------------------------------------------------------------------- sharding


def test_shards_partition_the_list(dataset):
    srcs = list(iter_sources([dataset["plain"], dataset["zip"], dataset["tgz"]]))
    assert srcs == list(iter_sources([dataset["plain"], dataset["zip"], dataset["tgz"]]))  # deterministic
    for n in (1, 2, 3, 7):
        shards = [shard_sources(srcs, i, n) for i in range(n)]
        names = [s.name for sh in shards for s in sh]
        assert sorted(names) == sorted(s.name for s in srcs) and len(set(names)) == len(names)
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_parse_and_resolve_shard(monkeypatch):
    assert parse_shard("1/4") == (1, 4) and parse_shard((0, 1)) == (0, 1)
    for bad in ("4/4", "-1/2", "1/0", "a/b", "3"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_shard() == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "5")
    assert resolve_shard() == (5, 8)
    assert resolve_shard("2/3") == (2, 3)  # explicit wins


def test_audio_source_is_small_and_picklable():
    import pickle

    s = AudioSource(name="a.zip::x.wav", kind="zip", path="a.zip", member="x.wav")
    assert pickle.loads(pickle.dumps(s)) == s
    assert not hasattr(s, "__dict__")  # slots: millions of sources stay cheap


# --------------------------------------------------------------------------- issue 23


def _archive_with(path: Path, kind: str, members: list[tuple[str, bytes]]) -> Path:
    if kind == "zip":
        import warnings

        with warnings.catch_warnings(), zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            warnings.simplefilter("ignore")  # "Duplicate name": what this archive is about
            for name, data in members:
                z.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz" if kind == "tgz" else "w") as t:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("kind", ["zip", "tar", "tgz"])
def test_duplicate_member_names_are_reported_the_same_way_in_every_format(tmp_path, kind):
    """Two members with one name: zip and tar readers would score the last copy, a tar stream
    the first; now none is read and the name is reported once, alike in every format."""
    dup, other = "fan/test/section_00_0001.wav", "fan/test/section_00_0002.wav"
    archive = _archive_with(tmp_path / f"a.{'tar.gz' if kind == 'tgz' else kind}", kind,
                            [(dup, wav_bytes(1)), (other, wav_bytes(2)), (dup, wav_bytes(3))])
    srcs = list(iter_sources(archive, include_unsafe=True))
    assert [(s.member, s.problem) for s in srcs] == [
        (dup, "2 members of the archive have this name: ambiguous, none is read"), (other, None)]
    assert decode_source(srcs[1], sample_rate=SR, num_samples=N)[0] is not None


@pytest.mark.parametrize("kind", ["zip-stored", "zip-deflated", "tar"])
def test_a_large_member_is_read_on_demand_not_into_memory(tmp_path, monkeypatch, kind):
    """A member over IN_MEMORY_BYTES is streamed: decoding a clip's first samples holds far less
    than the member (the old reader held the member and its whole decoded copy), and gives the
    same samples as the plain file."""
    import tracemalloc

    from fastasd.data import inputs

    monkeypatch.setattr(inputs, "IN_MEMORY_BYTES", 1 << 20)
    x = (0.1 * np.random.default_rng(0).standard_normal(300 * SR)).astype(np.float32)  # 5 min: 9.6 MB PCM_16
    plain = tmp_path / "fan" / "test" / "section_00_0001.wav"
    plain.parent.mkdir(parents=True)
    sf.write(plain, x, SR, subtype="PCM_16")
    if kind == "tar":
        archive = _archive_with(tmp_path / "a.tar", "tar", [("fan/test/section_00_0001.wav", plain.read_bytes())])
    else:
        archive = tmp_path / "a.zip"
        mode = zipfile.ZIP_STORED if kind == "zip-stored" else zipfile.ZIP_DEFLATED
        with zipfile.ZipFile(archive, "w", mode) as z:
            z.write(plain, "fan/test/section_00_0001.wav")
    (src,) = list(iter_sources(archive))
    want, _ = decode_source(next(iter(iter_sources(plain))), sample_rate=SR, num_samples=SR)
    tracemalloc.start()
    try:
        got, note = decode_source(src, sample_rate=SR, num_samples=SR)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert note is None and got.tobytes() == want.tobytes()
    assert peak < 2 << 20, f"{peak / 2**20:.1f} MiB held to decode 1 s of a 9.6 MB member"
