"""What a training run says once about its data before it trains: too few auxiliary classes for
the classifier to learn anything (:func:`fastasd.data.labels.few_classes_message`), and how many
training clips the clip length crops or zero-pads; and ``clip_seconds="auto"``, resolved to the
most common length of the training clips.
"""
from __future__ import annotations

import logging
from typing import Sequence

from fastasd.config import Config
from fastasd.data.lengths import header_seconds, log_length_fit, most_common_seconds
from fastasd.data.labels import few_classes_message

logger = logging.getLogger("fastasd.train")  # the training's log lines

__all__ = ["check_training_data", "resolve_clip_seconds"]


def check_training_data(train_clips: Sequence, encoder, config: Config) -> None:
    """Log, once per training run (the caller calls it for one member on one process): a
    WARNING when the auxiliary task has too few classes, and how many training clips are
    cropped or zero-padded to ``config.clip_seconds`` (a WARNING when any is)."""
    text = few_classes_message(encoder, train_clips)
    if text:
        logger.warning(text)
    log_length_fit(train_clips, config.clip_seconds, "training clips", logger,
                   hint="; --clip-seconds auto trains on the most common length")


def resolve_clip_seconds(config: Config, data_root, ground_truth=None) -> Config:
    """``config`` itself, or with ``clip_seconds="auto"`` replaced by the most common duration
    of the training clips of ``data_root`` (read from the file headers; logged).

    Raises ``ValueError`` when no training clip's duration can be read.
    """
    if config.clip_seconds != "auto":
        return config
    from fastasd.data.layout import discover

    clips = discover(data_root, ground_truth=ground_truth, splits=("train",))
    seconds = header_seconds(clips)
    best = most_common_seconds(seconds)
    if best is None:
        raise ValueError(f"clip_seconds='auto': no duration readable among the {len(clips)} "
                         f"training clips of {data_root}")
    n = sum(1 for s in seconds if s is not None and round(s, 3) == best)
    logger.info("clip_seconds auto: %g s, the length of %d of the %d training clips", best, n,
                len(clips))
    return config.replace(clip_seconds=best)
