"""One process of the distributed-training tests (tests/test_distributed.py), started by torchrun
or by the test itself with RANK/WORLD_SIZE/MASTER_* set.

    python tests/dist_worker.py MODE DATA_ROOT OUT_DIR

Modes:
  dp    data-parallel training of tiny members with the per-step scale of this rank recorded
        (train_model), an interrupted + resumed run, and fastasd.train(data_parallel=True);
        writes OUT_DIR/rank<r>.json.
  fail  rank 1 fails inside fastasd.train (a data root that does not exist); rank 0 must fail
        with a message naming rank 1.
  die   rank 1 exits abruptly (os._exit, no clean-up) when it starts training; rank 0 must fail
        with the heartbeat message.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from tiny import tiny_config  # noqa: E402

# Configurations of the data-parallel test: without BatchNorm (the spectrum branch without its
# dense layers has none) the 2-process curve equals the 1-process one up to float rounding; with
# BatchNorm (the demo preset) CPU ranks normalize with their half of the batch.
DP_CONFIGS = {
    "no_bn": dict(representation="spectrum", spectrum_dense_layers=0, epochs=2),
    "bn": dict(epochs=2),
    # FeatEx's trainable head lives outside DDP: its gradients are averaged by hand
    "featex_adaproj": dict(epochs=2, featex_prob=0.5, loss="adaproj", adaproj_dim=8),
}


def run_dp(root: str, out: Path, rank: int) -> None:
    from fastasd import api
    from fastasd.training import distributed
    from fastasd.data.layout import discover
    from fastasd.training import train_model

    ctx = distributed.setup("cpu")
    clips = discover(root, splits=("train",))
    result = {"rank": rank, "world": ctx.world_size, "backend": ctx.backend}
    for name, overrides in DP_CONFIGS.items():
        scales = []
        model, loss, _enc, hist = train_model(
            clips, tiny_config(**overrides), progress=False, data_parallel=True,
            step_callback=lambda step, m, lm: scales.append(float(lm.scale)))
        result[name] = {"losses": [x for h in hist for x in h["losses"]], "scales": scales,
                        "state": {k: v.tolist() for k, v in model.state_dict().items()
                                  if k.endswith("embed.weight") or k.endswith("running_mean")},
                        "loss_state": {k: v.tolist() for k, v in loss.state_dict().items()}}
    # resume: 1 epoch, then resumed to 2, equals 2 epochs in one go
    cfg1, cfg2 = tiny_config(epochs=1), tiny_config(epochs=2)
    full = train_model(clips, cfg2, out_dir=out / "full", progress=False, data_parallel=True)[0]
    train_model(clips, cfg1, out_dir=out / "cut", progress=False, data_parallel=True)
    resumed = train_model(clips, cfg2, out_dir=out / "cut", resume=True, progress=False,
                          data_parallel=True)[0]
    result["resume_equal"] = all(torch.equal(a, b) for a, b in
                                 zip(full.state_dict().values(), resumed.state_dict().values()))
    det = api.train(root, out_dir=out / "model", config=tiny_config(ensemble_size=1),
                        data_parallel=True)
    result["detector"] = det is not None
    ctx.close()
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def run_fail(root: str, out: Path, rank: int, die: bool) -> None:
    import fastasd.training.ensemble  # noqa: F401
    from fastasd import api

    if rank == 1:
        if die:
            train_module = sys.modules["fastasd.training.ensemble"]

            def dead(*args, **kwargs):
                os._exit(3)
            train_module.train_model = dead
        else:
            root = str(Path(root) / "no_such_folder")
    api.train(root, out_dir=out / "model", config=tiny_config(ensemble_size=2))


def main() -> None:
    mode, root, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    if mode == "dp":
        run_dp(root, out, rank)
    else:
        run_fail(root, out, rank, die=mode == "die")


if __name__ == "__main__":
    main()
