"""The training loop of one ensemble member.

:func:`train_model` trains one :class:`fastasd.model.EmbeddingNet` with the sub-cluster AdaCos
loss (adaptive scale) on the auxiliary task "which (machine type, section, attributes, domain)
is this clip", exactly as the paper: Adam (lr 1e-3, eps 1e-7), mixup on every batch, the coupled
L2 penalty ``l2 * sum(w**2)`` added to the loss, batch 64, 10 epochs (the defaults of
:class:`fastasd.config.Config`). Options: the classes (``aux_classes``), the AdaProj loss
(``loss``) and FeatEx feature exchange (``featex_prob``), see :func:`build_member`. Its
steps: build or resume (:func:`_build_or_resume`), the
data loader (:func:`_make_loader`), one epoch (:func:`_train_epoch`) of optimizer steps
(:func:`_train_step`), the checkpoint after every epoch (:mod:`fastasd.training.checkpoint`).

Determinism: member ``m`` uses seed ``config.seed + m``. The weights and the centers are drawn
from that seed; the shuffling order and the mixup coefficients of epoch ``e`` come from
generators seeded by ``(seed, e)``, so an epoch's randomness does not depend on what ran before
it. Together with the checkpointed model, loss (centers, scale) and optimizer states this makes
``resume=True`` reproduce an uninterrupted run exactly (on the same device and build).

Many processes (``torchrun``): :func:`fastasd.training.ensemble.train_ensemble` spreads the
ensemble members over the processes (each member trained exactly as here) or, with
``data_parallel``, trains each member with ``DistributedDataParallel``
(``train_model(..., data_parallel=True)``); see :mod:`fastasd.training.distributed`.
``fastasd train --data-parallel`` selects the second mode.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fastasd.config import Config
from fastasd.training.checkpoint import (check_resumable, checkpoint_path, load_checkpoint,
                                         save_checkpoint, set_rng_state)

logger = logging.getLogger("fastasd.train")  # the name its log lines always had

__all__ = ["train_model", "resolve_device", "build_member"]
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


_SHUFFLE, _MIXUP, _FEATEX = 1, 2, 3


def build_member(config: Config, n_classes: int, seed: int, num_samples: int | None = None):
    """A freshly initialized ``(EmbeddingNet, loss)`` pair drawn from ``seed``: the loss is
    ``config.loss``'s (:class:`~fastasd.loss.SubclusterAdaCos` or :class:`~fastasd.loss.AdaProj`).
    With ``config.featex_prob > 0`` it carries the FeatEx classifier over ``3 * n_classes``
    classes as its submodule ``featex`` (:class:`~fastasd.loss.FeatEx`), so that the loss
    module's state, parameters and checkpoint include it."""
    from fastasd.loss import FeatEx
    from fastasd.model import EmbeddingNet

    torch.manual_seed(seed)
    model = EmbeddingNet(config, num_samples)
    gen = torch.Generator().manual_seed(_epoch_seed(seed, 0, 0))
    loss = _classifier(config, model.embedding_dim, n_classes, config.trainable_centers, gen)
    if config.featex_prob > 0:  # its own head, centers trainable as in the author's FeatEx code
        head = _classifier(config, model.embedding_dim, 3 * n_classes, True, gen)
        loss.featex = FeatEx(head, config.embedding_dim, config.featex_prob, config.featex_weight)
    return model, loss


def _classifier(config: Config, embedding_dim: int, n_classes: int, trainable: bool, gen):
    from fastasd.loss import AdaProj, SubclusterAdaCos

    if config.loss == "adaproj":
        return AdaProj(embedding_dim, n_classes, config.adaproj_dim, trainable_centers=trainable,
                       generator=gen)
    return SubclusterAdaCos(embedding_dim, n_classes, config.n_subclusters, trainable_centers=trainable,
                            angle_mode=config.scale_angle, generator=gen)


def _autocast_dtype(config: Config, device: torch.device, amp_dtype: str | torch.dtype | None):
    """The autocast dtype for training, or None for full float32. On CPU only bfloat16, and only
    where this CPU computes it faster (:func:`fastasd.precision.cpu_prefers_bfloat16`: bfloat16
    matrix instructions and a measured matmul gain); elsewhere a warning and float32."""
    if amp_dtype is None:
        if not config.mixed_precision:
            return None
        amp_dtype = "bfloat16"
    dtype = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
             "fp16": torch.float16}.get(amp_dtype, amp_dtype) if isinstance(amp_dtype, str) else amp_dtype
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"amp_dtype must be bfloat16 or float16, got {amp_dtype!r}")
    if device.type == "cpu":
        from fastasd.precision import cpu_prefers_bfloat16

        if dtype == torch.bfloat16 and cpu_prefers_bfloat16():
            return dtype
        logger.warning("mixed precision in %s is not faster on this CPU (fastasd.precision); "
                       "training in float32", "float16" if dtype == torch.float16 else "bfloat16")
        return None
    if device.type != "cuda":
        logger.warning("mixed precision is for CUDA and CPU; training on %s in float32", device)
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
            :mod:`fastasd.training.distributed` and "Data-parallel training" below).

    Data-parallel training: the global batches are the one-process batches (the same shuffle
    generator on every rank); rank ``r`` takes the clips of
    :func:`fastasd.training.distributed.mirrored_positions` (pairs of mixup partners), mixes them with the
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
        ``device``), the loss module (:func:`build_member`) with its centers and final scale, the fitted
        ``ClassEncoder`` and a list with one dict per epoch (``epoch``, ``step``, ``loss``: mean
        training loss, ``scale``, ``seconds``, ``clips_per_second``, ``losses``: the loss of
        every step; in data-parallel training these are the global batch's, the clip counts and
        clips/s those of all ranks).
    """
    from tqdm.auto import tqdm

    from fastasd.data.labels import ClassEncoder

    rank, world = _process_group(config, data_parallel)
    train_clips = [c for c in clips if c.split == "train"]
    if not train_clips:
        raise ValueError("train_model: no training clips (split == 'train') given")
    encoder = ClassEncoder(config.aux_classes).fit(train_clips)
    if member == 0 and rank == 0:  # once per run: too few classes, clips cropped or padded
        from fastasd.training.datacheck import check_training_data

        check_training_data(train_clips, encoder, config)
    dev = resolve_device(device, config)
    run = _build_or_resume(config, encoder, dev, member, out_dir, resume, amp_dtype,
                           data_parallel, rank, world)
    loader, global_sizes = _make_loader(run, train_clips)
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * config.epochs
    if max_steps is not None:
        total_steps = min(total_steps, int(max_steps))
    logger.info("member %d: %d training clips, %d classes, %d steps/epoch, %d epochs, device %s%s%s",
                member, len(train_clips), run.n_classes, steps_per_epoch, config.epochs, dev,
                f", autocast {run.autocast_dtype}" if run.autocast_dtype else "",
                f", data-parallel rank {rank} of {world}" if data_parallel else "")

    bar = tqdm(total=total_steps, initial=min(run.step, total_steps), unit="step",
               desc=f"train[{member}]" if config.ensemble_size > 1 else "train",
               disable=(True if rank != 0 else None if progress is None else not progress),
               file=sys.stderr, dynamic_ncols=True)
    run.model.train()
    run.loss_module.train()
    try:
        for epoch in range(run.start_epoch, config.epochs):
            if max_steps is not None and run.step >= max_steps:
                break
            record = _train_epoch(run, loader, global_sizes, epoch, bar, max_steps, step_callback)
            run.history.append(record)
            if record.get("partial"):  # stopped by max_steps: not a finished epoch
                break
            logger.info("member %d epoch %d/%d: loss %.4f, scale %.3f, %.1f clips/s", member,
                        epoch + 1, config.epochs, record["loss"], record["scale"],
                        record["clips_per_second"])
            _checkpoint(run, epoch + 1)
    finally:
        bar.close()
    return _finish(run)


def _process_group(config: Config, data_parallel: bool) -> tuple[int, int]:
    """``(rank, world size)`` of a data-parallel training, ``(0, 1)`` otherwise."""
    if not data_parallel:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        raise ValueError("train_model: data_parallel=True needs an initialized process group "
                         "(run under torchrun through fastasd.train / fastasd train)")
    rank, world = dist.get_rank(), dist.get_world_size()
    if config.batch_size < 2 * world:
        raise ValueError(f"train_model: data-parallel training on {world} processes needs "
                         f"batch_size >= {2 * world} (2 clips per process), got {config.batch_size}")
    return rank, world


@dataclass
class _MemberRun:
    """Everything one member's training holds between its steps."""
    config: Config
    encoder: Any
    dev: torch.device
    member: int
    seed: int
    rank: int
    world: int
    data_parallel: bool
    sync_bn: bool
    model: torch.nn.Module
    loss_module: torch.nn.Module
    net: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scaler: Any
    autocast_dtype: torch.dtype | None
    ckpt_file: Path | None
    start_epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    shuffle_gen: torch.Generator = field(default_factory=torch.Generator)

    @property
    def n_classes(self) -> int:
        return len(self.encoder)


def _build_or_resume(config: Config, encoder, dev: torch.device, member: int, out_dir, resume: bool,
                     amp_dtype, data_parallel: bool, rank: int, world: int) -> _MemberRun:
    """A fresh member (weights and centers from its seed) with its optimizer, continued from its
    checkpoint when resuming, and wrapped in ``DistributedDataParallel`` when data-parallel."""
    seed = int(config.seed) + int(member)
    model, loss_module = build_member(config, len(encoder), seed, config.num_samples)
    sync_bn = data_parallel and dev.type == "cuda"
    if sync_bn:  # BatchNorm statistics over the global batch (CUDA only in PyTorch)
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    _set_global_batch(loss_module, data_parallel)
    model.to(dev)
    loss_module.to(dev)
    params = list(model.parameters()) + [p for p in loss_module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.learning_rate, eps=config.adam_eps)
    autocast_dtype = _autocast_dtype(config, dev, amp_dtype)
    if autocast_dtype is not None and dev.type == "cpu":
        # oneDNN's bfloat16 convolutions without layout reorders: a step at batch 64 of 10-s clips
        # 1.05 s instead of 1.29 s (NCHW); the Parameters stay the same objects (optimizer intact)
        model.to(memory_format=torch.channels_last)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)
    run = _MemberRun(config=config, encoder=encoder, dev=dev, member=member, seed=seed, rank=rank,
                     world=world, data_parallel=data_parallel, sync_bn=sync_bn, model=model,
                     loss_module=loss_module, net=model, optimizer=optimizer, scaler=scaler,
                     autocast_dtype=autocast_dtype,
                     ckpt_file=checkpoint_path(out_dir, member) if out_dir is not None else None)
    if resume and run.ckpt_file is not None and run.ckpt_file.exists():
        _resume(run)
    elif resume and run.ckpt_file is None:
        raise ValueError("train_model: resume=True needs out_dir (where the checkpoints are)")
    if data_parallel:
        run.net = _wrap_ddp(run)
    return run


def _set_global_batch(loss_module: torch.nn.Module, on: bool) -> None:
    """Every classifier in the loss module (the main one, a FeatEx head) updates its scale from
    the global batch of all ranks (data-parallel training) or from its own rows."""
    for m in loss_module.modules():
        if hasattr(m, "global_batch"):
            m.global_batch = on


def _resume(run: _MemberRun) -> None:
    ckpt = load_checkpoint(run.ckpt_file)
    check_resumable(ckpt, run.config, run.encoder.classes_, run.member, run.ckpt_file)
    run.model.load_state_dict(ckpt["model"])
    run.loss_module.load_state_dict(ckpt["loss"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    run.start_epoch, run.step = int(ckpt["epoch"]), int(ckpt["step"])
    run.history = [dict(h) for h in ckpt["history"]]
    logger.info("member %d: resuming from %s after epoch %d (step %d)", run.member, run.ckpt_file,
                run.start_epoch, run.step)


def _wrap_ddp(run: _MemberRun) -> torch.nn.Module:
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    from fastasd.training.distributed import all_equal

    rows = all_equal([run.start_epoch, run.step], run.dev)
    if rows is not None:
        raise ValueError(f"train_model: the ranks resume from different points (epoch, step per "
                         f"rank: {rows}); {run.ckpt_file} must be the same file on every rank "
                         f"(out_dir on a shared file system)")
    # The buffers (BatchNorm statistics) are synchronized at the start (DDP's initial
    # broadcast from rank 0), not at every step: see the docstring of train_model.
    sync = ({"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else {"broadcast_buffers": False})
    dev = run.dev
    return DistributedDataParallel(run.model, device_ids=[dev.index] if dev.type == "cuda" else None, **sync)


def _make_loader(run: _MemberRun, train_clips: Sequence):
    """``(loader, global batch sizes)``; the sizes only when data-parallel (else None)."""
    from fastasd.data.dataset import ClipDataset

    config, dev = run.config, run.dev
    num_samples = config.num_samples
    cache_mib = len(train_clips) * num_samples * 4 / 2**20
    cache = config.num_workers == 0 and cache_mib <= _CACHE_MIB
    dataset = ClipDataset(train_clips, num_samples, sample_rate=config.sample_rate, encoder=run.encoder,
                          cache=cache, channel=config.channel)
    if not run.data_parallel:
        return torch.utils.data.DataLoader(
            dataset, batch_size=config.batch_size, shuffle=True, drop_last=False,
            num_workers=config.num_workers, generator=run.shuffle_gen, pin_memory=dev.type == "cuda",
            persistent_workers=False,
        ), None
    from fastasd.training.distributed import MirroredBatchSampler

    # The one-process loader's order: DataLoader(shuffle=True) = RandomSampler(generator),
    # and the loader draws its worker base seed from the same generator first.
    batch_sampler = MirroredBatchSampler(
        torch.utils.data.RandomSampler(dataset, generator=run.shuffle_gen), config.batch_size,
        run.rank, run.world)
    global_sizes = batch_sampler.global_sizes()
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batch_sampler, num_workers=config.num_workers,
        generator=run.shuffle_gen, pin_memory=dev.type == "cuda", persistent_workers=False)
    dropped = len(dataset) - sum(global_sizes)
    if dropped and run.rank == 0:
        logger.info("member %d: data-parallel on %d processes: the last %d clip(s) of each "
                    "epoch's order are left out (fewer than 2 per process)", run.member, run.world, dropped)
    return loader, global_sizes


def _train_epoch(run: _MemberRun, loader, global_sizes, epoch: int, bar, max_steps: int | None,
                 step_callback) -> dict:
    """One epoch (or its part up to ``max_steps``): its record for the history."""
    run.shuffle_gen.manual_seed(_epoch_seed(run.seed, epoch, _SHUFFLE))
    mix_gen = torch.Generator().manual_seed(_epoch_seed(run.seed, epoch, _MIXUP))
    # its own stream: switching FeatEx on leaves the shuffling and the mixup draws unchanged
    fx_gen = torch.Generator().manual_seed(_epoch_seed(run.seed, epoch, _FEATEX))
    steps_per_epoch = len(loader)
    t0 = time.perf_counter()
    step_losses = []
    n_clips = n_steps = 0
    for waves, targets in loader:
        global_size = global_sizes[n_steps] if run.data_parallel else waves.shape[0]
        loss = _train_step(run, waves, targets, mix_gen, global_size, fx_gen)
        run.step += 1
        n_steps += 1
        n_clips += global_size
        step_losses.append(loss.detach())
        if n_steps % 10 == 1 or n_steps == steps_per_epoch:
            # reading the loss synchronizes with the GPU: only every 10 steps
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"train_model: the loss became {value} at step {run.step} "
                                         f"(epoch {epoch + 1}); try a lower learning_rate")
            elapsed = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(epoch=epoch + 1, loss=f"{value:.3f}",
                            clips_s=f"{n_clips / elapsed:.1f}", refresh=False)
        bar.update(1)
        if step_callback is not None:
            step_callback(run.step, run.model, run.loss_module)
            run.model.train()
            run.loss_module.train()
        if max_steps is not None and run.step >= max_steps:
            break
    losses = _epoch_losses(run, step_losses)
    seconds = time.perf_counter() - t0
    record = {"epoch": epoch + 1, "step": run.step, "loss": sum(losses) / max(n_steps, 1),
              "scale": float(run.loss_module.scale), "seconds": seconds,
              "clips_per_second": n_clips / max(seconds, 1e-9), "losses": losses}
    if n_steps < steps_per_epoch:
        record["partial"] = True
    return record


def _train_step(run: _MemberRun, waves, targets, mix_gen: torch.Generator, global_size: int,
                fx_gen: torch.Generator | None = None) -> torch.Tensor:
    """One optimizer step on one (local) batch; returns its loss (on the device). With FeatEx
    (``run.loss_module.featex``) its weighted loss on the exchanged embeddings is added."""
    from fastasd.loss import mixup
    from fastasd.model import l2_penalty

    config, dev = run.config, run.dev
    waves = waves.to(dev, non_blocking=True)
    onehot = torch.nn.functional.one_hot(targets.to(dev), run.n_classes).float()
    where = {}
    if run.data_parallel:
        from fastasd.training.distributed import mirrored_positions

        where = {"positions": mirrored_positions(global_size, run.rank, run.world),
                 "batch_size": global_size}
    if config.mixup:
        waves, onehot = mixup(waves, onehot, mix_gen, label_rule=config.mixup_label, **where)
    with (torch.autocast(device_type=dev.type, dtype=run.autocast_dtype)
          if run.autocast_dtype is not None else contextlib.nullcontext()):
        emb = run.net(waves)
    # The loss (and the L2 term) in float32, outside autocast.
    loss = run.loss_module(emb.float(), onehot)
    featex = getattr(run.loss_module, "featex", None)
    if featex is not None:
        loss = loss + featex(emb.float(), onehot, fx_gen, **where)
    if run.data_parallel:
        # DDP averages the ranks' gradients: weight each rank's mean by its share
        loss = loss * (waves.shape[0] * run.world / global_size)
    if config.l2 > 0:
        loss = loss + config.l2 * l2_penalty(run.model)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if run.data_parallel:  # trainable centers (main or FeatEx head) are not inside DDP
        import torch.distributed as dist

        for p in run.loss_module.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(run.world)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return loss


def _epoch_losses(run: _MemberRun, step_losses: list) -> list[float]:
    """The epoch's per-step losses as floats; data-parallel: the global batch's, and the
    BatchNorm running statistics averaged over the ranks."""
    losses = (torch.stack(step_losses).double() if step_losses
              else torch.zeros(0, dtype=torch.float64, device=run.dev))
    if run.data_parallel:
        import torch.distributed as dist

        # the global loss: the mean of the ranks' weighted losses (the L2 term is the same
        # on every rank); BatchNorm running statistics: their mean over the ranks
        dist.all_reduce(losses)
        losses /= run.world
        if not run.sync_bn:
            from fastasd.training.distributed import average_batchnorm_statistics

            average_batchnorm_statistics(run.model)
    return losses.cpu().tolist()


def _checkpoint(run: _MemberRun, epochs_done: int) -> None:
    """After a finished epoch: rank 0 writes the checkpoint; data-parallel ranks wait for it."""
    if run.ckpt_file is None:
        return
    if run.rank == 0:
        save_checkpoint(run.ckpt_file, run.model, run.loss_module, run.optimizer, run.scaler,
                        run.config, run.encoder, run.member, epochs_done, run.step, run.history)
    if run.data_parallel:
        import torch.distributed as dist

        dist.barrier()  # the checkpoint is complete before any rank goes on


def _finish(run: _MemberRun):
    """``(model, loss_module, encoder, history)`` in eval mode, SyncBatchNorm undone."""
    model = run.model
    if run.sync_bn:  # back to a plain EmbeddingNet (the same state dict keys)
        from fastasd.model import EmbeddingNet

        plain = EmbeddingNet(run.config, run.config.num_samples)
        plain.load_state_dict(model.state_dict())
        model = plain.to(run.dev)
    _set_global_batch(run.loss_module, False)
    model.eval()
    run.loss_module.eval()
    return model, run.loss_module, run.encoder, run.history
