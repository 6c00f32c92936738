"""Batch scoring: audio files, folders, archives and DCASE roots -> anomaly scores, as a
restartable, shardable production job.

Command line::

    fastasd score MODEL_DIR INPUT... --out DIR [--batch-size 64] [--workers N]
                  [--section MACHINE:SS] [--resume | --overwrite] [--shard i/n]
                  [--submission | --no-submission] [--precision auto|float32|bfloat16]
                  [--device cpu|cuda|cuda:1]
    fastasd score --merge --out DIR [SHARD_DIR...] [--overwrite]
    fastasd score --onnx detector.onnx INPUT... --out DIR [...]   # onnxruntime, fastasd.export
    fastasd score MODEL_DIR INPUT_DIR... --out DIR --watch [--poll-interval 2]

Python: :func:`score_inputs` (also ``Detector.score(inputs, **kwargs)``), :func:`watch_inputs`
and :func:`merge_shards`. Any object with the interface :func:`score_inputs` documents can be the
detector: :class:`fastasd.api.Detector`, or :class:`fastasd.export.OnnxDetector` for ``--onnx``.

Inputs: see :mod:`fastasd.data.inputs` (files, folders, globs, ``.zip``/``.tar``/``.tar.gz``
read member by member in memory, list files; a DCASE root or machine-type folder gives its test
clips). Machine type and section come from each clip's DCASE path (``<mt>/test/section_00_...``,
also inside archives) or from ``--section MACHINE:SS`` for every clip.

Outputs in ``DIR``:

* ``scores.csv``: header ``file,file_name,machine_type,section,domain,label,score,decision``, one
  row per scored clip (``file`` is the path or ``archive::member``; ``score`` higher = more
  anomalous, written with Python's round-trip float repr; ``decision`` 0|1 by the detector's
  per-section threshold). It is an append-only journal, flushed after every batch (and fsync'd
  every 30 s and at the end), so a crash loses at most the batch in flight. Rows come in the
  order the clips were read.
* ``errors.csv``: header ``file,reason``, one row per clip that was not scored: unreadable audio
  (the decoder's reason; also a sample rate outside 1..768 kHz or a decoded copy over
  ``FASTASD_MAX_DECODED_BYTES``), an unsafe archive member (``unsafe member name ...``), a name
  several members of one archive share (none is read), an unreadable archive (``cannot read
  archive ...``), a missing entry of a list file, a clip the model fails on or scores non-finite
  (``scoring failed (...)``, ``the score is not finite``; never a decision), and a clip whose
  machine type/section the model does not know (reason ``unknown section <mt>/<ss>``; with
  ``unknown/unknown`` when the path says nothing: give ``--section``). Non-audio members, links
  and training clips of a DCASE archive are only counted (summary ``skipped``). Whatever one clip
  does, it ends in ``scores.csv`` or ``errors.csv`` and the run goes on: a batch the model fails
  on is scored again clip by clip, so only the culprits are reported. Only a model that fails on
  a clip of plain noise too stops the run (it, or its device, is broken; ``--resume`` goes on).
* ``warnings.csv`` (only when there is one): header ``file,warning``, clips scored but worth a
  word: a clip far shorter than the model's clip length (less than half of it, or a truncated
  file whose header declares more data), mostly zero padding.
* File names are written as UTF-8; bytes of a name that are not UTF-8 (Latin-1 names from a
  Windows share) as ``\\xNN`` (:func:`fastasd.data.inputs.text_name`), the same on every resume.
* ``run.json``: inputs, shard, settings, ``complete`` and, at the end, the summary.
* the DCASE submission files (``anomaly_score_<mt>_section_<ss>_test.csv`` and
  ``decision_result_...``) of every machine type and section scored, written at the end from ALL
  rows of ``scores.csv`` (so a resumed run's files are complete). Rule: ``--submission`` always
  writes them (and fails on two clips of one section with the same file name, which the DCASE
  format cannot hold); ``--no-submission`` never does; by default (neither flag) they are
  written, and skipped with a warning when a section has duplicate file names. A shard never
  writes them (its sections would be partial): the merge does, by the same rule.

An existing ``scores.csv`` in ``DIR`` is never silently replaced: ``--resume`` continues it,
``--overwrite`` starts again (and removes the replaced run's submission files). A new run into a
folder that holds submission files of another run is refused the same way. ``run.json`` records
the model (``model``: its path, ``model_sha256``: a digest of its files' SHA-256s, see
``Detector.identity``), and ``--resume`` with another model is refused. One process at a time
writes a run folder (:mod:`fastasd.scoring.lock`): a second one is refused with the first one's
pid. The journals are never opened through a symbolic link, and a new run creates them
exclusively.

Resume: every clip named in ``scores.csv`` or ``errors.csv`` is done; a partial last line left by
a crash is discarded (that clip is scored again), the rest of the clips are scored and appended.
With the same inputs, an interrupted then resumed run gives the same rows as an uninterrupted one
(each clip exactly once; order may differ only around the interruption).

Pipeline: the main thread runs only the model. A feeder thread enumerates the work and reads
compressed-tar members as the stream reaches them. Decoding runs in ``--workers`` processes
(spawned, which is safe with CUDA and threads; files, zip members and uncompressed-tar members
are read by the worker itself, by path or byte offset), and in a thread of this process until the
first worker is up; ``--workers 0`` (the default on CPU, where one decode thread keeps up with
the model, see :func:`default_num_workers`) decodes in that thread only. At most
``4 x batch_size`` clips are in flight, so memory is bounded whatever the archive size (a
``batch_size`` whose buffers cannot fit in the memory available is refused; ``--workers`` is
capped at the CPUs this process may use). Each clip decodes only the frames its clip length
needs (plus the resampler's margin; the same samples as decoding the whole file), and an archive
member over 64 MiB is read on demand, not into memory (:meth:`~fastasd.data.inputs.AudioSource.open`). A batcher
thread copies waveforms, in input order, into one of three reusable batch buffers (pinned memory
when the detector is on CUDA, copied with ``non_blocking=True``), so decoding and batch assembly
overlap the model. ``--precision`` (default ``auto``: bfloat16 on a CPU that computes it faster,
:mod:`fastasd.precision`) sets what the networks compute in; ``--bf16`` is ``--precision bfloat16``.

Sharding (several GPUs or nodes): ``--shard i/n`` scores every n-th clip of the deterministic
input list starting at i (:func:`fastasd.data.inputs.shard_sources`); under ``torchrun`` the shard
defaults to ``RANK/WORLD_SIZE`` and the device to ``cuda:LOCAL_RANK``::

    torchrun --nnodes 2 --nproc-per-node 8 -m fastasd score MODEL INPUT... --out /shared/run

A sharded run writes to ``DIR/shard-<i>-of-<n>/`` (``scores.csv``, ``errors.csv``, ``run.json``;
each resumable on its own). Merge: the last shard to finish merges automatically when it sees
every shard complete in ``DIR`` (a shared file system); otherwise copy the shard folders into one
``DIR`` and run ``fastasd score --merge --out DIR`` (or name the shard folders). The merge checks
that shards ``0..n-1`` are all present and complete and that no clip is in two shards, then
writes ``DIR/scores.csv`` and ``DIR/errors.csv`` (rows sorted by file), ``DIR/run.json`` and the
submission files: the same rows as an unsharded run.

Modules: :mod:`~fastasd.scoring.run` (the scoring run), :mod:`~fastasd.scoring.pipeline` (decoding
and batches), :mod:`~fastasd.scoring.journal` (``scores.csv``, ``errors.csv``, ``run.json``),
:mod:`~fastasd.scoring.lock` (one writer per run folder),
:mod:`~fastasd.scoring.watch` (``--watch``), :mod:`~fastasd.scoring.merge` (the shard merge); the
command line is :mod:`fastasd.cli.score`.
"""
from __future__ import annotations

from fastasd.scoring.journal import (
    ERRORS_FILE,
    ERRORS_HEADER,
    RUN_FILE,
    SCORES_FILE,
    SCORES_HEADER,
    WARNINGS_FILE,
    WARNINGS_HEADER,
    ScoreResult,
    read_scores_csv,
)
from fastasd.scoring.lock import RunLocked
from fastasd.scoring.merge import merge_shards, shard_dir_name
from fastasd.scoring.pipeline import default_device, default_num_workers
from fastasd.scoring.run import (
    EXIT_NOTHING_SCORED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_STOPPED,
    EXIT_USAGE,
    exit_status,
    score_inputs,
)
from fastasd.scoring.watch import watch_inputs

__all__ = ["score_inputs", "watch_inputs", "merge_shards", "read_scores_csv", "ScoreResult", "default_device",
           "default_num_workers", "shard_dir_name", "SCORES_FILE", "ERRORS_FILE", "WARNINGS_FILE", "RUN_FILE",
           "SCORES_HEADER", "ERRORS_HEADER", "WARNINGS_HEADER", "RunLocked", "exit_status", "EXIT_OK",
           "EXIT_STOPPED", "EXIT_USAGE", "EXIT_SOME_FAILED", "EXIT_NOTHING_SCORED"]
