"""Batch scoring: audio files, folders, archives and DCASE roots -> anomaly scores, as a
restartable, shardable production job.

Command line::

    fastasd score MODEL_DIR INPUT... --out DIR [--batch-size 64] [--workers N]
                  [--section MACHINE:SS] [--resume | --overwrite] [--shard i/n]
                  [--submission | --no-submission] [--bf16] [--device cpu|cuda|cuda:1]
    fastasd score --merge --out DIR [SHARD_DIR...]
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
  (the decoder's reason), an unsafe archive member (``unsafe member name ...``), an unreadable
  archive (``cannot read archive ...``), and a clip whose machine type/section the model does not
  know (reason ``unknown section <mt>/<ss>``; with ``unknown/unknown`` when the path says
  nothing: give ``--section``). Non-audio members, links and training clips of a DCASE archive
  are only counted (summary ``skipped``).
* ``run.json``: inputs, shard, settings, ``complete`` and, at the end, the summary.
* the DCASE submission files (``anomaly_score_<mt>_section_<ss>_test.csv`` and
  ``decision_result_...``) of every machine type and section scored, written at the end from ALL
  rows of ``scores.csv`` (so a resumed run's files are complete). Rule: ``--submission`` always
  writes them (and fails on two clips of one section with the same file name, which the DCASE
  format cannot hold); ``--no-submission`` never does; by default (neither flag) they are
  written, and skipped with a warning when a section has duplicate file names. A shard never
  writes them (its sections would be partial): the merge does, by the same rule.

An existing ``scores.csv`` in ``DIR`` is never silently replaced: ``--resume`` continues it,
``--overwrite`` starts again.

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
``4 x batch_size`` clips are in flight, so memory is bounded whatever the archive size. A batcher
thread copies waveforms, in input order, into one of three reusable batch buffers (pinned memory
when the detector is on CUDA, copied with ``non_blocking=True``), so decoding and batch assembly
overlap the model. ``--bf16`` runs the model under bfloat16 autocast.

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
    ScoreResult,
    read_scores_csv,
)
from fastasd.scoring.merge import merge_shards, shard_dir_name
from fastasd.scoring.pipeline import default_device, default_num_workers
from fastasd.scoring.run import score_inputs
from fastasd.scoring.watch import watch_inputs

__all__ = ["score_inputs", "watch_inputs", "merge_shards", "read_scores_csv", "ScoreResult", "default_device",
           "default_num_workers", "shard_dir_name", "SCORES_FILE", "ERRORS_FILE", "RUN_FILE", "SCORES_HEADER",
           "ERRORS_HEADER"]
