"""Training checkpoints: where they live, how they are written (atomically) and read (safely).

``<out_dir>/checkpoints/member_<m>.pt`` is replaced after every epoch. It is a ``torch.save`` of
plain containers of tensors, numbers and strings only and is read back with
``torch.load(..., weights_only=True)``: a checkpoint never unpickles arbitrary objects.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from fastasd._io import atomic_open
from fastasd.config import BACKEND_FIELDS, Config

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "checkpoint_path", "load_checkpoint",
           "check_resumable", "save_checkpoint", "set_rng_state"]

CHECKPOINT_FORMAT = "fastasd.checkpoint"
CHECKPOINT_VERSION = 1
# Config fields that may differ between a checkpoint and the run resuming it: they do not change
# what the optimizer steps compute (epochs may grow to train longer; backend settings act later).
_RESUME_FREE = frozenset({"epochs", "device", "num_workers", "mixed_precision", "ensemble_size",
                          *BACKEND_FIELDS})


def checkpoint_path(out_dir: str | os.PathLike, member: int = 0) -> Path:
    """Where :func:`fastasd.training.train_model` keeps the checkpoint of ensemble member ``member``."""
    return Path(out_dir) / "checkpoints" / f"member_{member}.pt"


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a training checkpoint safely (``torch.load(weights_only=True)``: tensors, numbers,
    strings and plain containers only). Raises ``ValueError`` naming the file if it is not one."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated file, not a zip, disallowed (pickled) objects ...
        raise ValueError(f"{path}: not a readable fastasd checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a fastasd checkpoint (format {ckpt.get('format') if isinstance(ckpt, dict) else None!r})")
    if int(ckpt.get("version", 0)) > CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {ckpt['version']} is newer than this fastasd "
                         f"({CHECKPOINT_VERSION})")
    return ckpt


def check_resumable(ckpt: dict, config: Config, classes: list[str], member: int, path: Path) -> None:
    """Raise ``ValueError`` naming ``path`` unless ``ckpt`` can continue this training."""
    saved = Config.from_dict(json.loads(ckpt["config"]))
    diff = [k for k, v in config.to_dict().items()
            if k not in _RESUME_FREE and saved.to_dict().get(k) != v]
    if diff:
        raise ValueError(f"{path}: cannot resume: the checkpoint was trained with other settings "
                         f"({', '.join(f'{k}={saved.to_dict()[k]!r}' for k in diff)}); "
                         f"use a new --out or the same settings")
    if list(ckpt["classes"]) != list(classes):
        raise ValueError(f"{path}: cannot resume: the training data give {len(classes)} classes, "
                         f"the checkpoint has {len(ckpt['classes'])} (different data?)")
    if int(ckpt["member"]) != member:
        raise ValueError(f"{path}: checkpoint of member {ckpt['member']}, expected {member}")


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the global torch (and CUDA) generators saved in a checkpoint."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model, loss_module, optimizer, scaler, config: Config, encoder,
                    member: int, epoch: int, step: int, history: list[dict]) -> None:
    """Write the checkpoint atomically; only tensors, numbers, strings and plain containers."""
    import fastasd

    def cpu(sd):
        return {k: v.detach().cpu() for k, v in sd.items()}

    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "fastasd": str(fastasd.__version__),
        "torch": str(torch.__version__),  # TorchVersion would need unpickling a class
        "member": int(member),
        "epoch": int(epoch),
        "step": int(step),
        "config": json.dumps(config.to_dict()),
        "classes": list(encoder.classes_),
        "model": cpu(model.state_dict()),
        "loss": cpu(loss_module.state_dict()),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "rng": _rng_state(),
        "history": [dict(h) for h in history],
    }
    with atomic_open(path, "wb") as f:
        torch.save(ckpt, f)
