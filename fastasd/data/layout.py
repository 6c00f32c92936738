"""DCASE task 2 dataset layouts (2020-2025): file-name parsing, discovery, ground truth.

A DCASE root looks like ``<root>/<machine_type>/{train,test}/*.wav`` (2021 splits ``test`` into
``source_test/`` and ``target_test/``). Everything a clip's metadata needs is read from its file
NAME (never from the rest of its path), leniently, and without assuming 0- or 1-based numbering:

==========================================================  ======  =======  =======  ========
file name                                                   year    domain   label    section
==========================================================  ======  =======  =======  ========
``normal_id_00_00000000.wav``, ``anomaly_id_02_00000012``   2020    source   in name  the id
``id_05_00000000.wav`` (unlabelled evaluation test)         2020    source   unknown  the id
``section_00_source_train_normal_0000_<attributes>.wav``    2021-   in name  in name  in name
``section_00_target_test_anomaly_0049_<attributes>.wav``    2021-   in name  in name  in name
``section_03_source_test_0000.wav`` (evaluation test)       2021    in name  unknown  in name
``section_03_0000.wav``, ``section_00_test_0001.wav``       2022-   unknown  unknown  in name
==========================================================  ======  =======  =======  ========

The attribute tail after the index is free text (``m-n_W``, ``weight15_BckgF``,
``car_A1_spd_28V_mic_1_noise_1``, ``noAttribute``) and is kept verbatim. Labels and domains
missing from the names of evaluation test files come from the official ground-truth CSVs
(:func:`read_ground_truth`), joined by file name; optional ``attributes_<ss>.csv`` files beside
``train/`` give parsed attribute key/value pairs.
"""
from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple, Union

import soundfile as sf

logger = logging.getLogger(__name__)

DOMAINS = ("source", "target", "unknown")
LABELS = ("normal", "anomaly", "unknown")
SPLITS = ("train", "test")

# Extensions soundfile can read by name alone (RAW needs explicit parameters, so it is left out).
AUDIO_EXTENSIONS = frozenset(
    "." + fmt.lower() for fmt in sf.available_formats() if fmt != "RAW"
) | {".aif", ".oga"}

# Split folders below a machine-type folder -> (split, domain the folder implies or None).
SPLIT_FOLDERS = {
    "train": ("train", None),
    "test": ("test", None),
    "source_test": ("test", "source"),  # DCASE 2021
    "target_test": ("test", "target"),  # DCASE 2021
}

# How deep discover() looks below a root for machine-type folders (e.g. dev_data/raw/<mt>/train).
_MAX_SEARCH_DEPTH = 3
# How many unparseable names an error message lists.
_MAX_LISTED = 10

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class Clip:
    """One audio file of a DCASE dataset with the metadata its name (and ground truth) gives.

    ``section`` is kept exactly as written in the name (e.g. ``"00"``, never re-numbered);
    ``domain`` is source|target|unknown, ``split`` train|test, ``label`` normal|anomaly|unknown.
    ``attributes`` is the raw name tail after the index (``""`` if none);
    ``attribute_values`` the ordered (key, value) pairs of the clip's ``attributes_<ss>.csv`` row.
    """

    path: str
    machine_type: str
    section: str
    domain: str
    split: str
    label: str
    attributes: str = ""
    attribute_values: tuple[tuple[str, str], ...] = ()

    @property
    def file_name(self) -> str:
        """The clip's base name (for ``archive::member`` paths, the member's base name)."""
        return _basename(self.path)


class ParsedName(NamedTuple):
    """What a DCASE file name says. Missing domain/label are ``"unknown"``, a missing split ``None``."""

    section: str
    domain: str
    split: str | None
    label: str
    index: str
    attributes: str


def _basename(path: str) -> str:
    # Archive members are written "archive::member"; accept both separators so that a
    # Windows-style path parses the same on every OS.
    return re.split(r"[\\/]", str(path).rsplit("::", 1)[-1])[-1]


def _stem(name: str) -> str:
    # Only strip a known audio extension: an attribute tail may itself contain a dot ("2.5V").
    root, ext = os.path.splitext(name)
    return root if ext.lower() in AUDIO_EXTENSIONS else name


_SECTION_RE = re.compile(
    r"^section_(?P<section>\d+)"
    r"(?:_(?P<domain>source|target))?"
    r"(?:_(?P<split>train|test))?"
    r"(?:_(?P<label>normal|anomaly))?"
    r"_(?P<index>\d+)"
    r"(?:_(?P<attributes>.*))?$",
    re.IGNORECASE,
)
_ID_RE = re.compile(  # DCASE 2020: machine id instead of section, no domains
    r"^(?:(?P<label>normal|anomaly)_)?id_(?P<section>\d+)_(?P<index>\d+)(?:_(?P<attributes>.*))?$",
    re.IGNORECASE,
)


def parse_file_name(name: str) -> ParsedName:
    """Parse a DCASE task 2 file name (2020-2025 conventions; see the module docstring).

    ``name`` may carry a directory or an ``archive::`` prefix: only the base name is parsed.
    Keywords (section, source, test, normal, ...) are matched case-insensitively and returned in
    lower case; section, index and attribute tail are returned verbatim as strings.

    Raises:
        ValueError: naming the file, when the name follows none of the conventions.
    """
    base = _basename(name)
    stem = _stem(base)
    m = _SECTION_RE.match(stem)
    if m:
        g = m.groupdict()
        return ParsedName(
            section=g["section"],
            domain=(g["domain"] or "unknown").lower(),
            split=g["split"].lower() if g["split"] else None,
            label=(g["label"] or "unknown").lower(),
            index=g["index"],
            attributes=g["attributes"] or "",
        )
    m = _ID_RE.match(stem)
    if m:
        g = m.groupdict()
        return ParsedName(
            section=g["section"],
            domain="source",  # 2020 had no domain shift
            split=None,
            label=(g["label"] or "unknown").lower(),
            index=g["index"],
            attributes=g["attributes"] or "",
        )
    raise ValueError(
        f"{base!r}: not a DCASE task 2 file name (expected e.g. "
        "'section_00_source_train_normal_0000_<attributes>.wav', 'section_03_0000.wav' "
        "or 'normal_id_00_00000000.wav')"
    )


def is_audio_file(name: str) -> bool:
    """True when ``name`` has an extension soundfile reads (``.wav``, ``.flac``, ...) and is not hidden."""
    base = _basename(name)
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in AUDIO_EXTENSIONS


# --------------------------------------------------------------------------- attributes CSV


def read_attributes(machine_dir: PathLike) -> dict[str, tuple[tuple[str, str], ...]]:
    """Read every ``attributes_<ss>.csv`` in a machine-type folder.

    Format: a header ``file_name,d1p,d1v,d2p,d2v,...`` then one row per file; ``d<i>p`` is an
    attribute's name, ``d<i>v`` its value. ``file_name`` may be a relative path
    (``eval_data/raw/fan/train/x.wav``): rows are keyed by base name.

    Returns:
        ``{file base name: ((key, value), ...)}`` in column order; pairs that are empty on both
        sides are dropped.
    """
    result: dict[str, tuple[tuple[str, str], ...]] = {}
    for csv_path in sorted(Path(machine_dir).glob("attributes_*.csv")):
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            for row_no, row in enumerate(csv.reader(f)):
                if not row or not row[0].strip():
                    continue
                if row_no == 0 and row[0].strip().lower() == "file_name":
                    continue  # header
                cells = [c.strip() for c in row[1:]]
                cells += [""] * (len(cells) % 2)  # tolerate a missing last value
                pairs = tuple(
                    (cells[i], cells[i + 1])
                    for i in range(0, len(cells), 2)
                    if cells[i] or cells[i + 1]
                )
                result[_basename(row[0].strip())] = pairs
    return result


# --------------------------------------------------------------------------- ground truth

_GT_FILE_RE = re.compile(r"^ground_truth_(?P<mt>.+)_section_(?P<section>\d+)_test\.csv$")


def _read_gt_dir(directory: Path, values: dict[str, str], out: dict, slot: int) -> int:
    """Read one ground_truth_* folder into ``out[(mt, section, name)][slot]``; returns file count.

    A name listed twice in one file is an error (naming the file, the name and both lines):
    the official evaluators would count it twice, and with opposite values one row would
    silently win.
    """
    n_files = 0
    for csv_path in sorted(directory.glob("ground_truth_*_section_*_test.csv")):
        m = _GT_FILE_RE.match(csv_path.name)
        if not m:
            continue
        n_files += 1
        mt, section = m["mt"], m["section"]
        first_line: dict[str, tuple[int, str]] = {}
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            for row_no, row in enumerate(csv.reader(f), start=1):
                if len(row) < 2 or not row[0].strip():
                    continue
                try:
                    flag = int(float(row[1]))
                except ValueError:
                    if row_no == 1:
                        continue  # tolerate a header although the official files have none
                    raise ValueError(f"{csv_path}: line {row_no}: expected 'name,0|1', got {row!r}")
                if flag not in (0, 1):
                    raise ValueError(f"{csv_path}: line {row_no}: value must be 0 or 1, got {row[1]!r}")
                name = _basename(row[0].strip())
                if name in first_line:
                    line, before = first_line[name]
                    what = ("with opposite values" if before != values[str(flag)] else "twice")
                    raise ValueError(
                        f"{csv_path}: {name} is listed {what} (line {line}: {before}, line "
                        f"{row_no}: {values[str(flag)]}); each test file must appear once")
                first_line[name] = (row_no, values[str(flag)])
                key = (mt, section, name)
                entry = out.setdefault(key, ["unknown", "unknown"])
                entry[slot] = values[str(flag)]
    return n_files


def read_ground_truth(gt_root: PathLike) -> dict[tuple[str, str, str], tuple[str, str]]:
    """Read the official evaluators' ground truth of unlabelled evaluation test files.

    ``gt_root`` holds ``ground_truth_data/ground_truth_<mt>_section_<ss>_test.csv`` (rows
    ``name,0|1``, no header, 1 = anomaly) and/or ``ground_truth_domain/...`` (1 = target).

    Returns:
        ``{(machine_type, section, file_name): (label, domain)}``; a half missing from the
        files is ``"unknown"``.

    Raises:
        FileNotFoundError: naming ``gt_root`` when it has no ground-truth CSV at all.
        ValueError: naming the CSV file and line for a malformed row.
    """
    root = Path(gt_root)
    out: dict[tuple[str, str, str], list[str]] = {}
    n = 0
    if (root / "ground_truth_data").is_dir():
        n += _read_gt_dir(root / "ground_truth_data", {"0": "normal", "1": "anomaly"}, out, 0)
    if (root / "ground_truth_domain").is_dir():
        n += _read_gt_dir(root / "ground_truth_domain", {"0": "source", "1": "target"}, out, 1)
    if n == 0:
        raise FileNotFoundError(
            f"{root}: no ground-truth files (expected ground_truth_data/ and/or ground_truth_domain/"
            " with ground_truth_<machine_type>_section_<ss>_test.csv)"
        )
    return {k: (v[0], v[1]) for k, v in out.items()}


# --------------------------------------------------------------------------- discovery


def layout_year(clips: Iterable[Clip]) -> int | None:
    """The DCASE year that the layout of ``clips`` reveals, if it reveals one.

    2020 when every name follows the 2020 convention (``normal_id_00_00000000.wav``: machine
    ids, no domains); 2021 when a test clip lies in the 2021 folders ``source_test/`` or
    ``target_test/``; None otherwise (the 2022-2025 layouts look alike, and a 2021 set whose test
    folders were merged looks like them too). :func:`fastasd.metrics.resolve_metric` uses it.
    """
    clips = list(clips)
    if clips and all(_ID_RE.match(_stem(c.file_name)) for c in clips):
        return 2020
    if any(c.split == "test" and os.path.basename(os.path.dirname(c.path)) in
           ("source_test", "target_test") for c in clips):
        return 2021
    return None


def _has_split_folder(directory: Path) -> bool:
    return any((directory / name).is_dir() for name in SPLIT_FOLDERS)


def _machine_dirs(root: Path) -> list[Path]:
    """Machine-type folders at or below ``root`` (a folder that has train/ or test/ inside)."""
    if _has_split_folder(root):
        return [root]
    found: list[Path] = []
    level = [root]
    for _ in range(_MAX_SEARCH_DEPTH):
        next_level = []
        for d in level:
            for child in sorted(d.iterdir()):
                if not child.is_dir() or child.name.startswith(".") or child.name in SPLIT_FOLDERS:
                    continue
                (found if _has_split_folder(child) else next_level).append(child)
        if found:  # machine types sit at one depth; do not wander below them
            break
        level = next_level
    return found


def _as_ground_truth(ground_truth) -> dict[tuple[str, str, str], tuple[str, str]]:
    if ground_truth is None:
        return {}
    if isinstance(ground_truth, Mapping):
        return dict(ground_truth)
    if isinstance(ground_truth, (str, os.PathLike)):
        return read_ground_truth(ground_truth)
    merged: dict[tuple[str, str, str], tuple[str, str]] = {}
    for gt in ground_truth:
        merged.update(_as_ground_truth(gt))
    return merged


def _apply_ground_truth(clip: Clip, truth: tuple[str, str]) -> Clip:
    """Fill a clip's unknown label/domain from the ground truth; a contradiction is an error."""
    label, domain = truth
    changes = {}
    for field, value in (("label", label), ("domain", domain)):
        current = getattr(clip, field)
        if value == "unknown" or value == current:
            continue
        if current != "unknown":
            raise ValueError(
                f"{clip.path}: ground truth says {field} {value!r} but the file name says "
                f"{current!r} (ground truth of another data set?)"
            )
        changes[field] = value
    return replace(clip, **changes) if changes else clip


def discover(
    root: PathLike | Iterable[PathLike],
    ground_truth=None,
    splits: Iterable[str] = SPLITS,
    *,
    skip_unparseable: bool = False,
) -> list[Clip]:
    """Find every audio clip of one or several DCASE task 2 data sets.

    Args:
        root: a DCASE root (``<root>/<machine_type>/{train,test}``; machine-type folders may sit
            up to three levels down, e.g. ``dev_data/raw/<mt>``), one machine-type folder
            (``<root>/{train,test}``, the machine type is the folder's name), or a list of such
            roots (development and evaluation sets together).
        ground_truth: ``None``, a ground-truth folder (see :func:`read_ground_truth`), a list of
            them, or an already-read mapping. Test clips whose label/domain the name does not
            give are filled in by (machine type, section, file name); others stay "unknown".
        splits: which of "train" and "test" to collect ("test" includes 2021's
            ``source_test/`` and ``target_test/``, whose folder gives the domain when the name
            does not).
        skip_unparseable: by default a file whose name follows no DCASE convention is an error
            (one ValueError listing up to 10 such names); with True they are skipped with a
            logged warning.

    Training clips whose name has no label are taken as normal (DCASE training data are normal
    only). Non-audio files (by extension) and hidden files are ignored.

    Returns:
        Clips sorted by (machine_type, split, file_name, path).

    Raises:
        FileNotFoundError: naming the root when it does not exist or holds no clips.
        ValueError: unparseable names (see above); the same (machine type, split, file name)
            found twice; a ground truth that contradicts a file name.
    """
    roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
    if not roots:
        raise ValueError("discover: no root given")
    splits = tuple(splits)
    for s in splits:
        if s not in SPLITS:
            raise ValueError(f"discover: unknown split {s!r} (expected one of {SPLITS})")
    truth = _as_ground_truth(ground_truth)

    clips: list[Clip] = []
    bad: list[str] = []
    for r in roots:
        r = Path(r)
        if not r.is_dir():
            raise FileNotFoundError(f"{r}: data root not found (or not a folder)")
        n_before, bad_before = len(clips), len(bad)
        for mdir in _machine_dirs(r):
            machine_type = mdir.resolve().name if mdir.name in ("", ".", "..") else mdir.name
            attributes = read_attributes(mdir)
            for folder, (split, folder_domain) in SPLIT_FOLDERS.items():
                sdir = mdir / folder
                if split not in splits or not sdir.is_dir():
                    continue
                for entry in sorted(os.scandir(sdir), key=lambda e: e.name):
                    if not entry.is_file() or not is_audio_file(entry.name):
                        continue
                    try:
                        p = parse_file_name(entry.name)
                    except ValueError:
                        bad.append(os.path.join(sdir, entry.name))
                        continue
                    label = p.label
                    if label == "unknown" and split == "train":
                        label = "normal"
                    domain = p.domain if p.domain != "unknown" or folder_domain is None else folder_domain
                    clip = Clip(
                        path=os.path.join(sdir, entry.name),
                        machine_type=machine_type,
                        section=p.section,
                        domain=domain,
                        split=split,
                        label=label,
                        attributes=p.attributes,
                        attribute_values=attributes.get(entry.name, ()),
                    )
                    gt = truth.get((machine_type, p.section, entry.name))
                    if gt is not None:
                        clip = _apply_ground_truth(clip, gt)
                    clips.append(clip)
        if len(clips) == n_before and len(bad) == bad_before:
            raise FileNotFoundError(
                f"{r}: no audio clips found for splits {list(splits)} (expected "
                "<root>/<machine_type>/train|test/*.wav or <machine_type>/train|test/*.wav)"
            )

    if bad:
        listed = "\n  ".join(bad[:_MAX_LISTED])
        more = f"\n  ... and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        message = f"{len(bad)} file name(s) follow no DCASE task 2 convention:\n  {listed}{more}"
        if not skip_unparseable:
            raise ValueError(message + "\n(pass skip_unparseable=True to skip them)")
        logger.warning("skipping %s", message)
        if not clips:
            raise FileNotFoundError(f"{', '.join(map(str, roots))}: no parseable audio clips found")

    clips.sort(key=lambda c: (c.machine_type, c.split, c.file_name, c.path))
    seen: dict[tuple[str, str, str], str] = {}
    for c in clips:
        key = (c.machine_type, c.split, c.file_name)
        if key in seen:
            raise ValueError(
                f"{c.file_name}: found twice for machine type {c.machine_type!r} ({seen[key]} and "
                f"{c.path}); was the same data set given twice?"
            )
        seen[key] = c.path

    if truth:
        unknown = sum(1 for c in clips if c.split == "test" and c.label == "unknown")
        if unknown:
            logger.warning("%d test clip(s) have no label in their name nor in the ground truth", unknown)
    return clips
