"""Training: the layer below :mod:`fastasd.api` that turns clips into trained networks and
fitted backends. One module per job:

- :mod:`~fastasd.training.loop`: the training loop of one ensemble member (:func:`train_model`);
- :mod:`~fastasd.training.checkpoint`: its per-epoch checkpoints, written atomically, read safely;
- :mod:`~fastasd.training.ensemble`: a whole ensemble, in one process or over ``torchrun`` ranks;
- :mod:`~fastasd.training.distributed`: the ``torchrun`` process group, failure detection and
  the data-parallel batch split;
- :mod:`~fastasd.training.backend_fit`: embedding the training clips and fitting the backends
  and thresholds on them.
"""
from fastasd.training.checkpoint import checkpoint_path, load_checkpoint
from fastasd.training.loop import build_member, resolve_device, train_model

__all__ = ["train_model", "build_member", "resolve_device", "checkpoint_path", "load_checkpoint"]
