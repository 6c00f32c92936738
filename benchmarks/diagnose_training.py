"""What a trained model detects on a synthetic set: auxiliary-class accuracy on the test normals
and the AUC of each synthetic anomaly kind (benchmarks/results/diagnose_training_cpu.txt).

Trains one model with the ``demo`` preset (plus ``k=v,...`` overrides) for STEPS optimizer steps
and reports after each of EVAL_STEPS:

* the accuracy of the auxiliary classifier (the nearest sub-cluster center's class) on the test
  normal clips whose class exists in training;
* the AUC of the anomaly scores in each domain (that domain's test clips only);
* per anomaly kind (``synth_meta.csv``): the fraction of (anomaly, normal) pairs of the same
  section and domain where the anomaly scores higher, i.e. that kind's AUC::

    python benchmarks/diagnose_training.py DATA_ROOT STEPS [OVERRIDES] [EVAL_STEPS]
    python benchmarks/diagnose_training.py /tmp/fastasd_studies/steps_data_0 200 "" 25,200
"""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import studies  # noqa: E402
from fastasd.config import Config  # noqa: E402
from fastasd.data.labels import ClassEncoder, class_key  # noqa: E402
from fastasd.data.layout import discover  # noqa: E402
from fastasd.training import train_model  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    root, steps = argv[0], int(argv[1])
    overrides = studies.parse_variant("x:" + (argv[2] if len(argv) > 2 else ""))[1]
    evals = [int(s) for s in argv[3].split(",")] if len(argv) > 3 else [steps]
    cfg = Config.preset("demo").replace(**overrides)
    train = discover(root, splits=("train",))
    test = discover(root, splits=("test",))
    train_waves = studies.load_split(root, "train", cfg)[1]
    test_waves = studies.load_split(root, "test", cfg)[1]
    meta = {r["file_name"]: r for r in csv.DictReader(open(Path(root) / "synth_meta.csv"))}
    encoder = ClassEncoder().fit(train)
    normals: dict[tuple, list[int]] = {}
    kinds: dict[str, list[int]] = {}
    for i, c in enumerate(test):
        if c.label == "normal":
            normals.setdefault((c.machine_type, c.section, c.domain), []).append(i)
        else:
            kinds.setdefault(meta[c.file_name]["anomaly"], []).append(i)

    def report(step, model, loss_module):
        tr, te = studies.embed(model, train_waves), studies.embed(model, test_waves)
        sc = studies.backend_scores(cfg, tr, train, te, test)
        centers = torch.nn.functional.normalize(loss_module.centers.detach().float(), dim=0)
        emb = torch.nn.functional.normalize(torch.from_numpy(te), dim=1)
        pred = (emb @ centers).view(len(te), -1, cfg.n_subclusters).amax(-1).argmax(1).numpy()
        index = {k: y for y, k in enumerate(encoder.classes_)}
        known = [(i, index[class_key(c)]) for i, c in enumerate(test)
                 if c.label == "normal" and class_key(c) in index]
        ok = sum(int(pred[i] == y) for i, y in known)
        auc = {d: roc_auc_score([int(test[i].label == "anomaly") for i in idx], sc[idx])
               for d in ("source", "target")
               for idx in [np.array([i for i, c in enumerate(test) if c.domain == d])]}
        per_kind = []
        for kind, idx in sorted(kinds.items()):
            wins = [np.mean([sc[i] > sc[j] for j in normals[(test[i].machine_type, test[i].section, test[i].domain)]])
                    for i in idx]
            per_kind.append(f"{kind}:{np.mean(wins):.2f}")
        print(f"[step {step}] aux acc on test normals: {ok}/{len(known)}")
        print(f"[step {step}] AUC src {auc['source']:.3f} tgt {auc['target']:.3f} | " + " ".join(per_kind),
              flush=True)

    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    train_model(train, cfg.replace(epochs=math.ceil(steps / steps_per_epoch)), progress=False,
                max_steps=steps, step_callback=lambda s, m, lm: report(s, m, lm) if s in evals else None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
