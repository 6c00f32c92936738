"""Training studies on synthetic data: score vs optimizer steps, and the paper's Table 7.

Two studies (deterministic for a given command line, on one machine and build):

``steps``: the official DCASE score (and the paper's mixed AUC/pAUC) of ONE training run,
evaluated after given numbers of optimizer steps (the model is put in eval mode, the training
clips are embedded, the backend is fitted and the test clips are scored; the training itself is
not disturbed: an evaluation consumes no training randomness). Several variants (config
overrides, e.g. BatchNorm momentum) can be compared on the same data::

    python benchmarks/studies.py steps                     # the demo's set, 50 ... 1000 steps
    python benchmarks/studies.py steps --train-source 60 --train-target 6 --tag cpu-bn \
        --steps 25,50,100,200,400,600,800 \
        --variant paper-bn:bn_momentum=0.01 --variant bn0.1:bn_momentum=0.1
    # are the BatchNorm running averages the bottleneck? (each evaluation twice: as trained and
    # with the statistics re-estimated on the training clips)
    python benchmarks/studies.py steps --steps 270 --recalibrate-bn --tag bn-recal \
        --variant seed0:seed=0 --variant seed1:seed=1 --variant seed2:seed=2
    # other backends on the same embeddings (the backend settings only: evaluated side by side)
    python benchmarks/studies.py steps --steps 270 --tag backends \
        --variant seed0:seed=0 --variant seed1:seed=1 --variant seed2:seed=2 \
        --backend-variant kmeans-all:kmeans_on=all --backend-variant every-source-clip:n_clusters=1000 \
        --backend-variant gmm:backend=gmm

``table7``: the paper's Table 7 (standard vs presented design choices) on a larger synthetic set
with the same step budget for both: "presented" = the paper's choices (linear spectrogram, fixed
centers, no bias, cosine backend), "standard" = ``Config.preset("standard")``'s choices (log-mel
spectrogram, trainable centers, bias terms, GMM backend); everything else (clip length, batch
size, ...) from the base preset (default ``demo``)::

    python benchmarks/studies.py table7 --steps 300 --seeds 0,1

``backends``: backends compared on the SAME embeddings, written by ``steps --dump-embeddings``
(one training per dump, no retraining): the dump's own backend and every ``--backend-variant``,
per dump and as mean ± std over the dumps (e.g. seeds)::

    python benchmarks/studies.py steps --steps 270 --variant seed0:seed=0 --variant seed1:seed=1 \
        --variant seed2:seed=2 --dump-embeddings /tmp/emb_demo
    python benchmarks/studies.py backends --embeddings /tmp/emb_demo --tag demo \
        --backend-variant ld-ratio:score_normalization=local_density,references=clips

``ensemble``: the paper's Fig. 2 setting, an ensemble of ``--members`` models (seeds seed ..
seed + members - 1, the scores summed), each trained with the base preset's full schedule through
``fastasd.train``; the ensemble and every member alone are evaluated on the same data::

    python benchmarks/studies.py ensemble --members 5

``labels``: the auxiliary classes (``aux_classes``), FeatEx and AdaProj in three label regimes
(full labels, DCASE 2023-like, no metadata) with the paper's and the balanced backend; see
``benchmarks/labels_study.py``::

    python benchmarks/studies.py labels --profile --seeds-of adaproj:0 --seeds-of featex+adaproj:0

Results: ``benchmarks/results/<study>_<tag>.json`` and ``.md`` (``--tag``, default ``cpu``), and
the markdown table on stdout. The simple baseline's (``fastasd.baseline``) official score on the
same data is reported beside the model's when that module is available.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastasd._io import atomic_write_json, atomic_write_text  # noqa: E402
from fastasd.config import BACKEND_FIELDS, PRESETS, Config  # noqa: E402

logger = logging.getLogger("studies")


# Clip attributes an embedding dump keeps (what the backend and the evaluation need).
CLIP_FIELDS = ("file_name", "machine_type", "section", "domain", "label")

PAPER_ROWS = (("source", "auc_source", "pauc_source"), ("target", "auc_target", "pauc_target"),
              ("mixed", "auc_mixed", "pauc_mixed"))


# --------------------------------------------------------------------------- data
def synth_sizes(args) -> dict:
    return {"machine_types": args.machine_types.split(","), "sections": args.sections,
            "n_train_source": args.train_source, "n_train_target": args.train_target,
            "n_test": args.test, "clip_seconds": args.clip_seconds}


def ensure_data(data_dir: Path, seed: int, sizes: dict) -> Path:
    """Generate the synthetic set unless ``data_dir`` already holds exactly this one."""
    from fastasd.data.synth import INFO_FILE, generate

    info_file = data_dir / INFO_FILE
    if info_file.exists():
        info = json.loads(info_file.read_text())
        same = (info.get("status") == "complete" and info.get("seed") == seed
                and info.get("machine_types") == sizes["machine_types"]
                and info.get("sections") == [f"{s:02d}" for s in range(sizes["sections"])]
                and all(info.get(k) == sizes[k] for k in ("n_train_source", "n_train_target", "n_test"))
                and float(info.get("clip_seconds")) == float(sizes["clip_seconds"]))
        if same:
            return data_dir
    t = time.perf_counter()
    generate(data_dir, seed=seed, **sizes)
    logger.info("synthesized %s in %.0f s", data_dir, time.perf_counter() - t)
    return data_dir


def load_split(root: Path, split: str, config: Config):
    """(clips, waveforms float32 [n, N]) of one split, all in memory."""
    from fastasd.data.dataset import iter_audio_batches
    from fastasd.data.layout import discover

    clips = discover(root, splits=(split,))
    waves = np.zeros((len(clips), config.num_samples), dtype=np.float32)
    for idx, x in iter_audio_batches(clips, 256, config.num_samples, sample_rate=config.sample_rate):
        waves[idx] = x
    return clips, waves


# --------------------------------------------------------------------------- evaluation
@torch.inference_mode()
def embed(model, waves: np.ndarray, batch: int = 64) -> np.ndarray:
    model.eval()
    dev = next(model.parameters()).device
    out = [model(torch.from_numpy(waves[i:i + batch]).to(dev)).float().cpu().numpy()
           for i in range(0, len(waves), batch)]
    return np.concatenate(out, axis=0)


def backend_scores(config: Config, train_embs: np.ndarray, train_clips, test_embs: np.ndarray,
                   test_clips) -> np.ndarray:
    """The anomaly scores of the test clips: ``config``'s backend fitted on the training
    embeddings with the sections and domains ``fastasd.api.fit_detector`` uses."""
    from fastasd.api import _backend_domain, section_key
    from fastasd.backend import make_backend

    backend = make_backend(config).fit(train_embs, [section_key(c.machine_type, c.section) for c in train_clips],
                                       [_backend_domain(c.domain) for c in train_clips])
    return backend.score_samples(test_embs, [section_key(c.machine_type, c.section) for c in test_clips])


def dump_embeddings(path: Path, config: Config, train_clips, tr: np.ndarray, test_clips,
                    te: np.ndarray, **info) -> None:
    """Write the training and test embeddings of one evaluation, with the clips' metadata and the
    config, to ``path`` (.npz; strings as unicode arrays, so loading needs no pickle), atomically."""
    import io

    from fastasd._io import atomic_write_bytes

    fields = {}
    for split, clips in (("train", train_clips), ("test", test_clips)):
        for k in CLIP_FIELDS:
            fields[f"{split}_{k}"] = np.asarray([str(getattr(c, k)) for c in clips], dtype=np.str_)
    buf = io.BytesIO()
    np.savez(buf, train=tr, test=te, config=np.asarray(json.dumps(config.to_dict())),
             info=np.asarray(json.dumps(info)), **fields)
    atomic_write_bytes(path, buf.getvalue())


def evaluate_model(model, config: Config, data, backend_variants: dict | None = None,
                   dump: Path | None = None) -> dict:
    """Fit the backend on the training embeddings, score the test clips, evaluate. Each of
    ``backend_variants`` (name -> backend overrides of ``config``) is evaluated on the same
    embeddings too, under ``"backends"``. With ``dump``, the embeddings are also written there
    (:func:`dump_embeddings`), for the ``backends`` study."""
    from fastasd.metrics import evaluate_records

    (train_clips, train_waves), (test_clips, test_waves) = data
    n = config.num_samples  # a variant may use shorter clips than the data: crop as the loader does
    train_waves, test_waves = train_waves[:, :n], test_waves[:, :n]
    t = time.perf_counter()
    tr = embed(model, train_waves)
    te = embed(model, test_waves)
    if dump is not None:
        dump_embeddings(dump, config, train_clips, tr, test_clips, te)

    out = backend_figures(config, tr, train_clips, te, test_clips)
    if backend_variants:
        out["backends"] = {name: backend_figures(config.replace(**over), tr, train_clips, te, test_clips)
                           for name, over in backend_variants.items()}
    out["eval_seconds"] = time.perf_counter() - t
    return out


def backend_figures(cfg: Config, tr: np.ndarray, train_clips, te: np.ndarray, test_clips) -> dict:
    """``cfg``'s backend fitted on the training embeddings, the test clips scored and evaluated:
    the official score and the official and paper figures."""
    from fastasd.metrics import evaluate_records

    scores = backend_scores(cfg, tr, train_clips, te, test_clips)
    records = [{"file_name": c.file_name, "machine_type": c.machine_type, "section": c.section,
                "domain": c.domain, "label": c.label, "score": float(s)}
               for c, s in zip(test_clips, scores)]
    ev = evaluate_records(records)
    return {"official_score": ev.official_score, "official": dict(ev.official), "paper": dict(ev.paper)}


@torch.no_grad()
def recalibrated_batchnorm(model, waves: np.ndarray, batch: int, seed: int = 0):
    """A copy of ``model`` whose BatchNorm running statistics are re-estimated on ``waves``
    (no mixup): every statistic reset, then the equal-weight average of its batch statistics
    over one shuffled pass of full batches (``momentum=None``). The weights are untouched.

    This asks whether the exponential running averages (momentum 0.01) lag the weights after a
    short training: if they did, the recalibrated model would score clearly better."""
    import copy

    m = copy.deepcopy(model)
    for bn in m.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            bn.reset_running_stats()
            bn.momentum = None
    m.train()
    dev = next(m.parameters()).device
    order = np.random.default_rng(seed).permutation(len(waves))
    batch = min(batch, len(waves))
    for i in range(0, len(order) - batch + 1, batch):
        m(torch.from_numpy(waves[order[i:i + batch]]).to(dev))
    return m.eval()


def baseline_score(root: Path) -> dict | None:
    """The simple baseline's figures on ``root`` (None if fastasd.baseline is missing)."""
    try:
        from fastasd import baseline
    except ImportError:
        return None
    from fastasd.metrics import evaluate_records

    ev = evaluate_records(baseline.baseline_scores(root))
    return {"official_score": ev.official_score, "official": dict(ev.official), "paper": dict(ev.paper)}


def train_with_evals(config: Config, train_clips, data, eval_steps: list[int], member: int = 0,
                     recalibrate_bn: bool = False, backend_variants: dict | None = None,
                     dump_prefix: Path | None = None) -> list[dict]:
    """One training run of ``max(eval_steps)`` steps, evaluated after each of ``eval_steps``
    (with ``recalibrate_bn`` also with re-estimated BatchNorm statistics, under
    ``"bn_recalibrated"``; with ``backend_variants`` also with those backends, under
    ``"backends"``; with ``dump_prefix`` the embeddings of each evaluation are written to
    ``<dump_prefix>_step<N>.npz``)."""
    from fastasd.training import train_model

    eval_steps = sorted(set(eval_steps))
    results: list[dict] = []
    t0 = time.perf_counter()
    train_time = [0.0]
    last = [t0]

    def on_step(step, model, loss_module):
        if step in eval_steps:
            train_time[0] += time.perf_counter() - last[0]
            dump = None if dump_prefix is None else Path(f"{dump_prefix}_step{step}.npz")
            r = evaluate_model(model, config, data, backend_variants, dump=dump)
            if recalibrate_bn:
                recal = recalibrated_batchnorm(model, data[0][1][:, :config.num_samples], config.batch_size)
                r["bn_recalibrated"] = evaluate_model(recal, config, data)
            r.update(step=step, epoch=step / math.ceil(len(train_clips) / config.batch_size),
                     scale=float(loss_module.scale), train_seconds=train_time[0])
            results.append(r)
            logger.info("step %d: official %.2f %%, mixed AUC %.2f %%, pAUC %.2f %% (train %.0f s)",
                        step, 100 * r["official_score"], 100 * r["paper"]["auc_mixed"],
                        100 * r["paper"]["pauc_mixed"], train_time[0])
            last[0] = time.perf_counter()

    # enough epochs for max(eval_steps) steps; max_steps stops there
    steps_per_epoch = math.ceil(len(train_clips) / config.batch_size)
    cfg = config.replace(epochs=max(1, math.ceil(max(eval_steps) / steps_per_epoch)))
    train_model(train_clips, cfg, progress=False, member=member, max_steps=max(eval_steps),
                step_callback=on_step)
    return results


def environment() -> dict:
    import fastasd
    from fastasd import ops

    return {"fastasd": fastasd.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpu_threads": torch.get_num_threads(),
            "os_cpus": os.cpu_count(), "device": "cpu",
            "ops": f"{ops.stft_magnitude.__module__}.stft_magnitude",
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def command_line() -> str:
    """The study's command, shell-quoted so that it re-runs as printed; without ``--note`` (the note
    is reported on its own line)."""
    argv, skip = [], False
    for a in sys.argv:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            argv.append(a)
    return shlex.join(["python", *argv])


def parse_variant(text: str) -> tuple[str, dict]:
    """``name:k=v,k=v`` -> (name, overrides) parsed with Config.parse_value."""
    name, _, rest = text.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        overrides[k.strip()] = Config.parse_value(k.strip(), v)
    return name, overrides


def pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


# --------------------------------------------------------------------------- studies
def base_config(args) -> Config:
    """The base preset with the ``--set`` overrides and the data's clip length."""
    overrides = parse_variant("x:" + args.set)[1] if args.set else {}
    return Config.preset(args.preset).replace(**overrides, clip_seconds=args.clip_seconds)


def prepare_data(args, config: Config):
    """(sizes, root, data) of the study's synthetic set: data = ((train clips, waveforms),
    (test clips, waveforms)), all in memory."""
    sizes = synth_sizes(args)
    root = ensure_data(Path(args.data), args.data_seed, sizes)
    return sizes, root, (load_split(root, "train", config), load_split(root, "test", config))


def run_steps(args) -> dict:
    base = base_config(args).replace(seed=args.seed)
    sizes, root, data = prepare_data(args, base)
    train_clips = data[0][0]
    steps = [int(s) for s in args.steps.split(",")]
    variants = [parse_variant(v) for v in (args.variant or ["preset:"])]
    backend_variants = dict(parse_variant(v) for v in (args.backend_variant or []))
    bad = sorted(k for over in backend_variants.values() for k in over if k not in BACKEND_FIELDS)
    if bad:
        raise SystemExit(f"--backend-variant: {bad} are not backend settings ({sorted(BACKEND_FIELDS)})")
    out = {"study": "steps", "preset": args.preset, "command": command_line(), "environment": environment(),
           "synth": {**sizes, "seed": args.data_seed, "n_train_clips": len(train_clips), "n_test_clips": len(data[1][0])},
           "base_config": base.to_dict(), "steps": steps, "variants": {}, "baseline": baseline_score(root),
           "backend_variants": backend_variants}
    for name, overrides in variants:
        cfg = base.replace(**overrides)
        logger.info("variant %s: %s", name, overrides)
        t = time.perf_counter()
        dump_prefix = None
        if args.dump_embeddings:
            Path(args.dump_embeddings).mkdir(parents=True, exist_ok=True)
            dump_prefix = Path(args.dump_embeddings) / name
        res = train_with_evals(cfg, train_clips, data, steps, recalibrate_bn=args.recalibrate_bn,
                               backend_variants=backend_variants, dump_prefix=dump_prefix)
        out["variants"][name] = {"overrides": overrides, "results": res, "seconds": time.perf_counter() - t}
    out["markdown"] = steps_markdown(out)
    return out


def steps_markdown(out: dict) -> str:
    names = list(out["variants"])
    s = out["synth"]
    cfg = out["base_config"]
    lines = [f"Official DCASE score (%) vs optimizer steps; synthetic set: {', '.join(s['machine_types'])}, "
             f"{s['sections']} sections, {s['n_train_source']}+{s['n_train_target']} training clips per "
             f"section (source+target), {s['n_test']} test clips per section, {s['clip_seconds']:g} s clips "
             f"({s['n_train_clips']} training / {s['n_test_clips']} test clips in all); batch {cfg['batch_size']}, "
             f"lr {cfg['learning_rate']:g}, base preset `{out['preset']}`; "
             f"one run per variant, seed {cfg['seed']} unless the variant sets one; CPU ({out['environment']['cpu_threads']} threads).",
             "",
             "| steps | epochs | " + " | ".join(f"{n}: official / mixed AUC / mixed pAUC" for n in names) + " |",
             "|---:|---:|" + "---|" * len(names)]
    first = out["variants"][names[0]]["results"]
    for i, r0 in enumerate(first):
        cells = []
        for n in names:
            r = out["variants"][n]["results"][i]
            cell = f"{pct(r['official_score'])} / {pct(r['paper']['auc_mixed'])} / {pct(r['paper']['pauc_mixed'])}"
            if "bn_recalibrated" in r:
                b = r["bn_recalibrated"]
                cell += f" -> {pct(b['official_score'])} / {pct(b['paper']['auc_mixed'])} / {pct(b['paper']['pauc_mixed'])}"
            cells.append(cell)
        lines.append(f"| {r0['step']} | {r0['epoch']:.1f} | " + " | ".join(cells) + " |")
    lines.append("")
    if "bn_recalibrated" in first[0]:
        lines.append("- `a -> b`: a = the model as trained (BatchNorm running averages, momentum "
                     f"{cfg['bn_momentum']:g}); b = the same weights with every BatchNorm statistic "
                     "re-estimated on the training clips without mixup (`--recalibrate-bn`).")
    for n in names:
        v = out["variants"][n]
        last = v["results"][-1]
        lines.append(f"- `{n}` ({', '.join(f'{k}={val}' for k, val in v['overrides'].items()) or 'preset'}): "
                     f"{last['train_seconds']:.0f} s of training for {last['step']} steps "
                     f"({last['train_seconds'] / last['step']:.2f} s/step), {v['seconds']:.0f} s with evaluations.")
    if "backends" in first[0]:
        lines += ["", "Backends on the same embeddings (official score; the three official figures: AUC "
                  "source / AUC target / pAUC; the paper's AUC source / target / mixed), %:", "",
                  "| variant | steps | backend | official | off. AUC src / tgt / pAUC | paper AUC src / tgt / mixed |",
                  "|---|---:|---|---:|---|---|"]
        for n in names:
            for r in out["variants"][n]["results"]:
                for bname, f in [("as configured", r)] + list(r["backends"].items()):
                    o, pp = f["official"], f["paper"]
                    lines.append(f"| {n} | {r['step']} | {bname} | {pct(f['official_score'])} | "
                                 f"{pct(o['auc_source'])} / {pct(o['auc_target'])} / {pct(o['pauc'])} | "
                                 f"{pct(pp['auc_source'])} / {pct(pp['auc_target'])} / {pct(pp['auc_mixed'])} |")
        lines += ["", "- backend variants: " + "; ".join(
            f"`{k}`: {', '.join(f'{a}={b}' for a, b in v.items())}" for k, v in out["backend_variants"].items()) + "."]
    b = out.get("baseline")
    if b:
        lines.append(f"- simple baseline (mean log-spectrum nearest neighbour) on the same data: official "
                     f"{pct(b['official_score'])} %, mixed AUC {pct(b['paper']['auc_mixed'])} %, "
                     f"mixed pAUC {pct(b['paper']['pauc_mixed'])} %.")
    return "\n".join(lines) + "\n"


def run_table7(args) -> dict:
    base = base_config(args)
    sizes, root, data = prepare_data(args, base)
    train_clips = data[0][0]
    seeds = [int(s) for s in args.seeds.split(",")]
    designs = {"standard": dict(PRESETS["standard"]), "presented": {}}
    out = {"study": "table7", "preset": args.preset, "command": command_line(), "environment": environment(),
           "synth": {**sizes, "seed": args.data_seed, "n_train_clips": len(train_clips), "n_test_clips": len(data[1][0])},
           "base_config": base.to_dict(), "steps": args.steps, "seeds": seeds, "designs": {},
           "baseline": baseline_score(root)}
    for name, overrides in designs.items():
        runs = []
        for seed in seeds:
            cfg = base.replace(seed=seed, **overrides)
            logger.info("design %s, seed %d", name, seed)
            t = time.perf_counter()
            res = train_with_evals(cfg, train_clips, data, [args.steps])[-1]
            res["seed"], res["seconds"] = seed, time.perf_counter() - t
            runs.append(res)
        out["designs"][name] = {"overrides": overrides, "runs": runs}
    out["markdown"] = table7_markdown(out)
    return out


def _mean_std(values: list[float]) -> str:
    v = 100 * np.asarray(values, dtype=np.float64)
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}"


def table7_markdown(out: dict) -> str:
    s = out["synth"]
    cfg = out["base_config"]
    d = out["designs"]
    n = len(out["seeds"])
    lines = [f"Table 7 on synthetic data: standard vs presented design choices, the same {out['steps']} "
             f"optimizer steps each (batch {cfg['batch_size']}, {cfg['clip_seconds']:g} s clips); "
             f"{', '.join(s['machine_types'])} x {s['sections']} sections, {s['n_train_source']}+"
             f"{s['n_train_target']} training and {s['n_test']} test clips per section; "
             f"harmonic means over {len(s['machine_types']) * s['sections']} sections, "
             f"mean{' ± std' if n > 1 else ''} over {n} training run(s) (seeds {', '.join(map(str, out['seeds']))}).",
             "",
             "| domain | standard AUC (%) | standard pAUC (%) | presented AUC (%) | presented pAUC (%) |",
             "|---|---:|---:|---:|---:|"]
    for dom, ka, kp in PAPER_ROWS:
        cells = []
        for name in ("standard", "presented"):
            runs = d[name]["runs"]
            cells += [_mean_std([r["paper"][ka] for r in runs]), _mean_std([r["paper"][kp] for r in runs])]
        lines.append(f"| {dom} | " + " | ".join(cells) + " |")
    lines.append("| official score | " + _mean_std([r["official_score"] for r in d["standard"]["runs"]])
                 + " | | " + _mean_std([r["official_score"] for r in d["presented"]["runs"]]) + " | |")
    b = out.get("baseline")
    lines.append("")
    lines.append("standard = log-mel spectrogram (128 bins), trainable centers, bias terms, GMM backend "
                 "(16 components, full covariance, +1e-3 diagonal); presented = linear magnitude "
                 "spectrogram with temporal normalization, fixed random centers, no bias terms, cosine "
                 "backend. Source/target/mixed = the paper's evaluation (that domain's clips only; mixed = "
                 "all clips); official score = DCASE harmonic mean of AUC_source, AUC_target, pAUC.")
    secs = {k: sum(r["seconds"] for r in v["runs"]) for k, v in d.items()}
    lines.append(f"CPU time: standard {secs['standard']:.0f} s, presented {secs['presented']:.0f} s "
                 f"({out['environment']['cpu_threads']} threads).")
    if b:
        lines.append(f"Simple baseline on the same data: official {pct(b['official_score'])} %, mixed AUC "
                     f"{pct(b['paper']['auc_mixed'])} %, mixed pAUC {pct(b['paper']['pauc_mixed'])} %.")
    return "\n".join(lines) + "\n"


def load_dump(path: Path):
    """``(config, train clips, train embeddings, test clips, test embeddings)`` of a dump written
    by :func:`dump_embeddings` (clips as simple namespaces with the CLIP_FIELDS)."""
    from types import SimpleNamespace

    with np.load(path, allow_pickle=False) as z:
        config = Config.from_dict(json.loads(str(z["config"])))

        def clips(split):
            cols = [z[f"{split}_{k}"].tolist() for k in CLIP_FIELDS]
            return [SimpleNamespace(**dict(zip(CLIP_FIELDS, row))) for row in zip(*cols)]

        return config, clips("train"), z["train"], clips("test"), z["test"]


def run_backends(args) -> dict:
    dumps = sorted(p for d in args.embeddings for p in Path(d).glob("*.npz"))
    if not dumps:
        raise SystemExit(f"--embeddings {args.embeddings}: no .npz dumps found (steps --dump-embeddings)")
    backend_variants = dict(parse_variant(v) for v in (args.backend_variant or []))
    bad = sorted(k for over in backend_variants.values() for k in over if k not in BACKEND_FIELDS)
    if bad:
        raise SystemExit(f"--backend-variant: {bad} are not backend settings ({sorted(BACKEND_FIELDS)})")
    out = {"study": "backends", "command": command_line(), "note": args.note,
           "environment": environment(), "backend_variants": backend_variants, "dumps": {}}
    for path in dumps:
        cfg, train_clips, tr, test_clips, te = load_dump(path)
        logger.info("%s: %d training / %d test embeddings", path.name, len(tr), len(te))
        t = time.perf_counter()
        res = {"as dumped": backend_figures(cfg, tr, train_clips, te, test_clips)}
        for name, over in backend_variants.items():
            res[name] = backend_figures(cfg.replace(**over), tr, train_clips, te, test_clips)
        out["dumps"][path.name] = {"config": cfg.to_dict(), "n_train": len(tr), "n_test": len(te),
                                   "results": res, "seconds": time.perf_counter() - t}
    out["baseline"] = baseline_score(Path(args.data)) if args.data else None
    out["markdown"] = backends_markdown(out)
    return out


def backends_markdown(out: dict) -> str:
    dumps = out["dumps"]
    names = ["as dumped", *out["backend_variants"]]
    first = next(iter(dumps.values()))
    cfg = first["config"]
    lines = [f"Backends on the same embeddings: {len(dumps)} trained model(s) ({', '.join(f'`{d}`' for d in dumps)}; "
             f"{first['n_train']} training / {first['n_test']} test clips, {cfg['clip_seconds']:g}-s clips). "
             f"Each backend is fitted on the training embeddings and scores the test embeddings of the same "
             f"model; % , mean ± std over the models.", "",
             "| backend | official score | official AUC source | official AUC target | pAUC | "
             "paper AUC source | paper AUC target | paper AUC mixed |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n in names:
        rs = [d["results"][n] for d in dumps.values()]
        cells = [_mean_std([r["official_score"] for r in rs])]
        cells += [_mean_std([r["official"][k] for r in rs]) for k in ("auc_source", "auc_target", "pauc")]
        cells += [_mean_std([r["paper"][k] for r in rs]) for k in ("auc_source", "auc_target", "auc_mixed")]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Per model (official score, %):", "",
              "| backend | " + " | ".join(dumps) + " |", "|---|" + "---:|" * len(dumps)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(pct(d["results"][n]["official_score"]) for d in dumps.values()) + " |")
    lines += ["", f"- `as dumped`: the configuration the model was trained with (backend `{cfg['backend']}`, "
              f"references `{cfg.get('references', 'kmeans')}`, score normalization "
              f"`{cfg.get('score_normalization', 'none')}`)."]
    for n, over in out["backend_variants"].items():
        lines.append(f"- `{n}`: " + ", ".join(f"{k}={v}" for k, v in over.items()) + ".")
    b = out.get("baseline")
    if b:
        o = b["official"]
        lines.append(f"- simple baseline on the same data: official {pct(b['official_score'])} % (AUC source "
                     f"{pct(o['auc_source'])}, AUC target {pct(o['auc_target'])}, pAUC {pct(o['pauc'])}).")
    lines.append(f"- command: `{out['command']}`")
    if out.get("note"):
        lines.append(f"- {out['note']}")
    return "\n".join(lines) + "\n"


def run_ensemble(args) -> dict:
    from fastasd import api
    from fastasd.api import Detector
    from fastasd.cli.demo import evaluate_detector

    sizes = synth_sizes(args)
    root = ensure_data(Path(args.data), args.data_seed, sizes)
    cfg = base_config(args).replace(seed=args.seed, ensemble_size=args.members, device="cpu")
    t = time.perf_counter()
    det = api.train(root, config=cfg, progress=False)
    train_s = time.perf_counter() - t

    def figures(d) -> dict:
        ev = evaluate_detector(d, root)
        return {"official_score": ev.official_score, "official": dict(ev.official), "paper": dict(ev.paper)}

    out = {"study": "ensemble", "preset": args.preset, "command": command_line(),
           "environment": environment(), "synth": {**sizes, "seed": args.data_seed},
           "config": cfg.to_dict(), "train_seconds": train_s, "ensemble": figures(det),
           "members": [figures(Detector(cfg, [m], det.encoder, [b], det.thresholds, device="cpu"))
                       for m, b in zip(det.models, det.backends)],
           "baseline": baseline_score(root)}
    out["markdown"] = ensemble_markdown(out)
    return out


def ensemble_markdown(out: dict) -> str:
    s, cfg = out["synth"], out["config"]
    lines = [f"Ensemble of {len(out['members'])} (scores summed; member i trained with seed "
             f"{cfg['seed']} + i), base preset `{out['preset']}` ({cfg['epochs']} epochs, batch "
             f"{cfg['batch_size']}, {cfg['clip_seconds']:g} s clips); synthetic set: "
             f"{', '.join(s['machine_types'])} x {s['sections']} sections, {s['n_train_source']}+"
             f"{s['n_train_target']} training and {s['n_test']} test clips per section; CPU "
             f"({out['environment']['cpu_threads']} threads), {out['train_seconds']:.0f} s of training.",
             "", "| system | official score (%) | mixed AUC (%) | mixed pAUC (%) |", "|---|---:|---:|---:|"]
    rows = [("ensemble", out["ensemble"])] + [(f"member {i} (seed {cfg['seed'] + i})", m)
                                              for i, m in enumerate(out["members"])]
    if out.get("baseline"):
        rows.append(("simple baseline", out["baseline"]))
    for name, r in rows:
        lines.append(f"| {name} | {pct(r['official_score'])} | {pct(r['paper']['auc_mixed'])} | "
                     f"{pct(r['paper']['pauc_mixed'])} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", choices=("steps", "table7", "ensemble", "backends", "labels"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results folder")
    p.add_argument("--tag", default="cpu", help="file name suffix (results/<study>_<tag>.json|md)")
    p.add_argument("--data", default=None, help="synthetic data folder (generated if needed)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic set")
    p.add_argument("--seed", type=int, default=0, help="training seed (steps study)")
    p.add_argument("--seeds", default=None, help="training seeds (table7: 0,1; labels: 0,1,2)")
    p.add_argument("--aux-seeds", default="0", help="labels study: seeds of the aux_classes variants")
    p.add_argument("--seeds-of", action="append", metavar="NAME:SEEDS",
                   help="labels study: the seeds of one variant, e.g. adaproj:0 (repeatable)")
    p.add_argument("--regimes", default="full,dcase2023,nometa", help="labels study: label regimes")
    p.add_argument("--variants", default=None, help="labels study: the training variants of this call (default all)")
    p.add_argument("--runs", default="/tmp/fastasd_studies/labels_runs",
                   help="labels study: folder of the cached trainings (one JSON each)")
    p.add_argument("--profile", action="store_true", help="labels study: time the loss's share of a step")
    p.add_argument("--preset", default="demo", help="base config preset (training settings)")
    p.add_argument("--set", default="", help="extra config overrides k=v,k=v on the base preset")
    p.add_argument("--steps", default=None, help="steps: comma list of evaluation steps; table7: one budget")
    p.add_argument("--variant", action="append", help="steps study: name:k=v,k=v (repeatable)")
    p.add_argument("--backend-variant", action="append",
                   help="steps study: name:k=v,k=v of backend settings, also evaluated on the same "
                        "embeddings at every evaluation (repeatable)")
    p.add_argument("--dump-embeddings", metavar="DIR", default=None,
                   help="steps study: write the training and test embeddings of every evaluation to "
                        "DIR/<variant>_step<N>.npz (input of the backends study)")
    p.add_argument("--recalibrate-bn", action="store_true",
                   help="steps study: also evaluate with BatchNorm statistics re-estimated on the training clips")
    p.add_argument("--members", type=int, default=5, help="ensemble study: number of members")
    p.add_argument("--note", default=None,
                   help="backends study: a line for the results (e.g. the command that wrote the dumps)")
    p.add_argument("--embeddings", action="append", metavar="DIR",
                   help="backends study: a folder of steps --dump-embeddings dumps (repeatable)")
    p.add_argument("--machine-types", default=None)
    p.add_argument("--sections", type=int, default=None)
    p.add_argument("--train-source", type=int, default=None)
    p.add_argument("--train-target", type=int, default=None)
    p.add_argument("--test", type=int, default=None)
    p.add_argument("--clip-seconds", type=float, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from fastasd.allocator import tune_allocator

    tune_allocator()  # as the CLI's train: large blocks from glibc's heap (a script owns its process)
    torch.manual_seed(0)
    if args.study == "backends":
        if not args.embeddings:
            raise SystemExit("backends: --embeddings DIR is required")
        t = time.perf_counter()
        out = run_backends(args)
        out["total_seconds"] = time.perf_counter() - t
        return _write(args, "backends", out)
    if args.study in ("steps", "ensemble", "labels"):  # the demo's set (fastasd.cli.demo.DEMO_SYNTH)
        defaults = dict(machine_types="fan,pump,gearbox,valve", sections=2, train_source=200,
                        train_target=10, test=40, clip_seconds=2.0, steps="50,100,250,500,1000")
        if args.study == "labels":  # the demo's 10 epochs; 3 seeds
            defaults.update(steps="270", seeds="0,1,2")
    else:  # a larger set
        defaults = dict(machine_types="fan,pump,gearbox,valve,slider,ToyCar", sections=3,
                        train_source=100, train_target=10, test=60, clip_seconds=2.0, steps="400",
                        seeds="0,1")
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.study == "table7":
        args.steps = int(args.steps)
    if args.data is None:
        args.data = f"/tmp/fastasd_studies/{args.study}_data_{args.data_seed}"
    t = time.perf_counter()
    if args.study == "labels":
        from labels_study import run_labels as study
    else:
        study = {"steps": run_steps, "table7": run_table7, "ensemble": run_ensemble}[args.study]
    out = study(args)
    out["total_seconds"] = time.perf_counter() - t
    return _write(args, args.study, out)


def _write(args, study: str, out: dict) -> int:
    res = Path(args.out)
    stem = f"{ {'steps': 'steps_curve'}.get(study, study)}_{args.tag}"
    atomic_write_json(res / f"{stem}.json", out)
    atomic_write_text(res / f"{stem}.md", out["markdown"])
    print(out["markdown"])
    print(f"wrote {res / stem}.json and .md ({out['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
