"""Training a whole ensemble: its members one after the other in this process, or spread over
the processes of ``torchrun`` (one member per rank, or each member data-parallel over all
ranks; :mod:`fastasd.training.distributed`). What happens with the trained networks (fit the
backends, save the detector) is the caller's ``finish`` callback, run on rank 0 only.
"""
from __future__ import annotations

import logging
from typing import Callable

from fastasd.config import Config
from fastasd.training.loop import resolve_device, train_model

logger = logging.getLogger("fastasd.api")  # the name its log lines always had

__all__ = ["train_ensemble"]

# finish(models, encoder, clips, histories, device, progress) -> the caller's result
Finish = Callable[..., object]


def train_ensemble(data_root, cfg: Config, finish: Finish, *, out_dir=None, ground_truth=None,
                   progress: bool | None = None, resume: bool = False, device=None,
                   data_parallel: bool = False):
    """Train the ``cfg.ensemble_size`` members on the training clips of ``data_root`` and return
    ``finish(models, encoder, clips, histories, device, progress)``.

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process calls this with the same arguments. By
    default rank ``r`` trains members ``r, r + W, ...`` (their checkpoints are written by that
    rank) and rank 0 receives every member; with ``data_parallel`` the members are trained one
    after the other, each with ``DistributedDataParallel`` over all ranks. Rank 0 runs ``finish``
    and returns its result; the other ranks return None once rank 0 has finished.
    """
    from fastasd.data.layout import discover
    from fastasd.training import distributed

    ctx = distributed.setup(device, cfg, single=data_parallel)
    if ctx is None:
        if data_parallel:
            logger.warning("data_parallel=True outside torchrun (WORLD_SIZE unset or 1): training "
                           "in this one process")
        dev = resolve_device(device, cfg)
        clips = discover(data_root, ground_truth=ground_truth, splits=("train",))
        models, histories, encoder = [], [], None
        for member in range(cfg.ensemble_size):
            model, _loss, enc, history = train_model(clips, cfg, out_dir=out_dir, resume=resume,
                                                     progress=progress, device=dev, member=member)
            encoder = _same_classes(encoder, enc)
            models.append(model)
            histories.append(history)
        return finish(models, encoder, clips, histories, dev, progress)
    try:
        return _train_distributed(ctx, data_root, out_dir, cfg, ground_truth, progress, resume,
                                  data_parallel, finish)
    except BaseException as e:
        ctx.fail(e)
        raise
    finally:
        ctx.close()


def _same_classes(encoder, enc):
    if encoder is not None and enc.classes_ != encoder.classes_:  # cannot happen: same clips
        raise RuntimeError("train: ensemble members disagree on the classes")
    return enc


def _train_distributed(ctx, data_root, out_dir, cfg: Config, ground_truth, progress, resume,
                       data_parallel: bool, finish: Finish):
    """:func:`train_ensemble` on one torchrun rank (``ctx`` from
    :func:`fastasd.training.distributed.setup`)."""
    from fastasd.data.layout import discover
    from fastasd.model import EmbeddingNet
    from fastasd.training.distributed import broadcast_json, broadcast_tensors

    dev, rank, world = ctx.device, ctx.rank, ctx.world_size
    progress = progress if ctx.is_main else False
    clips = discover(data_root, ground_truth=ground_truth, splits=("train",))
    n = cfg.ensemble_size
    models, histories, encoder = [None] * n, [None] * n, None
    if data_parallel:
        for member in range(n):
            model, _loss, enc, history = train_model(clips, cfg, out_dir=out_dir, resume=resume,
                                                     progress=progress, device=dev, member=member,
                                                     data_parallel=True)
            encoder = _same_classes(encoder, enc)
            models[member], histories[member] = model, history
    else:
        mine = list(range(rank, n, world))
        if not mine:
            logger.warning("rank %d: no ensemble member to train (ensemble_size %d < %d processes; "
                           "--data-parallel uses every process for each member)", rank, n, world)
        for member in mine:
            model, _loss, enc, history = train_model(clips, cfg, out_dir=out_dir, resume=resume,
                                                     progress=progress, device=dev, member=member)
            encoder = _same_classes(encoder, enc)
            models[member], histories[member] = model, history
        # Ranks finish at different times (W need not divide N): wait without a collective, so
        # that a failed or silent rank is reported instead of timing out a collective.
        ctx.done("trained")
        ctx.wait("trained", "training its ensemble members")
        if encoder is None:  # a rank without members still needs the classes to build receivers
            from fastasd.data.labels import ClassEncoder

            encoder = ClassEncoder(cfg.aux_classes).fit([c for c in clips if c.split == "train"])
        for member in range(n):
            owner = member % world
            model = models[member] if owner == rank else EmbeddingNet(cfg, cfg.num_samples)
            state = model.state_dict()
            received = broadcast_tensors(list(state.values()), owner, dev)
            if owner != rank:
                model.load_state_dict(dict(zip(state.keys(), received)))
                model.to(dev).eval()
            models[member] = model
            histories[member] = broadcast_json(histories[member] if owner == rank else None, owner, dev)
    result = None
    if ctx.is_main:
        result = finish(models, encoder, clips, histories, dev, progress)
    ctx.done("saved")
    ctx.wait("saved", "fitting the backends and saving the model", ranks=[0])
    import torch.distributed as dist

    dist.barrier()  # every rank saw "saved" before rank 0 (which may host the store) exits
    return result
