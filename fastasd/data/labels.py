"""Auxiliary-task classes: one class per (machine type, section, attribute tail, domain).

As in the author's code, the classes are every distinct combination among ALL training clips,
of the development and evaluation sets alike (342 on DCASE 2022). The encoder maps a clip to its
class index; it saves to and loads from JSON so a trained model keeps its class order.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable

import numpy as np

from fastasd._io import atomic_write_json
from fastasd.data.layout import Clip

_FORMAT = "fastasd.ClassEncoder"
_VERSION = 1


def class_key(clip: Clip) -> str:
    """The auxiliary class of a clip: ``"<machine_type>/<section>/<attributes>/<domain>"``.

    ``/`` cannot occur in a file name, so the four parts never run into each other.
    """
    return f"{clip.machine_type}/{clip.section}/{clip.attributes}/{clip.domain}"


class ClassEncoder:
    """Map clips to auxiliary class indices (sklearn-style: ``fit`` returns self).

    Attributes:
        classes_: the class keys (see :func:`class_key`), sorted, index = position.
    """

    def __init__(self) -> None:
        self.classes_: list[str] = []
        self._index: dict[str, int] = {}

    def fit(self, clips: Iterable[Clip]) -> ClassEncoder:
        """Learn the classes from the training clips among ``clips`` (test clips are ignored,
        so the whole output of ``discover`` can be passed).

        Raises:
            ValueError: when there is no training clip.
        """
        keys = {class_key(c) for c in clips if c.split == "train"}
        if not keys:
            raise ValueError("ClassEncoder.fit: no training clips (split == 'train') given")
        self._set_classes(sorted(keys))
        return self

    def _set_classes(self, classes: list[str]) -> None:
        if len(set(classes)) != len(classes):
            raise ValueError("ClassEncoder: duplicate class keys")
        self.classes_ = list(classes)
        self._index = {k: i for i, k in enumerate(self.classes_)}

    def transform(self, clips: Iterable[Clip]) -> np.ndarray:
        """Class index of each clip, as an int64 array.

        Raises:
            KeyError: naming the class key and the file, for a clip of a class not seen in fit.
        """
        out = []
        for c in clips:
            key = class_key(c)
            try:
                out.append(self._index[key])
            except KeyError:
                raise KeyError(f"unknown class {key!r} (file {c.path}); not among the "
                               f"{len(self.classes_)} classes the encoder was fitted on") from None
        return np.asarray(out, dtype=np.int64)

    def fit_transform(self, clips: Iterable[Clip]) -> np.ndarray:
        """``fit`` on the training clips, then ``transform`` all of ``clips``."""
        clips = list(clips)
        return self.fit(clips).transform(clips)

    def __len__(self) -> int:
        return len(self.classes_)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClassEncoder) and self.classes_ == other.classes_

    def __repr__(self) -> str:
        return f"ClassEncoder({len(self.classes_)} classes)"

    def to_dict(self) -> dict:
        """JSON-able state."""
        return {"format": _FORMAT, "version": _VERSION, "classes": list(self.classes_)}

    @classmethod
    def from_dict(cls, d: dict) -> ClassEncoder:
        """Rebuild an encoder from :meth:`to_dict` output."""
        if not isinstance(d, dict) or d.get("format") != _FORMAT or "classes" not in d:
            raise ValueError(f"ClassEncoder.from_dict: not a {_FORMAT} state")
        if d.get("version", _VERSION) > _VERSION:
            raise ValueError(f"ClassEncoder.from_dict: version {d['version']} is newer than {_VERSION}")
        enc = cls()
        enc._set_classes([str(k) for k in d["classes"]])
        return enc

    def save(self, path: str | os.PathLike) -> None:
        """Write the encoder as JSON (atomically)."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ClassEncoder:
        """Read an encoder written by :meth:`save`."""
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from e
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
