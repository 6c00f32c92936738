"""The shard merge: the ``shard-<i>-of-<n>/`` folders of a sharded run -> one run folder with the
same rows as an unsharded run (``fastasd score --merge``; the last shard to finish runs it).
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

from fastasd._io import atomic_open, atomic_write_json
from fastasd.scoring.journal import (
    ERRORS_FILE,
    ERRORS_HEADER,
    RUN_FILE,
    SCORES_FILE,
    SCORES_HEADER,
    WARNINGS_FILE,
    WARNINGS_HEADER,
    _clear_submission_files,
    _read_journal,
    _write_submission_from,
    submission_files_in,
)
from fastasd.scoring.lock import RunLock, RunLocked

# One logger for the whole job, under the name the log lines have always had (the CLI prints it).
logger = logging.getLogger("fastasd.score")  # the name its log lines always had

_SHARD_DIR_RE = re.compile(r"^shard-(\d+)-of-(\d+)$")


def shard_dir_name(i: int, n: int) -> str:
    """Folder of shard ``i`` of ``n`` inside the output folder: ``shard-<i>-of-<n>``."""
    return f"shard-{i}-of-{n}"


def _shard_dirs_in(out_dir: Path) -> list[Path]:
    found = [p for p in out_dir.iterdir() if p.is_dir() and _SHARD_DIR_RE.match(p.name)] if out_dir.is_dir() else []
    return sorted(found, key=lambda p: tuple(int(v) for v in _SHARD_DIR_RE.match(p.name).groups()[::-1]))


def _read_run_json(folder: Path) -> dict:
    try:
        info = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def check_merge_target(out: Path, shard_dirs: list[Path], *, overwrite: bool) -> None:
    """FileExistsError unless a merge of ``shard_dirs`` may write into ``out``: it may when
    ``out`` holds no results (``scores.csv``, ``errors.csv``, submission files), when they are an
    earlier merge of the same shard folders (merging again refreshes them), or with ``overwrite``."""
    held = [p.name for p in (out / SCORES_FILE, out / ERRORS_FILE) if os.path.lexists(p)]
    held += [p.name for p in submission_files_in(out)]
    if not held or overwrite:
        return
    merged_from = _read_run_json(out).get("merged_from")
    if isinstance(merged_from, list) and {_same(p) for p in merged_from} == {_same(d) for d in shard_dirs}:
        return
    shown = ", ".join(held[:3]) + (f", ... ({len(held)} files)" if len(held) > 3 else "")
    raise FileExistsError(f"{out} holds the results of another run ({shown}) that the merge of the shards "
                          "would replace: choose another folder, or pass overwrite=True (--overwrite)")


def _same(path) -> str:
    return os.path.realpath(os.fspath(path))


def _merge_if_all_done(out_dir: Path, n: int, submission: bool | None, *, overwrite: bool = False) -> None:
    """Merge when every shard of ``n`` in ``out_dir`` is complete (the last one to finish does it)."""
    dirs = [d for d in _shard_dirs_in(out_dir) if _SHARD_DIR_RE.match(d.name)[2] == str(n)]
    states = []
    for d in dirs:
        try:
            states.append(json.loads((d / RUN_FILE).read_text()).get("complete", False))
        except (OSError, ValueError):
            states.append(False)
    if len(dirs) == n and all(states):
        logger.info("all %d shards complete: merging into %s", n, out_dir)
        try:
            merge_shards(dirs, out_dir, submission=submission, overwrite=overwrite)
        except RunLocked as e:  # two shards finished together: the other one merges
            logger.info("not merging here: %s", e)
        except FileExistsError as e:
            logger.warning("shards not merged: %s (then: fastasd score --merge --overwrite --out %s)", e, out_dir)
        except ValueError as e:  # e.g. another shard still holds an earlier run's rows, of another model
            logger.warning("shards not merged: %s (this shard is complete; merge with: fastasd score --merge "
                           "--out %s)", e, out_dir)
    else:
        logger.info("shard done; %d of %d shards complete in %s (merge with: fastasd score --merge --out %s)",
                    sum(states), n, out_dir, out_dir)


def merge_shards(shard_dirs: Iterable[str | os.PathLike] | None, out_dir: str | os.PathLike, *,
                 submission: bool | None = None, allow_incomplete: bool = False, overwrite: bool = False) -> dict:
    """Merge the outputs of a sharded run into ``out_dir``.

    Args:
        shard_dirs: the shard folders (each with ``scores.csv``, ``errors.csv``, ``run.json``);
            None: every ``shard-<i>-of-<n>`` folder in ``out_dir``.
        out_dir: where ``scores.csv``, ``errors.csv``, ``run.json`` and the submission files go.
        submission: write the DCASE submission files (None: yes, with a warning instead of an
            error for duplicate file names in a section; False: no).
        allow_incomplete: merge although a shard is missing or did not finish (the merged
            ``run.json`` then says ``"complete": false``).
        overwrite: replace the results of another run in ``out_dir`` (an earlier merge of the
            same shard folders is refreshed without it); the submission files already there are
            removed first, so none of another run's stays behind.

    Returns:
        Summary: ``scored``, ``errors``, ``shards``, ``complete``.

    Raises:
        ValueError: shards of different ``n`` or scored with different models, a shard twice, a
            missing or unfinished shard (unless ``allow_incomplete``), or one clip in two shards.
        FileExistsError: ``out_dir`` holds another run's results and not ``overwrite``.
        RunLocked: another process is writing to ``out_dir``.
    """
    out = Path(out_dir)
    dirs = _shard_dirs_in(out) if shard_dirs is None else [Path(d) for d in shard_dirs]
    if not dirs:
        raise ValueError(f"merge: no shard folders given or found in {out} (expected shard-<i>-of-<n>/)")
    seen_shards: dict[int, Path] = {}
    models: dict[str, str] = {}  # model sha256 -> its path, of every shard that records one
    total = None
    complete = True
    for d in dirs:
        if not (d / SCORES_FILE).exists():
            raise ValueError(f"merge: {d} has no {SCORES_FILE}")
        try:
            info = json.loads((d / RUN_FILE).read_text())
            si, sn = info["shard"]
        except (OSError, ValueError, KeyError, TypeError):
            m = _SHARD_DIR_RE.match(d.name)
            if not m:
                raise ValueError(f"merge: {d} has no readable {RUN_FILE} and is not named shard-<i>-of-<n>") from None
            si, sn, info = int(m[1]), int(m[2]), {}
        if total is None:
            total = sn
        elif sn != total:
            raise ValueError(f"merge: {d} is shard {si}/{sn} but others are of {total}")
        if si in seen_shards:
            raise ValueError(f"merge: shard {si}/{sn} given twice ({seen_shards[si]} and {d})")
        seen_shards[si] = d
        if info.get("model_sha256"):
            models.setdefault(str(info["model_sha256"]), str(info.get("model") or "?"))
        if not info.get("complete", False):
            complete = False
            if not allow_incomplete:
                raise ValueError(f"merge: {d} (shard {si}/{sn}) did not finish; resume it "
                                 f"(--resume --shard {si}/{sn}) or pass allow_incomplete")
    missing = sorted(set(range(total)) - set(seen_shards))
    if missing:
        complete = False
        if not allow_incomplete:
            raise ValueError(f"merge: shard(s) {missing} of {total} missing")
    if len(models) > 1:
        raise ValueError("merge: the shards were scored with different models ("
                         + ", ".join(f"{path} sha256 {h[:12]}..." for h, path in models.items()) + ")")

    scores: dict[str, list[str]] = {}
    errs: dict[str, list[str]] = {}
    notes: dict[str, list[str]] = {}
    for si in sorted(seen_shards):
        d = seen_shards[si]
        for path, header, rows_by_name in ((d / SCORES_FILE, SCORES_HEADER, scores),
                                           (d / ERRORS_FILE, ERRORS_HEADER, errs)):
            if not os.path.lexists(path):
                continue
            for row in _read_journal(path, header):
                if row[0] in scores or row[0] in errs:
                    raise ValueError(f"merge: {row[0]} is in two shards (were they run on different inputs?)")
                rows_by_name[row[0]] = row
        if os.path.lexists(d / WARNINGS_FILE):
            notes.update((row[0], row) for row in _read_journal(d / WARNINGS_FILE, WARNINGS_HEADER))
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        check_merge_target(out, [seen_shards[k] for k in sorted(seen_shards)], overwrite=overwrite)
        _clear_submission_files(out, overwrite=True, what="the merge")  # ours or, with overwrite, replaced
        outputs = [(out / SCORES_FILE, SCORES_HEADER, scores), (out / ERRORS_FILE, ERRORS_HEADER, errs)]
        if notes:
            outputs.append((out / WARNINGS_FILE, WARNINGS_HEADER, notes))
        elif os.path.lexists(out / WARNINGS_FILE):
            os.unlink(out / WARNINGS_FILE)
        for path, header, rows in outputs:
            with atomic_open(path, "w", encoding="utf-8", newline="") as f:
                w = csv.writer(f, lineterminator="\n")
                w.writerow(header)
                w.writerows(rows[k] for k in sorted(rows))
        summary = {"scored": len(scores), "errors": len(errs), "shards": total, "complete": complete}
        if submission is not False:
            summary["submission_files"] = _write_submission_from(out / SCORES_FILE, out, strict=submission is True)
        model = next(iter(models.items()), (None, ""))
        atomic_write_json(out / RUN_FILE, {"merged_from": [str(seen_shards[k]) for k in sorted(seen_shards)],
                                           "shard": [0, 1], "model": model[1], "model_sha256": model[0],
                                           "complete": complete, "summary": summary})
    return summary
