"""Enumerate the audio clips a scoring job reads: files, folders, globs, archives, list files.

:func:`iter_sources` turns what a user types after ``fastasd score MODEL_DIR`` into a
deterministic sequence of :class:`AudioSource` descriptors (small, picklable: a name and where the
bytes are), with the machine type, section, domain and label each clip's DCASE path gives.
Nothing is decoded here and nothing is ever extracted to disk: archive members are read into
memory one at a time when a source is opened.

Inputs (each may be given several times; a clip reached twice by the same name is kept once):

==============================  =================================================================
input                           clips
==============================  =================================================================
audio file                      the file itself (a file with a non-audio extension is skipped)
folder                          every audio file below it, recursively (a DCASE root or
                                machine-type folder: its test clips, see below)
glob pattern (``*``, ``?``,     every match, each treated as above (``**`` recurses)
``[``)
``.zip``                        its members (zipfile, random access), sorted by name
``.tar``, ``.tar.gz``,          its members. An uncompressed tar is read by random access (sorted by
``.tgz``, ``.tar.bz2``,         name; workers read a member by its byte offset); a compressed one is
``.tar.xz``                     streamed (``"r|*"``, archive order, which is fixed for a given file),
                                because seeking in a gzip stream means decompressing from the start
``.txt`` / ``.lst``             one input per line (any kind above), relative to the list file's
                                folder; blank lines and lines starting with ``#`` are ignored
``ARCHIVE::MEMBER``             one member of an archive (the form clip names take in outputs)
==============================  =================================================================

A folder or archive holding a DCASE layout (some clip lies directly in a ``test/``,
``source_test/`` or ``target_test/`` folder) gives its test clips: clips directly in ``train/``
folders are skipped (counted as training clips). So a DCASE root, a machine-type folder or a
DCASE zip gives its test clips, while a ``train/`` folder given on its own is scored whole.

Names: a file's name is its path as reached from the input (``os.path.normpath``), an archive
member's is ``"<archive path>::<member name>"``. Members that are not audio (by extension; also
hidden and AppleDouble ``._*`` files), not regular files (links, devices) or training clips of a
DCASE archive are counted (``stats``) and skipped. A member whose name is absolute or has a
``..`` component is never read (and, as nothing is extracted, never written anywhere): it is
skipped with a warning, or yielded with :attr:`AudioSource.problem` set when the caller asks for
it (``include_unsafe=True``, which the scoring job uses to list it in ``errors.csv``). An archive
that cannot be read at all is yielded the same way, with the reason in ``problem``.

Metadata: from the clip's file name (:func:`fastasd.data.layout.parse_file_name`) and the folder
above its split folder (``<machine_type>/test/section_00_....wav``, also inside archives: the
member path's folders are used, never the archive's own location); fields the path does not give
are ``"unknown"``. A section given for the whole call (``section=("fan", "00")`` or
``"fan:00"``) overrides machine type and section of every clip.

Sharding: the sequence is deterministic for the same inputs (same order of arguments, same
files), so :func:`shard_sources` can split it by index modulo ``n`` and every process of a
multi-GPU / multi-node job gets a disjoint, balanced share whose union is the whole; see
:func:`resolve_shard` for ``--shard i/n`` and the torchrun environment.
"""
from __future__ import annotations

import glob as _glob
import io
import logging
import os
import re
import stat
import tarfile
import threading
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import BinaryIO, Union

import numpy as np

from fastasd.data.audio import AudioError, decode_audio
from fastasd.data.layout import SPLIT_FOLDERS, is_audio_file, parse_file_name

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Separator between an archive's path and a member's name in clip names.
MEMBER_SEP = "::"
ZIP_SUFFIXES = (".zip",)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
LIST_SUFFIXES = (".txt", ".lst")
_GLOB_CHARS = re.compile(r"[*?\[]")
_MAX_LIST_DEPTH = 8  # list files may name list files; this stops a list that names itself
_ZIP_CACHE_SIZE = 4  # open ZipFile objects kept per thread (the central directory is parsed once)


def max_member_bytes() -> int:
    """Largest archive member read into memory (bytes): ``FASTASD_MAX_MEMBER_BYTES``, default 1 GiB.

    A larger member is reported, not read, so one odd member cannot exhaust memory.
    """
    return int(os.environ.get("FASTASD_MAX_MEMBER_BYTES", str(1 << 30)))


# --------------------------------------------------------------------------- the descriptor


@dataclass(frozen=True, slots=True)
class AudioSource:
    """One clip to score: its name, its DCASE metadata and where its bytes are.

    Attributes:
        name: ``"path"`` or ``"archive::member"``; unique within one enumeration.
        machine_type, section, domain, label: from the DCASE path (``"unknown"`` when absent);
            section is the two-digit string of the name (``"00"``).
        kind: ``"file"``, ``"zip"``, ``"tar"`` (uncompressed tar member at a byte offset) or
            ``"tarstream"`` (member of a compressed tar, readable only by streaming the archive).
        path: the file, or the archive, on the file system.
        member: the member name inside the archive (``""`` for a file).
        offset, size: byte offset and size of a ``"tar"`` member's data (else -1).
        problem: why this clip must not be read (unsafe member name, unreadable archive), or None.
    """

    name: str
    machine_type: str = "unknown"
    section: str = "unknown"
    domain: str = "unknown"
    label: str = "unknown"
    kind: str = "file"
    path: str = ""
    member: str = ""
    offset: int = -1
    size: int = -1
    problem: str | None = None

    @property
    def file_name(self) -> str:
        """The clip's base name (an archive member's base name)."""
        return re.split(r"[\\/]", self.member or self.path)[-1]

    def open(self) -> BinaryIO:
        """Open the clip's bytes for reading.

        A file is opened on disk; an archive member is never extracted: one of up to
        :data:`IN_MEMORY_BYTES` is read into memory (``io.BytesIO``), a larger one is read on
        demand (a zip member decompressed as it is read, an uncompressed tar member as a window
        of the archive), so a decoder that needs only its first seconds reads only those. A
        ``"tarstream"`` member is found by streaming its archive from the start, which is slow
        for many members: the scoring pipeline reads those in one pass instead
        (:func:`iter_payloads`).

        Raises:
            ValueError: when :attr:`problem` is set (the clip must not be read).
            OSError, zipfile.BadZipFile, tarfile.TarError: when the bytes cannot be read.
        """
        if self.problem is not None:
            raise ValueError(f"{self.name}: not read: {self.problem}")
        if self.kind == "file":
            return open(self.path, "rb")
        if self.kind == "zip":
            zf = _cached_zip(self.path)
            info = zf.getinfo(self.member)
            _check_size(self.name, info.file_size)
            if info.file_size > IN_MEMORY_BYTES:
                return io.BufferedReader(_ForwardStream(lambda: zf.open(info), info.file_size))
            return io.BytesIO(zf.read(info))
        if self.kind == "tar":
            _check_size(self.name, self.size)
            if self.size > IN_MEMORY_BYTES:
                return io.BufferedReader(_FileWindow(self.path, self.offset, self.size))
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(self.size)
            if len(data) != self.size:
                raise OSError(f"{self.name}: archive truncated ({len(data)} of {self.size} bytes)")
            return io.BytesIO(data)
        if self.kind == "tarstream":
            for src, data, error in iter_payloads([self]):
                if error is not None:
                    raise OSError(f"{self.name}: {error}")
                return io.BytesIO(data)
        raise ValueError(f"{self.name}: unknown source kind {self.kind!r}")


#: Archive members up to this size (bytes) are read into memory whole when opened; larger ones are
#: read on demand (see :meth:`AudioSource.open`).
IN_MEMORY_BYTES = 64 << 20


class _SizedReader(io.RawIOBase):
    """A read-only stream of ``size`` bytes whose seeks only move the position (``_pos``); the
    subclass reads at it."""

    def __init__(self, size: int):
        super().__init__()
        self._size, self._pos = size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos


class _FileWindow(_SizedReader):
    """Bytes ``[offset, offset + size)`` of a file (an uncompressed tar member), read on demand."""

    def __init__(self, path: str, offset: int, size: int):
        super().__init__(size)
        self._file = open(path, "rb")
        self._offset = offset

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self._size - self._pos))
        if n == 0:
            return 0
        self._file.seek(self._offset + self._pos)
        got = self._file.readinto(memoryview(buffer)[:n]) or 0
        self._pos += got
        return got

    def close(self) -> None:
        self._file.close()
        super().close()


class _ForwardStream(_SizedReader):
    """A member of ``size`` bytes from a stream that only reads forward (a zip member, decompressed
    as it is read), made seekable lazily: a seek only moves the position (the end is known
    without reading to it), a read after a forward seek skips in small steps, and one after a
    backward seek reopens the stream. So a decoder that looks at the size, the header and the
    first seconds holds a few small buffers, never the member."""

    _STEP = 1 << 16

    def __init__(self, reopen, size: int):
        super().__init__(size)
        self._reopen = reopen
        self._stream, self._at = reopen(), 0

    def readinto(self, buffer) -> int:
        if self._pos < self._at:
            self._stream.close()
            self._stream, self._at = self._reopen(), 0
        while self._at < self._pos:
            skipped = len(self._stream.read(min(self._STEP, self._pos - self._at)))
            if not skipped:
                return 0  # past the end
            self._at += skipped
        data = self._stream.read(len(buffer))
        buffer[:len(data)] = data
        self._at = self._pos = self._at + len(data)
        return len(data)

    def close(self) -> None:
        self._stream.close()
        super().close()


def text_name(name: str) -> str:
    """``name`` as UTF-8 text, for the CSV files and messages: a name that is valid UTF-8 stays as
    it is; bytes that are not (a Latin-1 file name from a Windows share, which Python keeps as
    lone surrogates, ``os.fsdecode``'s ``surrogateescape``) are written as ``\\xNN``. The same raw
    name always gives the same text, so the text identifies the clip when a run is resumed."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no decoder made: escape it as a code point
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _check_size(name: str, size: int) -> None:
    limit = max_member_bytes()
    if size > limit:
        raise OSError(f"{name}: member of {size} bytes exceeds FASTASD_MAX_MEMBER_BYTES={limit}")


_zip_local = threading.local()


def _cached_zip(path: str) -> zipfile.ZipFile:
    """An open ZipFile for ``path``, kept per thread (small LRU) so the directory is read once.

    Keyed by path, size and modification time: an archive replaced on disk is opened afresh.
    """
    cache: OrderedDict | None = getattr(_zip_local, "cache", None)
    if cache is None:
        cache = _zip_local.cache = OrderedDict()
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    zf = cache.get(key)
    if zf is None:
        zf = zipfile.ZipFile(path)
        cache[key] = zf
        while len(cache) > _ZIP_CACHE_SIZE:
            cache.popitem(last=False)[1].close()
    else:
        cache.move_to_end(key)
    return zf


# --------------------------------------------------------------------------- metadata


def parse_section(section) -> tuple[str, str] | None:
    """``"MACHINE:SS"`` or ``(machine, section)`` -> ``(machine, section)``; None stays None.

    A numeric section shorter than two digits is zero-padded (``"fan:0"`` -> ``("fan", "00")``),
    as DCASE names write sections with two digits.

    Raises:
        ValueError: naming the value when it is not of that form.
    """
    if section is None:
        return None
    if isinstance(section, str):
        mt, sep, ss = section.rpartition(":")
    else:
        try:
            mt, ss = section
        except (TypeError, ValueError):
            raise ValueError(f"section: expected 'MACHINE:SS' or (machine, section), got {section!r}") from None
        mt, ss, sep = str(mt), str(ss), ":"
    mt, ss = mt.strip(), ss.strip()
    if not sep or not mt or not ss:
        raise ValueError(f"section: expected 'MACHINE:SS' (e.g. 'fan:00'), got {section!r}")
    if ss.isdigit() and len(ss) < 2:
        ss = f"{int(ss):02d}"
    return mt, ss


def describe(parts: Sequence[str], section: tuple[str, str] | None = None) -> dict[str, str]:
    """DCASE metadata of a clip from its path components (folders..., file name).

    The machine type is the folder above the clip's split folder (``train``, ``test``,
    ``source_test``, ``target_test``) when the clip sits directly in one; section, domain and
    label come from the file name; a 2021 ``source_test``/``target_test`` folder gives the domain
    when the name does not. ``section`` overrides machine type and section.

    Returns:
        ``{"machine_type", "section", "domain", "label", "split"}``; ``"unknown"`` for what the
        path does not say (``split`` ``""`` when unknown).
    """
    parsed = None
    try:
        parsed = parse_file_name(parts[-1])
    except ValueError:
        pass
    machine_type, split, folder_domain = "unknown", "", None
    if len(parts) >= 2 and parts[-2] in SPLIT_FOLDERS:
        split, folder_domain = SPLIT_FOLDERS[parts[-2]]
        if len(parts) >= 3 and parts[-3]:
            machine_type = parts[-3]
    sec = parsed.section if parsed else "unknown"
    domain = parsed.domain if parsed else "unknown"
    if domain == "unknown" and folder_domain:
        domain = folder_domain
    if not split and parsed and parsed.split:
        split = parsed.split
    if section is not None:
        machine_type, sec = section
    return {
        "machine_type": machine_type,
        "section": sec,
        "domain": domain,
        "label": parsed.label if parsed else "unknown",
        "split": split,
    }


def is_unsafe_member(name: str) -> bool:
    """True for an archive member name that is absolute (``/x``, ``\\x``, ``C:x``) or has a ``..``
    component: such a member is never read (nor extracted: nothing is)."""
    n = name.replace("\\", "/")
    if not n or n.startswith("/") or re.match(r"^[A-Za-z]:", n):
        return True
    return ".." in n.split("/")


def _member_parts(member: str) -> list[str]:
    return [p for p in member.replace("\\", "/").split("/") if p and p != "."]


# --------------------------------------------------------------------------- enumeration


def iter_sources(
    inputs: PathLike | Iterable[PathLike],
    section=None,
    *,
    stats: Counter | None = None,
    include_unsafe: bool = False,
) -> Iterator[AudioSource]:
    """Enumerate the clips of ``inputs`` in a deterministic order (see the module docstring).

    Args:
        inputs: one input or a sequence of them: audio files, folders, glob patterns, ``.zip``
            / ``.tar[.gz|.bz2|.xz]`` / ``.tgz`` archives, ``.txt``/``.lst`` list files, or
            ``ARCHIVE::MEMBER``.
        section: ``"MACHINE:SS"`` or ``(machine, section)`` for every clip (overrides the path).
        stats: if given, counts of what was skipped, by reason (``"not audio"``, ``"not a
            regular file"``, ``"training clip"``, ``"duplicate"``, ``"unsafe name"``).
        include_unsafe: yield unsafe archive members and unreadable archives as sources with
            :attr:`AudioSource.problem` set (default: skip them with a warning).

    Yields:
        :class:`AudioSource` objects with unique names, inputs in the given order, each input's
        clips sorted by name (compressed tar archives: archive order).

    Raises:
        FileNotFoundError: naming an input that does not exist (a glob that matches nothing only
            logs a warning).
        ValueError: a malformed ``section``.
    """
    override = parse_section(section)
    stats = Counter() if stats is None else stats
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    seen: set[str] = set()
    for inp in inputs:
        for src in _expand(os.fspath(inp), override, stats, 0):
            if src.name in seen:
                stats["duplicate"] += 1
                continue
            seen.add(src.name)
            if src.problem is not None:
                if src.problem.startswith("unsafe"):
                    stats["unsafe name"] += 1
                    logger.warning("skipping %s: %s", src.name, src.problem)
                else:
                    logger.error("%s: %s", src.name, src.problem)
                if not include_unsafe:
                    continue
            yield src


def _archive_kind(path: str) -> str | None:
    low = path.lower()
    if low.endswith(ZIP_SUFFIXES):
        return "zip"
    if low.endswith(TAR_SUFFIXES):
        return "tar"
    return None


def _expand(inp: str, override, stats: Counter, depth: int) -> Iterator[AudioSource]:
    if os.path.isdir(inp):
        yield from _folder_sources(inp, override, stats)
    elif os.path.isfile(inp):
        kind = _archive_kind(inp)
        if kind == "zip":
            yield from _zip_sources(inp, override, stats)
        elif kind == "tar":
            yield from _tar_sources(inp, override, stats)
        elif inp.lower().endswith(LIST_SUFFIXES):
            if depth >= _MAX_LIST_DEPTH:
                raise ValueError(f"{inp}: list files nested more than {_MAX_LIST_DEPTH} deep (does it list itself?)")
            for entry in read_list_file(inp):
                try:
                    yield from _expand(entry, override, stats, depth + 1)
                except FileNotFoundError:
                    # one missing entry of a list is that clip's error (errors.csv), not the job's
                    missing = os.path.normpath(entry)
                    yield AudioSource(name=missing, path=missing, problem=f"not found (listed in {inp})")
        elif is_audio_file(inp):
            yield _file_source(os.path.normpath(inp), override)
        else:
            stats["not audio"] += 1
            logger.warning("skipping %s: not an audio file, archive or list file (by its extension)", inp)
    elif MEMBER_SEP in inp and os.path.isfile(inp.rsplit(MEMBER_SEP, 1)[0]):
        archive, member = inp.rsplit(MEMBER_SEP, 1)
        kind = _archive_kind(archive)
        if kind is None:
            raise ValueError(f"{inp}: {archive} is not a .zip or .tar archive")
        gen = _zip_sources(archive, override, stats) if kind == "zip" else _tar_sources(archive, override, stats)
        want = f"{os.path.normpath(archive)}{MEMBER_SEP}{member}"
        found = [s for s in gen if s.name == want]
        if not found:
            raise FileNotFoundError(f"{inp}: no audio member {member!r} in {archive}")
        yield from found
    elif _GLOB_CHARS.search(inp):
        matches = sorted(_glob.glob(inp, recursive=True))
        if not matches:
            logger.warning("%s: the pattern matches nothing", inp)
        for m in matches:
            yield from _expand(m, override, stats, depth)
    else:
        raise FileNotFoundError(f"{inp}: no such file, folder, archive or pattern")


def read_list_file(path: PathLike) -> list[str]:
    """Entries of a list file: one input per line, relative to the list file's folder.

    Blank lines and lines whose first non-blank character is ``#`` are ignored; surrounding
    whitespace is stripped. Absolute entries stay as they are. Bytes that are not UTF-8 are kept
    as the file system keeps them (``surrogateescape``), so a list of Latin-1 names works.
    """
    base = os.path.dirname(os.fspath(path))
    out = []
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
        for line in f:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            out.append(entry if os.path.isabs(entry) else os.path.join(base, entry))
    return out


def _file_source(path: str, override) -> AudioSource:
    meta = describe(os.path.abspath(path).split(os.sep), override)
    del meta["split"]
    return AudioSource(name=path, kind="file", path=path, **meta)


def _folder_sources(folder: str, override, stats: Counter) -> Iterator[AudioSource]:
    paths = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for fn in filenames:
            p = os.path.normpath(os.path.join(dirpath, fn))
            if _archive_kind(fn) is not None or fn.lower().endswith(LIST_SUFFIXES):
                # Archives and list files inside a folder are not opened implicitly (a folder of
                # archives is given as a glob: DIR/*.zip).
                logger.info("not opening %s found inside folder %s (pass it or a glob explicitly)", p, folder)
            paths.append(p)
    paths.sort()
    parents = {p: os.path.basename(os.path.dirname(p)) for p in paths}
    for p, keep in _dcase_filter(paths, parents, stats):
        if keep:
            yield _file_source(p, override)


def _dcase_filter(names: list[str], split_folder: dict[str, str], stats: Counter):
    """``(name, keep)``: non-audio names are counted and dropped; if some audio lies directly in
    a test folder (a DCASE root, machine-type folder or archive of one), clips directly in a
    ``train`` folder are counted as training clips and dropped."""
    audio = [n for n in names if is_audio_file(n)]
    is_dcase = any(SPLIT_FOLDERS.get(split_folder[n], ("",))[0] == "test" for n in audio)
    for n in names:
        if not is_audio_file(n):
            stats["not audio"] += 1
            yield n, False
        elif is_dcase and split_folder[n] == "train":
            stats["training clip"] += 1
            yield n, False
        else:
            yield n, True


def _member_source(archive: str, member: str, kind: str, override, **where) -> AudioSource:
    name = f"{archive}{MEMBER_SEP}{member}"
    if is_unsafe_member(member):
        return AudioSource(name=name, kind=kind, path=archive, member=member,
                           problem="unsafe member name (absolute or with '..'): not read")
    meta = describe(_member_parts(member), override)
    del meta["split"]
    return AudioSource(name=name, kind=kind, path=archive, member=member, **meta, **where)


def _filter_members(archive: str, entries: list[tuple[str, dict]], kind: str, override, stats: Counter):
    """Archive members -> sources, in the given order; unsafe names are yielded (``problem`` set)
    whatever their extension, the rest go through :func:`_dcase_filter`. A name that several
    members share is yielded once, with ``problem`` set: which copy is meant is ambiguous (zip and
    tar readers would pick different ones), so none is scored, in every archive format alike."""
    where = dict(entries)
    copies = Counter(m for m, _ in entries)
    safe = [m for m, _ in entries if not is_unsafe_member(m)]
    keep = dict(_dcase_filter(safe, {m: (_member_parts(m)[-2:-1] or [""])[0] for m in safe}, stats))
    yielded: set[str] = set()
    for member, _ in entries:
        if member in yielded:
            continue
        if member not in keep:
            src = _member_source(archive, member, kind, override)
        elif keep[member] and copies[member] > 1:
            src = replace(_member_source(archive, member, kind, override),
                          problem=f"{copies[member]} members of the archive have this name: ambiguous, none is read")
        elif keep[member]:
            src = _member_source(archive, member, kind, override, **where[member])
        else:
            continue
        yielded.add(member)
        yield src


def _zip_sources(path: str, override, stats: Counter) -> Iterator[AudioSource]:
    archive = os.path.normpath(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        yield AudioSource(name=archive, kind="zip", path=archive, problem=f"cannot read archive ({e})")
        return
    entries = []
    for info in infos:
        if info.is_dir():
            continue
        mode = info.external_attr >> 16
        if mode and not stat.S_ISREG(mode) and stat.S_IFMT(mode):
            stats["not a regular file"] += 1  # e.g. a symlink stored in the zip
            continue
        entries.append((info.filename, {}))
    entries.sort(key=lambda e: e[0])
    yield from _filter_members(archive, entries, "zip", override, stats)


def _is_compressed(path: str) -> bool:
    with open(path, "rb") as f:
        magic = f.read(6)
    return magic.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd"))


def _iter_tar(path: str, mode: str) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Members of a tar archive, one at a time, without keeping the list (bounded memory)."""
    with tarfile.open(path, mode) as tf:
        while True:
            info = tf.next()
            if info is None:
                return
            tf.members = []  # tarfile keeps every TarInfo otherwise; next() does not need them
            yield tf, info


def _tar_sources(path: str, override, stats: Counter) -> Iterator[AudioSource]:
    archive = os.path.normpath(path)
    entries: list[tuple[str, dict]] = []
    problem = None
    streamed = False
    try:
        streamed = _is_compressed(path)
        for _, info in _iter_tar(path, "r|*" if streamed else "r:"):
            if info.isdir():
                continue
            if not info.isreg() or info.issparse():
                stats["not a regular file"] += 1
                continue
            where = {} if streamed else {"offset": info.offset_data, "size": info.size}
            entries.append((info.name, where))
    except (OSError, tarfile.TarError, EOFError, ValueError) as e:
        # Members listed before the damage are still scored; the archive itself is reported.
        problem = f"cannot read archive ({type(e).__name__}: {e})"
    kind = "tarstream" if streamed else "tar"
    if not streamed:
        entries.sort(key=lambda e: e[0])
    yield from _filter_members(archive, entries, kind, override, stats)
    if problem is not None:
        yield AudioSource(name=archive, kind=kind, path=archive, problem=problem)


# --------------------------------------------------------------------------- sharding


def parse_shard(shard) -> tuple[int, int]:
    """``"i/n"`` or ``(i, n)`` -> ``(i, n)`` with ``0 <= i < n``.

    Raises:
        ValueError: naming the value when it is malformed or out of range.
    """
    if isinstance(shard, str):
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
        if not m:
            raise ValueError(f"shard: expected 'i/n' (e.g. '0/4'), got {shard!r}")
        i, n = int(m[1]), int(m[2])
    else:
        try:
            i, n = (int(v) for v in shard)
        except (TypeError, ValueError):
            raise ValueError(f"shard: expected 'i/n' or (i, n), got {shard!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard: need 0 <= i < n, got {i}/{n}")
    return i, n


def resolve_shard(shard=None) -> tuple[int, int]:
    """The shard this process scores: ``shard`` if given, else torchrun's ``RANK``/``WORLD_SIZE``.

    Under ``torchrun --nproc-per-node G --nnodes M`` every process gets ``RANK`` in
    ``[0, G*M)`` and ``WORLD_SIZE = G*M``, so the same command scores disjoint shards; without
    those variables the whole input is one shard ``(0, 1)``.
    """
    if shard is not None:
        return parse_shard(shard)
    world = os.environ.get("WORLD_SIZE")
    if world and int(world) > 1:
        return parse_shard((int(os.environ.get("RANK", "0")), int(world)))
    return 0, 1


def shard_sources(sources: Sequence[AudioSource], i: int, n: int) -> list[AudioSource]:
    """Shard ``i`` of ``n``: the sources whose index in the deterministic list is ``i`` modulo ``n``.

    Every source is in exactly one shard, and shard sizes differ by at most one.
    """
    i, n = parse_shard((i, n))
    return [s for k, s in enumerate(sources) if k % n == i]


# --------------------------------------------------------------------------- reading


def iter_payloads(sources: Iterable[AudioSource]) -> Iterator[tuple[AudioSource, bytes | None, str | None]]:
    """``(source, data, error)`` for each source, in order, reading compressed tar members.

    ``data`` is the member's bytes for ``"tarstream"`` sources (read by streaming the archive
    once per run of consecutive sources from it) and None for every other kind (read by whoever
    decodes it, see :func:`decode_source`); ``error`` says why a member could not be read.
    Memory: one member at a time, plus what the consumer keeps.
    """
    pending: list[AudioSource] = []

    def flush():
        # The run's members come in the archive's order, which is the order they were enumerated
        # in, so each is yielded as soon as the stream reaches it; a member met out of order (the
        # caller reordered the sources) waits in ``early`` until its turn.
        if not pending:
            return
        order = list(pending)
        pending.clear()
        wanted = {s.member: s for s in order}
        early: dict[str, tuple[bytes | None, str | None]] = {}
        done: set[str] = set()
        k = 0
        reason = "member not found in archive (did the archive change?)"
        try:
            for tf, info in _iter_tar(order[0].path, "r|*"):
                src = wanted.get(info.name)
                if src is None or info.name in done:
                    continue
                done.add(info.name)
                try:
                    _check_size(src.name, info.size)
                    f = tf.extractfile(info)
                    early[info.name] = (f.read(), None) if f is not None else (None, "not a regular file")
                except (OSError, tarfile.TarError, EOFError) as e:
                    early[info.name] = (None, f"cannot read member ({e})")
                while k < len(order) and order[k].member in early:
                    data, err = early.pop(order[k].member)
                    yield order[k], data, err
                    k += 1
                if k == len(order):
                    return
        except (OSError, tarfile.TarError, EOFError, ValueError) as e:
            reason = f"cannot read archive ({type(e).__name__}: {e})"
        for src in order[k:]:
            yield (src, *early.pop(src.member, (None, reason)))

    for src in sources:
        if src.kind == "tarstream" and src.problem is None:
            if pending and pending[0].path != src.path:
                yield from flush()
            pending.append(src)
            continue
        yield from flush()
        yield src, None, None
    yield from flush()


def warm_up() -> bool:
    """Nothing; submitted to a fresh worker process so that it imports this module (and the
    audio decoder) before the first clip arrives. Returns True."""
    return True


_OBJECT_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-fA-F]+>")


def decode_source(
    source: AudioSource,
    data: bytes | None = None,
    *,
    sample_rate: int,
    num_samples: int | None,
    channel: int | None = None,
) -> tuple[np.ndarray | None, str | None]:
    """Decode one clip; runs in worker processes (so it imports nothing heavy).

    Args:
        source: the clip; a file is read from disk, a zip or tar member by random access.
        data: the clip's bytes when the caller already read them (compressed tar members).
        sample_rate, num_samples, channel: see :func:`fastasd.data.audio.load_audio`.

    Returns:
        ``(float32 waveform [num_samples], note)``, where ``note`` is None or says that the clip
        is far shorter than ``num_samples`` (:func:`fastasd.data.audio.decode_audio`; the clip is
        still scored), or ``(None, reason)``: errors travel as values so one bad clip never stops
        a pool.
    """
    kwargs = dict(sample_rate=sample_rate, num_samples=num_samples, channel=channel, name=source.name)
    try:
        if data is not None:
            return decode_audio(io.BytesIO(data), **kwargs)
        if source.kind == "file" and source.problem is None:
            return decode_audio(source.path, **kwargs)
        with source.open() as f:
            return decode_audio(f, **kwargs)
    except AudioError as e:
        # libsndfile names an in-memory member by its repr ("<_io.BytesIO object at 0x7f...>"),
        # which differs from run to run: say the member's name, so reasons are reproducible.
        return None, _OBJECT_REPR.sub(source.file_name, e.reason)
    except Exception as e:  # archive damage, I/O errors: reported per clip, never fatal
        msg = str(e)
        if msg.startswith(source.name + ": "):
            msg = msg[len(source.name) + 2:]
        return None, f"cannot read ({type(e).__name__}: {msg})"


__all__ = [
    "AudioSource", "MEMBER_SEP", "iter_sources", "iter_payloads", "decode_source", "describe",
    "parse_section", "parse_shard", "resolve_shard", "shard_sources", "read_list_file",
    "is_unsafe_member", "max_member_bytes", "text_name",
]
