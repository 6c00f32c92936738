"""The ``labels`` study of ``benchmarks/studies.py``: learning when labels are few or misleading.

One synthetic set (the demo's: 4 machine types x 2 sections, 200 + 10 training and 40 test clips
per section, 2-s clips; section 00 of every type runs the target domain at a speed never seen in
the source domain, section 01 at an unseen load) in three label regimes
(:func:`fastasd.data.synth.label_regime`, hard links, no new audio):

- ``full``: every section's attribute tails (DCASE 2020-2022),
- ``dcase2023``: one section per machine type, attributes kept (DCASE 2023-2025; half the clips),
- ``nometa``: every machine its own type with ``noAttribute`` (a user without metadata).

In each regime the same number of optimizer steps (``--steps``, default 270 = the demo's 10
epochs on the full set) for each training variant: the paper's training, FeatEx
(``featex_prob=0.5``, the author's share), AdaProj (``loss=adaproj``, its default subspace
dimension), both, and the other auxiliary classes (``aux_classes``). Every trained model is
evaluated with the paper's backend and with the ``balanced`` preset's backend on the same
embeddings (no second training, as ``Detector.refit_backend(..., preset="balanced")``): the
official score and its three parts (official AUC source, AUC target, pAUC).

A variant whose classes in a regime are the same partition of the training clips as an earlier
variant's trains identically (same seed, same class count): it is not trained again and the
table says so (in ``nometa``, ``no_attributes`` = the paper's classes, ``section`` = ``no_domain``).

Every training is cached as one JSON under ``--runs`` (default ``/tmp/fastasd_studies/labels_runs``)
with the settings it ran with, so the study can be run in parts (e.g. one regime or seed at a
time) and the last call writes the whole table; a cached run is reused only when its settings
equal the requested ones (``--variants``, ``--regimes``, ``--seeds``, ``--aux-seeds``, ``--seeds-of`` select the
trainings of a call). ``--profile`` also times the loss's share of a training step.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from fastasd._io import atomic_write_json
from fastasd.config import PRESETS, Config

logger = logging.getLogger("studies.labels")

REGIMES = ("full", "dcase2023", "nometa")
# name -> config overrides; the first four are compared over --seeds, the rest over --aux-seeds
VARIANTS: dict[str, dict] = {
    "paper": {},
    "featex": {"featex_prob": 0.5},
    "adaproj": {"loss": "adaproj"},
    "featex+adaproj": {"featex_prob": 0.5, "loss": "adaproj"},
    "no_attributes": {"aux_classes": "no_attributes"},
    "no_domain": {"aux_classes": "no_domain"},
    "section": {"aux_classes": "section"},
}
TRAINING_VARIANTS = ("paper", "featex", "adaproj", "featex+adaproj")
BACKENDS = {"paper": {}, "balanced": PRESETS["balanced"]}
FIGURES = (("official", None), ("AUC source", "auc_source"), ("AUC target", "auc_target"), ("pAUC", "pauc"))


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def regime_roots(base_root: Path, views: Path) -> dict[str, Path]:
    """The three label regimes of the generated set at ``base_root`` (linked under ``views``)."""
    from fastasd.data.synth import label_regime

    roots = {"full": base_root}
    for regime in REGIMES[1:]:
        roots[regime] = Path(label_regime(base_root, views / regime, regime)["root"])
    return roots


def class_partition(train_clips, aux_classes: str) -> tuple:
    """The class index of every training clip: equal tuples = identical auxiliary tasks."""
    from fastasd.data.labels import ClassEncoder

    return tuple(ClassEncoder(aux_classes).fit_transform(train_clips).tolist())


def _figures(r: dict) -> dict:
    o = r["official"]
    return {"official": r["official_score"], "auc_source": o["auc_source"], "auc_target": o["auc_target"],
            "pauc": o["pauc"]}


def run_one(cfg: Config, data, steps: int) -> dict:
    """One training of ``steps`` steps, evaluated with both backends on the same embeddings."""
    from studies import train_with_evals

    t = time.perf_counter()
    res = train_with_evals(cfg, data[0][0], data, [steps], backend_variants={"balanced": BACKENDS["balanced"]})[-1]
    return {"paper": _figures(res), "balanced": _figures(res["backends"]["balanced"]),
            "train_seconds": res["train_seconds"], "seconds": time.perf_counter() - t,
            "scale": res["scale"]}


def run_labels(args) -> dict:
    from studies import baseline_score, base_config, command_line, ensure_data, environment, load_split, synth_sizes

    sizes = synth_sizes(args)
    base_root = ensure_data(Path(args.data), args.data_seed, sizes)
    roots = regime_roots(base_root, Path(args.data).parent / f"labels_views_{args.data_seed}")
    base = base_config(args).replace(device="cpu")
    steps = int(args.steps)
    seeds = [int(s) for s in args.seeds.split(",")]
    aux_seeds = [int(s) for s in args.aux_seeds.split(",")]
    seeds_of = {name: (seeds if name in TRAINING_VARIANTS else aux_seeds) for name in VARIANTS}
    for text in args.seeds_of or []:
        name, _, ss = text.partition(":")
        if name not in VARIANTS or not ss:
            raise SystemExit(f"--seeds-of {text!r}: need NAME:SEED,SEED with NAME one of {list(VARIANTS)}")
        seeds_of[name] = [int(x) for x in ss.split(",")]
    regimes = args.regimes.split(",")
    wanted = args.variants.split(",") if args.variants else list(VARIANTS)
    unknown = [v for v in wanted if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    bad = [r for r in regimes if r not in REGIMES]
    if bad:
        raise SystemExit(f"--regimes: unknown {bad}; choose from {list(REGIMES)}")
    runs_dir = Path(args.runs)
    runs_dir.mkdir(parents=True, exist_ok=True)
    out = {"study": "labels", "command": command_line(), "environment": {**environment(), "cpu_model": cpu_model()},
           "synth": {**sizes, "seed": args.data_seed}, "base_config": base.to_dict(), "steps": steps,
           "seeds": seeds_of, "variants": VARIANTS, "backends": BACKENDS, "regimes": {}}
    if args.profile:
        out["profile"] = profile_losses(base, roots["full"])
    for regime in regimes:
        data = (load_split(roots[regime], "train", base), load_split(roots[regime], "test", base))
        train_clips = data[0][0]
        reg = {"root": str(roots[regime]), "n_train_clips": len(train_clips), "n_test_clips": len(data[1][0]),
               "n_sections": len({(c.machine_type, c.section) for c in train_clips}),
               "baseline": _figures(baseline_score(roots[regime])), "variants": {}}
        # a variant with the same auxiliary task as an earlier one trains identically: the
        # earlier one (in VARIANTS order) is trained, for whichever of them is asked for
        partitions: dict[tuple, str] = {}
        same_as: dict[str, str] = {}
        for name, over in VARIANTS.items():
            cfg0 = base.replace(**over)
            part = (class_partition(train_clips, cfg0.aux_classes),
                    json.dumps(cfg0.replace(aux_classes="paper").to_dict(), sort_keys=True))
            same_as[name] = partitions.setdefault(part, name)
        train_here = {same_as[v] for v in wanted}
        for name, over in VARIANTS.items():
            cfg0 = base.replace(**over)
            entry = {"overrides": over, "n_classes": len(set(class_partition(train_clips, cfg0.aux_classes)))}
            if same_as[name] != name:
                if name in wanted:
                    reg["variants"][name] = {**entry, "same_as": same_as[name]}
                continue
            if name not in train_here:
                continue
            entry["runs"] = {}
            for seed in seeds_of[name]:
                cfg = cfg0.replace(seed=seed)
                key = {"regime": regime, "variant": name, "config": cfg.to_dict(), "steps": steps,
                       "synth": out["synth"], "n_train_clips": len(train_clips)}
                path = runs_dir / f"{regime}_{name}_seed{seed}.json"
                cached = json.loads(path.read_text()) if path.exists() else None
                if cached is not None and cached.get("key") == key:
                    run = cached["result"]
                else:
                    logger.info("%s / %s / seed %d: training %d steps", regime, name, seed, steps)
                    run = run_one(cfg, data, steps)
                    atomic_write_json(path, {"key": key, "result": run,
                                             "date": time.strftime("%Y-%m-%d %H:%M:%S")})
                entry["runs"][str(seed)] = run
                logger.info("%s / %s / seed %d: official %.2f %% (paper backend), %.2f %% (balanced)",
                            regime, name, seed, 100 * run["paper"]["official"], 100 * run["balanced"]["official"])
            reg["variants"][name] = entry
        out["regimes"][regime] = reg
    out["markdown"] = labels_markdown(out)
    return out


def _stats(entry: dict, backend: str, key: str) -> tuple[float, float, int]:
    v = np.array([r[backend][key] for r in entry["runs"].values()], dtype=np.float64) * 100
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v)


def _cell(m: float, s: float) -> str:
    return f"{m:.2f}" if math.isnan(s) else f"{m:.2f} ± {s:.2f}"


def labels_markdown(out: dict) -> str:
    s, cfg, env = out["synth"], out["base_config"], out["environment"]
    lines = [f"Auxiliary classes, FeatEx and AdaProj in three label regimes. Synthetic set: "
             f"{', '.join(s['machine_types'])} x {s['sections']} sections, {s['n_train_source']}+"
             f"{s['n_train_target']} training and {s['n_test']} test clips per section, "
             f"{s['clip_seconds']:g}-s clips, data seed {s['seed']}; section 00 of each type shifts a "
             f"speed-like attribute to a value unseen in the source domain, section 01 a load-like one. "
             f"Every training: {out['steps']} steps, batch {cfg['batch_size']}, base preset `demo` "
             f"(the paper's training, {cfg['clip_seconds']:g}-s clips); seeds: "
             + "; ".join(f"{n} {','.join(map(str, v))}" for n, v in out["seeds"].items())
             + f". Official score and its three parts (official AUC source, AUC target, pAUC), "
             f"%, mean ± std over the seeds (std with ddof 1; no ± = one seed). `paper` backend: the "
             f"paper's; `balanced`: the balanced preset's backend refitted on the same embeddings. "
             f"Δ: the official score against the paper's training with the same backend; **bold** where "
             f"|Δ| exceeds both seed spreads. CPU: {env.get('cpu_model')} ({env['cpu_threads']} threads), "
             f"torch {env['torch']}.", ""]
    for regime, reg in out["regimes"].items():
        b = reg["baseline"]
        lines += [f"**{regime}** ({reg['n_train_clips']} training / {reg['n_test_clips']} test clips, "
                  f"{reg['n_sections']} sections; simple baseline: official {100 * b['official']:.2f} "
                  f"({100 * b['auc_source']:.2f} / {100 * b['auc_target']:.2f} / {100 * b['pauc']:.2f})):", "",
                  "| variant | classes | backend | official | Δ | AUC source | AUC target | pAUC | seeds |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
        variants = reg["variants"]
        for name, entry in variants.items():
            src = variants[entry["same_as"]] if "same_as" in entry else entry
            for backend in BACKENDS:
                m, sd, n = _stats(src, backend, "official")
                pm, psd, _ = _stats(variants["paper"], backend, "official") if "paper" in variants else (m, 0, 0)
                delta = "" if name == "paper" or "paper" not in variants else f"{m - pm:+.2f}"
                if delta and n > 1 and not math.isnan(psd) and abs(m - pm) > max(sd, psd):
                    delta = f"**{delta}**"
                parts = [_cell(*_stats(src, backend, k)[:2]) for k in ("auc_source", "auc_target", "pauc")]
                label = name if "same_as" not in entry else f"{name} (= {entry['same_as']}: same classes)"
                lines.append(f"| {label} | {entry['n_classes']} | {backend} | {_cell(m, sd)} | {delta} | "
                             + " | ".join(parts) + f" | {n} |")
        lines.append("")
    prof = out.get("profile")
    if prof:
        lines += [f"Loss share of a training step (batch of {cfg['batch_size']} clips of the full set, forward + backward + Adam; "
                  "the loss's own forward + backward timed apart on the same embeddings):", "",
                  "| training | step (ms) | loss (ms) | share |", "|---|---:|---:|---:|"]
        for name, p in prof.items():
            lines.append(f"| {name} | {p['step_ms']:.1f} | {p['loss_ms']:.2f} | {100 * p['share']:.1f} % |")
        lines.append("")
    lines.append(f"- command: `{out['command']}`")
    return "\n".join(lines) + "\n"


def profile_losses(base: Config, root: Path, repeats: int = 8) -> dict:
    """Milliseconds of a training step and of its loss alone (forward + backward on the step's
    embeddings), median of ``repeats`` steps after two warm-ups, for each training variant."""
    from fastasd.data.labels import ClassEncoder
    from fastasd.model import l2_penalty
    from fastasd.training import build_member
    from studies import load_split

    clips, waves = load_split(root, "train", base)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(clips), base.batch_size, replace=False)
    x = torch.from_numpy(waves[idx])
    enc = ClassEncoder().fit(clips)
    y = torch.nn.functional.one_hot(torch.as_tensor(enc.transform([clips[i] for i in idx])), len(enc)).float()
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name in TRAINING_VARIANTS:
        cfg = base.replace(**VARIANTS[name])
        model, loss_module = build_member(cfg, len(enc), 0, cfg.num_samples)
        model.train()
        loss_module.train()
        params = list(model.parameters()) + [p for p in loss_module.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.learning_rate, eps=cfg.adam_eps)
        featex = getattr(loss_module, "featex", None)

        def loss_of(emb):
            loss = loss_module(emb, y)
            return loss + featex(emb, y, gen) if featex is not None else loss

        step_t, loss_t = [], []
        for i in range(repeats + 2):
            t0 = time.perf_counter()
            emb = model(x)
            loss = loss_of(emb) + cfg.l2 * l2_penalty(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t1 = time.perf_counter()
            e = emb.detach().requires_grad_(True)
            t2 = time.perf_counter()
            loss_of(e).backward()
            t3 = time.perf_counter()
            if i >= 2:
                step_t.append(t1 - t0)
                loss_t.append(t3 - t2)
        step_ms, loss_ms = 1000 * float(np.median(step_t)), 1000 * float(np.median(loss_t))
        out[name] = {"step_ms": step_ms, "loss_ms": loss_ms, "share": loss_ms / step_ms}
        logger.info("profile %s: step %.1f ms, loss %.2f ms (%.1f %%)", name, step_ms, loss_ms,
                    100 * loss_ms / step_ms)
    return out
