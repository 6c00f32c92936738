"""Training of one ensemble member, and the ``fastasd train`` command.

:func:`train_model` trains one :class:`fastasd.model.EmbeddingNet` with the sub-cluster AdaCos
loss (adaptive scale) on the auxiliary task "which (machine type, section, attributes, domain)
is this clip", exactly as the paper: Adam (lr 1e-3, eps 1e-7), mixup on every batch, the coupled
L2 penalty ``l2 * sum(w**2)`` added to the loss, batch 64, 10 epochs (the defaults of
:class:`fastasd.config.Config`).

Determinism: member ``m`` uses seed ``config.seed + m``. The weights and the centers are drawn
from that seed; the shuffling order and the mixup coefficients of epoch ``e`` come from
generators seeded by ``(seed, e)``, so an epoch's randomness does not depend on what ran before
it. Together with the checkpointed model, loss (centers, scale) and optimizer states this makes
``resume=True`` reproduce an uninterrupted run exactly (on the same device and build).

Checkpoints: after every epoch ``<out_dir>/checkpoints/member_<m>.pt`` is replaced atomically.
It is a ``torch.save`` of plain containers of tensors, numbers and strings only and is read back
with ``torch.load(..., weights_only=True)``: a checkpoint never unpickles arbitrary objects.

Many processes (``torchrun``): :func:`fastasd.api.train` spreads the ensemble members over the
processes (each member trained exactly as here) or, with ``data_parallel``, trains each member
with ``DistributedDataParallel`` (``train_model(..., data_parallel=True)``); see
:mod:`fastasd.distributed`. ``fastasd train --data-parallel`` selects the second mode.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fastasd._io import atomic_open
from fastasd.config import BACKEND_FIELDS, PRESETS, Config

logger = logging.getLogger(__name__)

__all__ = ["train_model", "resolve_device", "build_member", "checkpoint_path", "load_checkpoint",
           "add_cli_arguments", "run_cli"]

CHECKPOINT_FORMAT = "fastasd.checkpoint"
CHECKPOINT_VERSION = 1
# Config fields that may differ between a checkpoint and the run resuming it: they do not change
# what the optimizer steps compute (epochs may grow to train longer; backend settings act later).
_RESUME_FREE = frozenset({"epochs", "device", "num_workers", "mixed_precision", "ensemble_size",
                          *BACKEND_FIELDS})
# Decoded training audio is kept in memory (num_workers == 0) when it needs at most this many MiB.
_CACHE_MIB = float(os.environ.get("FASTASD_TRAIN_CACHE_MIB", "2048"))


def resolve_device(device: str | torch.device | None = None, config: Config | None = None) -> torch.device:
    """The torch device to run on: ``device`` if given, else ``config.device``; ``"auto"`` (or
    ``None`` without a config) means CUDA when available, else CPU."""
    spec = device if device is not None else (config.device if config is not None else "auto")
    if isinstance(spec, torch.device):
        return spec
    if spec in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} requested but CUDA is not available "
                           f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    return dev


def _epoch_seed(seed: int, epoch: int, purpose: int) -> int:
    """A 63-bit seed for (member seed, epoch, purpose); independent of everything else."""
    return int(np.random.SeedSequence([seed, epoch, purpose]).generate_state(2, np.uint64)[0] >> np.uint64(1))


_SHUFFLE, _MIXUP = 1, 2


def build_member(config: Config, n_classes: int, seed: int, num_samples: int | None = None):
    """A freshly initialized ``(EmbeddingNet, SubclusterAdaCos)`` pair drawn from ``seed``."""
    from fastasd.loss import SubclusterAdaCos
    from fastasd.model import EmbeddingNet

    torch.manual_seed(seed)
    model = EmbeddingNet(config, num_samples)
    gen = torch.Generator().manual_seed(_epoch_seed(seed, 0, 0))
    loss = SubclusterAdaCos(model.embedding_dim, n_classes, config.n_subclusters,
                            trainable_centers=config.trainable_centers,
                            angle_mode=config.scale_angle, generator=gen)
    return model, loss


def checkpoint_path(out_dir: str | os.PathLike, member: int = 0) -> Path:
    """Where :func:`train_model` keeps the checkpoint of ensemble member ``member``."""
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


def _check_resumable(ckpt: dict, config: Config, classes: list[str], member: int, path: Path) -> None:
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


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _autocast_dtype(config: Config, device: torch.device, amp_dtype: str | torch.dtype | None):
    """The autocast dtype for training, or None for full float32."""
    if amp_dtype is None:
        if not config.mixed_precision:
            return None
        amp_dtype = "bfloat16"
    dtype = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
             "fp16": torch.float16}.get(amp_dtype, amp_dtype) if isinstance(amp_dtype, str) else amp_dtype
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"amp_dtype must be bfloat16 or float16, got {amp_dtype!r}")
    if device.type != "cuda":
        logger.warning("mixed precision is for CUDA; training on %s in float32", device)
        return None
    return dtype


def train_model(
    clips: Sequence,
    config: Config,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool | None = None,
    device: str | torch.device | None = None,
    member: int = 0,
    *,
    amp_dtype: str | torch.dtype | None = None,
    max_steps: int | None = None,
    step_callback: Callable[[int, Any, Any], None] | None = None,
    data_parallel: bool = False,
):
    """Train one ensemble member.

    Args:
        clips: :class:`fastasd.data.layout.Clip` objects; the training clips among them
            (``split == "train"``) are used. The auxiliary classes are every distinct
            (machine type, section, attribute string, domain) among ALL of them
            (:class:`fastasd.data.labels.ClassEncoder`), development and evaluation sets alike.
        config: the :class:`~fastasd.config.Config` (epochs, batch size, learning rate, ...).
        out_dir: folder for the per-epoch checkpoint ``checkpoints/member_<m>.pt``; None = no
            checkpoints.
        resume: continue from the checkpoint in ``out_dir`` if there is one (same settings and
            data required; ``epochs`` may be larger to train longer). Without a checkpoint the
            training starts from scratch.
        progress: tqdm progress bar on stderr with loss and clips/s (None: only on a terminal).
        device: torch device; None = ``config.device`` (``auto``: CUDA if available).
        member: ensemble member index: seed ``config.seed + member``.
        amp_dtype: mixed precision on CUDA: ``"bfloat16"`` (default when
            ``config.mixed_precision``) or ``"float16"`` (with a gradient scaler). The loss is
            always computed in float32.
        max_steps: stop after this many optimizer steps in total (for step studies; the
            checkpoint of an unfinished epoch is not written).
        step_callback: ``f(step, model, loss_module)`` called after every optimizer step (the
            model is in training mode again when it returns).
        data_parallel: train this member with ``DistributedDataParallel`` over the initialized
            default process group (every rank calls this with the same arguments; see
            :mod:`fastasd.distributed` and "Data-parallel training" below).

    Data-parallel training: the global batches are the one-process batches (the same shuffle
    generator on every rank); rank ``r`` takes the clips of
    :func:`fastasd.distributed.mirrored_positions` (pairs of mixup partners), mixes them with the
    global batch's mixup coefficients, i.e. the partners are those of the GLOBAL batch reversed,
    exactly as in one process; the AdaCos scale is updated from the global batch
    (:func:`fastasd.loss.global_updated_scale`, the same value on every rank); each rank's loss
    is weighted by its share of the global batch so that DDP's gradient average is the gradient
    of the global batch's mean loss. BatchNorm: ``SyncBatchNorm`` (global batch statistics) on
    CUDA; on CPU (gloo has no SyncBatchNorm) each rank normalizes with its own share's
    statistics, so the loss curve differs slightly from one process, and the running statistics
    are averaged over the ranks after every epoch. A last batch smaller than ``2 * world_size``
    clips is dropped each epoch. Rank 0 alone writes the checkpoint; on ``resume`` every rank
    reads it (``out_dir`` on a file system all ranks see). Without BatchNorm the loss curve
    equals the one-process curve up to float rounding (tests/test_distributed.py).

    Returns:
        ``(model, loss_module, encoder, history)``: the trained ``EmbeddingNet`` (eval mode, on
        ``device``), the ``SubclusterAdaCos`` with its centers and final scale, the fitted
        ``ClassEncoder`` and a list with one dict per epoch (``epoch``, ``step``, ``loss``: mean
        training loss, ``scale``, ``seconds``, ``clips_per_second``, ``losses``: the loss of
        every step; in data-parallel training these are the global batch's, the clip counts and
        clips/s those of all ranks).
    """
    from tqdm.auto import tqdm

    from fastasd.data.dataset import ClipDataset
    from fastasd.data.labels import ClassEncoder
    from fastasd.loss import mixup
    from fastasd.model import l2_penalty

    rank, world = 0, 1
    if data_parallel:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise ValueError("train_model: data_parallel=True needs an initialized process group "
                             "(run under torchrun through fastasd.train / fastasd train)")
        rank, world = dist.get_rank(), dist.get_world_size()
        if config.batch_size < 2 * world:
            raise ValueError(f"train_model: data-parallel training on {world} processes needs "
                             f"batch_size >= {2 * world} (2 clips per process), got {config.batch_size}")
    train_clips = [c for c in clips if c.split == "train"]
    if not train_clips:
        raise ValueError("train_model: no training clips (split == 'train') given")
    encoder = ClassEncoder().fit(train_clips)
    n_classes = len(encoder)
    dev = resolve_device(device, config)
    seed = int(config.seed) + int(member)
    num_samples = config.num_samples

    model, loss_module = build_member(config, n_classes, seed, num_samples)
    sync_bn = data_parallel and dev.type == "cuda"
    if sync_bn:  # BatchNorm statistics over the global batch (CUDA only in PyTorch)
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    loss_module.global_batch = data_parallel
    model.to(dev)
    loss_module.to(dev)
    params = list(model.parameters()) + [p for p in loss_module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.learning_rate, eps=config.adam_eps)
    autocast_dtype = _autocast_dtype(config, dev, amp_dtype)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)

    # ---- resume -------------------------------------------------------------------------
    start_epoch, step, history = 0, 0, []
    ckpt_file = checkpoint_path(out_dir, member) if out_dir is not None else None
    if resume and ckpt_file is not None and ckpt_file.exists():
        ckpt = load_checkpoint(ckpt_file)
        _check_resumable(ckpt, config, encoder.classes_, member, ckpt_file)
        model.load_state_dict(ckpt["model"])
        loss_module.load_state_dict(ckpt["loss"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        start_epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        history = [dict(h) for h in ckpt["history"]]
        logger.info("member %d: resuming from %s after epoch %d (step %d)", member, ckpt_file,
                    start_epoch, step)
    elif resume and ckpt_file is None:
        raise ValueError("train_model: resume=True needs out_dir (where the checkpoints are)")
    net = model
    if data_parallel:
        from torch.nn.parallel import DistributedDataParallel

        from fastasd.distributed import all_equal

        rows = all_equal([start_epoch, step], dev)
        if rows is not None:
            raise ValueError(f"train_model: the ranks resume from different points (epoch, step per "
                             f"rank: {rows}); {ckpt_file} must be the same file on every rank "
                             f"(out_dir on a shared file system)")
        # The buffers (BatchNorm statistics) are synchronized at the start (DDP's initial
        # broadcast from rank 0), not at every step: see the docstring.
        import inspect

        sync = ({"forward_sync_buffers": False}
                if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                else {"broadcast_buffers": False})
        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None, **sync)

    # ---- data ---------------------------------------------------------------------------
    cache_mib = len(train_clips) * num_samples * 4 / 2**20
    cache = config.num_workers == 0 and cache_mib <= _CACHE_MIB
    dataset = ClipDataset(train_clips, num_samples, sample_rate=config.sample_rate, encoder=encoder,
                          cache=cache, channel=config.channel)
    shuffle_gen = torch.Generator()
    if data_parallel:
        from fastasd.distributed import MirroredBatchSampler, mirrored_positions

        # The one-process loader's order: DataLoader(shuffle=True) = RandomSampler(generator),
        # and the loader draws its worker base seed from the same generator first.
        batch_sampler = MirroredBatchSampler(
            torch.utils.data.RandomSampler(dataset, generator=shuffle_gen), config.batch_size, rank, world)
        global_sizes = batch_sampler.global_sizes()
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=batch_sampler, num_workers=config.num_workers,
            generator=shuffle_gen, pin_memory=dev.type == "cuda", persistent_workers=False)
        dropped = len(dataset) - sum(global_sizes)
        if dropped and rank == 0:
            logger.info("member %d: data-parallel on %d processes: the last %d clip(s) of each "
                        "epoch's order are left out (fewer than 2 per process)", member, world, dropped)
    else:
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=config.batch_size, shuffle=True, drop_last=False,
            num_workers=config.num_workers, generator=shuffle_gen, pin_memory=dev.type == "cuda",
            persistent_workers=False,
        )
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * config.epochs
    if max_steps is not None:
        total_steps = min(total_steps, int(max_steps))
    logger.info("member %d: %d training clips, %d classes, %d steps/epoch, %d epochs, device %s%s%s",
                member, len(train_clips), n_classes, steps_per_epoch, config.epochs, dev,
                f", autocast {autocast_dtype}" if autocast_dtype else "",
                f", data-parallel rank {rank} of {world}" if data_parallel else "")

    bar = tqdm(total=total_steps, initial=min(step, total_steps), unit="step",
               desc=f"train[{member}]" if config.ensemble_size > 1 else "train",
               disable=(True if rank != 0 else None if progress is None else not progress),
               file=sys.stderr, dynamic_ncols=True)
    model.train()
    loss_module.train()
    try:
        for epoch in range(start_epoch, config.epochs):
            if max_steps is not None and step >= max_steps:
                break
            shuffle_gen.manual_seed(_epoch_seed(seed, epoch, _SHUFFLE))
            mix_gen = torch.Generator().manual_seed(_epoch_seed(seed, epoch, _MIXUP))
            t0 = time.perf_counter()
            step_losses = []
            n_clips = n_steps = 0
            for waves, targets in loader:
                waves = waves.to(dev, non_blocking=True)
                onehot = torch.nn.functional.one_hot(targets.to(dev), n_classes).float()
                if data_parallel:
                    global_size = global_sizes[n_steps]
                    positions = mirrored_positions(global_size, rank, world)
                if config.mixup:
                    where = {"positions": positions, "batch_size": global_size} if data_parallel else {}
                    waves, onehot = mixup(waves, onehot, mix_gen, label_rule=config.mixup_label, **where)
                with (torch.autocast(device_type=dev.type, dtype=autocast_dtype)
                      if autocast_dtype is not None else contextlib.nullcontext()):
                    emb = net(waves)
                # The loss (and the L2 term) in float32, outside autocast.
                loss = loss_module(emb.float(), onehot)
                if data_parallel:
                    # DDP averages the ranks' gradients: weight each rank's mean by its share
                    loss = loss * (waves.shape[0] * world / global_size)
                if config.l2 > 0:
                    loss = loss + config.l2 * l2_penalty(model)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if data_parallel and loss_module.trainable_centers:  # not inside DDP
                    dist.all_reduce(loss_module.centers.grad)
                    loss_module.centers.grad.div_(world)
                scaler.step(optimizer)
                scaler.update()
                step += 1
                n_steps += 1
                n_clips += global_size if data_parallel else waves.shape[0]
                step_losses.append(loss.detach())
                if n_steps % 10 == 1 or n_steps == steps_per_epoch:
                    # reading the loss synchronizes with the GPU: only every 10 steps
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise FloatingPointError(f"train_model: the loss became {value} at step {step} "
                                                 f"(epoch {epoch + 1}); try a lower learning_rate")
                    elapsed = max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{value:.3f}",
                                    clips_s=f"{n_clips / elapsed:.1f}", refresh=False)
                bar.update(1)
                if step_callback is not None:
                    step_callback(step, model, loss_module)
                    model.train()
                    loss_module.train()
                if max_steps is not None and step >= max_steps:
                    break
            losses = torch.stack(step_losses).double() if step_losses else torch.zeros(0, dtype=torch.float64, device=dev)
            if data_parallel:
                # the global loss: the mean of the ranks' weighted losses (the L2 term is the same
                # on every rank); BatchNorm running statistics: their mean over the ranks
                dist.all_reduce(losses)
                losses /= world
                if not sync_bn:
                    from fastasd.distributed import average_batchnorm_statistics

                    average_batchnorm_statistics(model)
            losses = losses.cpu().tolist()
            seconds = time.perf_counter() - t0
            record = {"epoch": epoch + 1, "step": step, "loss": sum(losses) / max(n_steps, 1),
                      "scale": float(loss_module.scale), "seconds": seconds,
                      "clips_per_second": n_clips / max(seconds, 1e-9), "losses": losses}
            if n_steps < steps_per_epoch:  # stopped by max_steps: not a finished epoch
                record["partial"] = True
                history.append(record)
                break
            history.append(record)
            logger.info("member %d epoch %d/%d: loss %.4f, scale %.3f, %.1f clips/s", member,
                        epoch + 1, config.epochs, record["loss"], record["scale"],
                        record["clips_per_second"])
            if ckpt_file is not None and rank == 0:
                _save_checkpoint(ckpt_file, model, loss_module, optimizer, scaler, config, encoder,
                                 member, epoch + 1, step, history)
            if data_parallel and ckpt_file is not None:
                dist.barrier()  # the checkpoint is complete before any rank goes on
    finally:
        bar.close()
    if sync_bn:  # back to a plain EmbeddingNet (the same state dict keys)
        from fastasd.model import EmbeddingNet

        plain = EmbeddingNet(config, num_samples)
        plain.load_state_dict(model.state_dict())
        model = plain.to(dev)
    loss_module.global_batch = False
    model.eval()
    loss_module.eval()
    return model, loss_module, encoder, history


def _save_checkpoint(path: Path, model, loss_module, optimizer, scaler, config: Config, encoder,
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


# --------------------------------------------------------------------------- CLI
_CLI_SKIP = frozenset()  # every Config field gets a switch


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fastasd train``: data, output, preset, and one switch per Config field."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.description = (
        "Train a detector (an ensemble of embedding networks + per-section backend) on the "
        "training clips of one or more DCASE-layout roots and save it to MODEL_DIR. Defaults "
        "are the paper's configuration (--preset paper); every switch below overrides the "
        "preset.")
    parser.add_argument("data_root", nargs="+", metavar="DATA_ROOT",
                        help="DCASE root(s) (<root>/<machine_type>/train) or machine-type folders; "
                             "give development and evaluation roots together to train on both")
    parser.add_argument("--out", required=True, metavar="MODEL_DIR", help="where to save the model")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted training from MODEL_DIR/checkpoints")
    parser.add_argument("--ground-truth", metavar="GT", default=None,
                        help="ground-truth folder for unlabelled test names (not needed to train)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="paper",
                        help="base configuration: the paper's system, the paper's Table 7 "
                             "'standard design choices', the small demo setting, or the paper's "
                             "system with domain-balanced (local-density normalized) scores")
    parser.add_argument("--config", metavar="JSON", default=None,
                        help="a config.json (e.g. of a saved model) as the base instead of --preset")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--data-parallel", action="store_true",
                        help="under torchrun: train each ensemble member with DistributedDataParallel "
                             "over all processes (each global batch of --batch-size clips split over "
                             "them) instead of one member per process (the default)")
    add_config_switches(parser.add_argument_group("configuration (default: the preset's value)"))


def add_config_switches(group, names=None) -> None:
    """One ``--<field>`` switch per Config field (or per field in ``names``), default None (= keep
    the base configuration's value); :func:`config_overrides` reads them back."""
    for name, typ, default, help_text, choices in Config.fields_help():
        if name in _CLI_SKIP or (names is not None and name not in names):
            continue
        metavar = "{" + ",".join(map(str, choices)) + "}" if choices else (
            "BOOL" if typ is bool else typ.__name__.upper())
        group.add_argument(_option(name), dest=f"cfg_{name}", default=None, metavar=metavar,
                           help=f"{help_text} [paper: {default}]")


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The Config fields set by :func:`add_config_switches` switches, parsed."""
    overrides = {}
    for name, *_ in Config.fields_help():
        text = getattr(args, f"cfg_{name}", None)
        if text is not None:
            overrides[name] = Config.parse_value(name, text)
    return overrides


def config_from_args(args: argparse.Namespace) -> Config:
    """The Config of a parsed ``fastasd train`` command line (preset or --config, then switches)."""
    if getattr(args, "config", None):
        with open(args.config, encoding="utf-8") as f:
            base = Config.from_dict(json.load(f))
    else:
        base = Config.preset(args.preset)
    overrides = config_overrides(args)
    return base.replace(**overrides) if overrides else base


def run_cli(args: argparse.Namespace) -> int:
    """Run ``fastasd train``; returns the exit status."""
    from fastasd import api
    from fastasd.data.audio import AudioError

    try:
        config = config_from_args(args)
    except (ValueError, OSError) as e:
        print(f"fastasd train: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        detector = api.train(args.data_root, out_dir=args.out, config=config,
                             ground_truth=args.ground_truth, resume=args.resume,
                             progress=False if args.no_progress else None,
                             data_parallel=args.data_parallel)
    except (ValueError, FileNotFoundError, RuntimeError, AudioError) as e:
        rank = f" (rank {os.environ['RANK']})" if "RANK" in os.environ else ""
        print(f"fastasd train{rank}: {e}", file=sys.stderr)
        return 2
    if detector is None:  # a torchrun rank other than 0: rank 0 saved the model
        return 0
    print(f"trained {len(detector.models)} model(s) on {detector.info.get('n_train_clips', '?')} clips "
          f"({len(detector.encoder)} classes, {len(detector.known_sections)} sections) in "
          f"{time.perf_counter() - t0:.0f} s; saved to {args.out}")
    return 0
