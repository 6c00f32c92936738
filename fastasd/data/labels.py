"""Auxiliary-task classes: one class per (machine type, section, attribute tail, domain).

As in the author's code, the classes are every distinct combination among ALL training clips,
of the development and evaluation sets alike (342 on DCASE 2022). The encoder maps a clip to its
class index; it saves to and loads from JSON so a trained model keeps its class order.

Which meta information forms the classes is a choice (``Config.aux_classes``, :data:`AUX_CLASSES`):
the paper's four parts, or fewer. Teaching the network to tell apart the very attribute along
which the target domain shifts (a speed never seen in the source domain) makes target clips look
anomalous; ``no_attributes`` hides the attribute tails, ``section`` keeps machine type and section.
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

#: ``Config.aux_classes`` value -> the clip fields that form the class key, in order.
AUX_CLASSES: dict[str, tuple[str, ...]] = {
    "paper": ("machine_type", "section", "attributes", "domain"),
    "no_attributes": ("machine_type", "section", "domain"),
    "no_domain": ("machine_type", "section", "attributes"),
    "section": ("machine_type", "section"),
}


def class_key(clip: Clip, aux_classes: str = "paper") -> str:
    """The auxiliary class of a clip: ``"<machine_type>/<section>/<attributes>/<domain>"`` for the
    paper's classes, the parts of :data:`AUX_CLASSES` ``[aux_classes]`` otherwise.

    ``/`` cannot occur in a file name, so the parts never run into each other.
    """
    return "/".join(str(getattr(clip, f)) for f in _fields(aux_classes))


def _fields(aux_classes: str) -> tuple[str, ...]:
    try:
        return AUX_CLASSES[aux_classes]
    except KeyError:
        raise ValueError(f"aux_classes {aux_classes!r} is not one of {list(AUX_CLASSES)}") from None


class ClassEncoder:
    """Map clips to auxiliary class indices (sklearn-style: ``fit`` returns self).

    Args:
        aux_classes: which meta information forms the classes (:data:`AUX_CLASSES`; the
            paper's four parts by default).

    Attributes:
        classes_: the class keys (see :func:`class_key`), sorted, index = position.
    """

    def __init__(self, aux_classes: str = "paper") -> None:
        _fields(aux_classes)  # a clear error now rather than at fit
        self.aux_classes = aux_classes
        self.classes_: list[str] = []
        self._index: dict[str, int] = {}

    def fit(self, clips: Iterable[Clip]) -> ClassEncoder:
        """Learn the classes from the training clips among ``clips`` (test clips are ignored,
        so the whole output of ``discover`` can be passed).

        Raises:
            ValueError: when there is no training clip.
        """
        keys = {class_key(c, self.aux_classes) for c in clips if c.split == "train"}
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
            key = class_key(c, self.aux_classes)
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
        return (isinstance(other, ClassEncoder) and self.classes_ == other.classes_
                and self.aux_classes == other.aux_classes)

    def __repr__(self) -> str:
        extra = "" if self.aux_classes == "paper" else f", aux_classes={self.aux_classes!r}"
        return f"ClassEncoder({len(self.classes_)} classes{extra})"

    def to_dict(self) -> dict:
        """JSON-able state."""
        return {"format": _FORMAT, "version": _VERSION, "aux_classes": self.aux_classes,
                "classes": list(self.classes_)}

    @classmethod
    def from_dict(cls, d: dict) -> ClassEncoder:
        """Rebuild an encoder from :meth:`to_dict` output (one saved before ``aux_classes``
        existed has the paper's classes)."""
        if not isinstance(d, dict) or d.get("format") != _FORMAT or "classes" not in d:
            raise ValueError(f"ClassEncoder.from_dict: not a {_FORMAT} state")
        if d.get("version", _VERSION) > _VERSION:
            raise ValueError(f"ClassEncoder.from_dict: version {d['version']} is newer than {_VERSION}")
        enc = cls(str(d.get("aux_classes", "paper")))
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


#: With fewer auxiliary classes than this the classifier has (almost) nothing to learn: training
#: warns (:func:`few_classes_message`). One class gives a loss of about 0 from the first steps.
FEW_CLASSES = 4


def few_classes_message(encoder: ClassEncoder, clips: Iterable[Clip]) -> str | None:
    """A warning for a fitted ``encoder`` with fewer than :data:`FEW_CLASSES` classes: what the
    training clips lack (machine types, sections, attributes, domains), what it means and what to
    do; None when there are enough classes."""
    n = len(encoder)
    if n >= FEW_CLASSES:
        return None
    train = [c for c in clips if c.split == "train"]
    attrs = {c.attributes for c in train} - {"noAttribute"}  # DCASE's name for "none"
    domains = sorted({c.domain for c in train})
    facts = [f"{len({c.machine_type for c in train})} machine type(s)",
             f"{len({(c.machine_type, c.section) for c in train})} section(s)",
             "no attribute in their names" if attrs <= {""} else f"{len(attrs)} attribute tail(s)",
             f"{len(domains)} domain(s) ({', '.join(domains)})"]
    left_out = [f for f in ("attributes", "domain") if f not in _fields(encoder.aux_classes)]
    if left_out:
        facts.append(f"aux_classes={encoder.aux_classes!r} leaves out the {' and '.join(left_out)}")
    return (
        f"the auxiliary task has only {n} class(es) ({', '.join(encoder.classes_)}): the "
        f"{len(train)} training clips hold {', '.join(facts)}. The embedding network learns by "
        "telling these classes apart: with one class there is nothing to learn (the loss is "
        "about 0 from the first steps), with a few very little, and its anomaly scores are then "
        "not worth the training. What to do: train on more machine types or sections at once "
        "(every training clip of every root given defines the classes, e.g. the development "
        "and evaluation sets together), or use the simple baseline (fastasd baseline: no "
        "training), or add the self-supervised feature-exchange task (--featex-prob 0.5, "
        "Config.featex_prob), which gives the network something to learn of its own.")
