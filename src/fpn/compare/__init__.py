"""The paper's designs side by side: one detector, the same data, budget, seed and schedule; accuracy and cost.

:func:`compare` trains every requested pyramid design (``model.pyramid.design`` is the only setting that
differs between the runs), evaluates each on the val split and measures what it costs. ``image-pyramid``
needs no training of its own: it is the trained ``single-map`` model run at the preset's test scales
(``pyramid.test_scales``), so it reuses ``runs/single-map`` (trained even if ``single-map`` is not compared).

``DIR`` receives ``results.json``, ``results.md`` (a table with every number also as a ratio to ``fpn``),
``ap_by_size.png``, ``accuracy_vs_latency.png`` and ``runs/<design>/`` (each a normal training run folder;
``runs/image-pyramid`` holds the ``single-map`` weights under the image-pyramid config). A run folder that
already holds a ``model.pt`` of the same run config is not trained again, and one with only a ``last.pt``
is resumed, so an interrupted comparison continues where it stopped.

What is measured, for every design alike (``torch.set_num_threads(threads)`` throughout):

* accuracy: COCO ``AP``, ``AP50``, ``APs``, ``APm``, ``APl``, ``AR100`` on the val split (0-100), the run's
  final evaluation (:func:`fpn.engine.evaluate.evaluate`);
* ``GFLOPs``: ``torch.utils.flop_counter.FlopCounterMode`` over one eval-mode forward pass of the *trained*
  model on the probe image (the val split's first image, which the model resizes to its test size), counted
  as ``fpn models`` counts (2 per multiply-add; NMS and indexing count nothing). It counts the trained model
  on a real image because the RoI head's share depends on how many proposals survive NMS. For
  ``image-pyramid`` the forward pass runs every test scale, so every scale is counted;
* ``params``: the trained model's parameters;
* ``latency_s``: on the CPU, the median wall time of ``latency_runs`` forward passes on the probe image,
  after ``LATENCY_WARMUP`` untimed ones, timed in alternating rounds across the designs (each round every
  design once, :mod:`fpn.compare.latency`), once every design is trained;
* ``train_peak_mb`` / ``infer_peak_mb``: the extra resident memory (MiB, 2^20 bytes) that one training step
  (the training loop's own step over the first ``train.batch_size`` training images at the largest training
  scale) and one inference pass (the probe image) need, read in a fresh subprocess that does nothing else
  (:mod:`fpn.bench.memory`: the rise of the peak-RSS mark over the step). The step runs once untimed
  first, so the weights, the optimiser's momentum and the interpreter are in the baseline, not in the
  value. Linux only: elsewhere both are ``None``.

Seeds (``seeds=N``, ``fpn compare --seeds N``): every design is trained with the seeds ``seed .. seed+N-1``
(``runs/<design>-seed<k>``; one seed keeps ``runs/<design>``); each metric is the mean over them, with its
range in ``spread``, and ``differences`` says plainly which differences between designs exceed that spread
(:mod:`fpn.compare.seeds`). Costs are measured on the first seed's model. ``backbone_weights`` (an ImageNet
ResNet checkpoint) starts every design's backbone from it (``model.backbone.weights``), the paper's setting.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fpn.bench import ProbeFailed, forward_gflops, machine_info, run_probe
from fpn.compare.configs import (
    DEFAULT_ITERS,
    check_designs,
    check_same_run,
    compare_config,
    design_config,
    trained_design,
)
from fpn.compare.latency import latency_rounds, medians
from fpn.compare.probe import memory_probe
from fpn.compare.seeds import differences, summarise
from fpn.data import load_dataset
from fpn.detection import load_detector, save_detector
from fpn.device import resolve_device
from fpn.engine.config import RunConfig
from fpn.engine.evaluate import evaluate
from fpn.engine.train import has_split, train
from fpn.errors import ConfigError
from fpn.io import atomic_write_text, read_state_dict
from fpn.viz.compare_plots import COLUMNS, summary_line, write_report

__all__ = [
    "COSTS",
    "DEFAULT_DESIGNS",
    "DEFAULT_ITERS",
    "LATENCY_RUNS",
    "LATENCY_WARMUP",
    "METRICS",
    "REFERENCE",
    "backbone_override",
    "check_designs",
    "check_same_run",
    "compare",
    "compare_config",
    "derive_image_pyramid",
    "design_config",
    "ensure_trained",
    "measure_memory",
    "memory_probe",
    "run_design",
    "run_dirs",
    "run_metrics",
    "trained_design",
    "training_seconds",
]

logger = logging.getLogger(__name__)

#: Every design of the paper's Figure 1, in its order, then the paper's two ablations.
DEFAULT_DESIGNS = ("image-pyramid", "single-map", "hierarchy", "fpn", "top-down-only", "finest-only")
REFERENCE = "fpn"  # results.md gives every number also as a ratio to this design's
#: What every design's row holds: the val metrics of its run, then its costs (results.md's columns, in order).
METRICS = tuple(key for _, key, _, ap_like in COLUMNS if ap_like)
COSTS = tuple(key for _, key, _, ap_like in COLUMNS if not ap_like)
LATENCY_RUNS = 10
LATENCY_WARMUP = 2

# ------------------------------------------------------------------------------------------ training


def ensure_trained(config: RunConfig, run_dir: Path, *, progress: bool) -> Path:
    """``run_dir/model.pt``, training (or resuming) the run first unless it is already finished."""
    model_path = run_dir / "model.pt"
    if model_path.is_file():
        check_same_run(run_dir, config)
        return model_path
    resume = (run_dir / "last.pt").is_file()
    if resume:
        check_same_run(run_dir, config)
    return train(config, run_dir, resume=resume, progress=progress)


def derive_image_pyramid(source_dir: Path, run_dir: Path, config: RunConfig, *, progress: bool) -> Path:
    """``run_dir/model.pt``: the single-map weights of ``source_dir`` as an image-pyramid detector, evaluated.

    The two designs build the same modules, so the weights load unchanged; only inference differs.
    """
    model_path = run_dir / "model.pt"
    if model_path.is_file() and (run_dir / "metrics.json").is_file():
        check_same_run(run_dir, config)
        return model_path
    model, checkpoint = load_detector(source_dir / "model.pt", config_overrides=["pyramid.design=image-pyramid"])
    device = resolve_device(config.train.device)
    val = load_dataset(config.data, "val")
    result = evaluate(model.to(device), val, batch_size=config.train.batch_size, device=device, progress=progress)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_config = design_config(RunConfig.from_dict(checkpoint["run_config"]), "image-pyramid")
    atomic_write_text(run_config.to_yaml(), run_dir / "config.yaml")
    payload = {
        "iteration": checkpoint.get("iteration"),
        **{k: result[k] for k in ("metrics", "per_level", "images")},
        "weights_from": str(source_dir / "model.pt"),
    }
    atomic_write_text(json.dumps(payload, indent=2) + "\n", run_dir / "metrics.json")
    # model.pt last: its presence marks the folder as finished.
    extra = {"run_config": run_config.to_dict(), "iteration": checkpoint.get("iteration"), "metrics": result["metrics"]}
    return save_detector(model.cpu(), model_path, **extra, weights_from=str(source_dir / "model.pt"))


def run_metrics(run_dir: Path, config: RunConfig, *, progress: bool) -> dict[str, float | None]:
    """The run's final val metrics: its ``metrics.json``, or a fresh evaluation when that is missing."""
    path = run_dir / "metrics.json"
    if path.is_file():
        return json.loads(path.read_text())["metrics"]
    model, _ = load_detector(run_dir / "model.pt")
    device = resolve_device(config.train.device)
    val = load_dataset(config.data, "val")
    batch = config.train.batch_size
    return evaluate(model.to(device), val, batch_size=batch, device=device, progress=progress)["metrics"]


def training_seconds(run_dir: Path) -> float | None:
    """Wall time the run trained for, over all its resumed parts (from ``last.pt``)."""
    path = run_dir / "last.pt"
    return round(float(read_state_dict(path).get("elapsed", 0.0)), 2) if path.is_file() else None


# ----------------------------------------------------------------------------------------------- costs


def measure_memory(model_path: Path, config: RunConfig, *, threads: int) -> dict[str, float | None]:
    """``train_peak_mb`` and ``infer_peak_mb`` of the checkpoint, from a fresh subprocess (module docstring)."""
    none = {"train_peak_mb": None, "infer_peak_mb": None}
    if not Path("/proc/self/clear_refs").exists():
        logger.warning("peak memory is measured on Linux only (/proc/self/clear_refs); left out")
        return none
    try:
        return run_probe(memory_probe, {"model": str(model_path), "run_config": config.to_dict()}, threads=threads)
    except ProbeFailed as error:
        logger.warning("%s: memory probe failed (%s); peak memory left out", model_path, error)
        return none


# ---------------------------------------------------------------------------------------- the comparison


def compare(
    designs: Sequence[str] = DEFAULT_DESIGNS,
    *,
    out_dir: str | Path,
    data: str = "synthetic",
    model_preset: str = "tiny-fpn",
    iters: int | None = None,
    minutes: float | None = None,
    seed: int = 0,
    seeds: int = 1,
    backbone_weights: str | None = None,
    threads: int | None = None,
    overrides: Sequence[str] = (),
    latency_runs: int = LATENCY_RUNS,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, evaluate and measure every design in ``designs`` under one run config; write ``out_dir``'s files.

    The budget is ``iters`` iterations per design (default :data:`DEFAULT_ITERS`) or ``minutes``;
    ``overrides`` are ``key=value`` changes to the shared run config (anything but the design). Each design
    is trained ``seeds`` times, with seeds ``seed`` to ``seed + seeds - 1``; ``backbone_weights`` is an
    ImageNet ResNet checkpoint every design starts from. ``threads`` (default: torch's current count) is used
    for training and for every measurement. Returns the content of ``results.json``: ``{"designs": {name:
    {AP, AP50, AP75, APs, APm, APl, AR100 (means over the seeds), spread: {metric: {mean, min, max, values}},
    GFLOPs, params, latency_s, latency_rounds_s, train_peak_mb, infer_peak_mb, iterations, train_s, run,
    runs}}, "config": {designs, data, budget, seed, seeds, run (the shared run config), ...},
    "differences": [lines], "machine": {cpu, cores, threads, torch, ...}, "elapsed_s": wall time}``.
    ``train_s`` is the mean training wall time of the runs the weights come from (single-map's for
    image-pyramid).
    """
    designs = check_designs(designs)
    if seeds < 1:
        raise ConfigError(f"seeds must be at least 1, got {seeds}")
    overrides = [*overrides, *backbone_override(backbone_weights)]
    shared = compare_config(
        data=data, model_preset=model_preset, iters=iters, minutes=minutes, seed=seed, overrides=overrides
    )
    if not has_split(shared.data, "val"):
        raise ConfigError(f"{shared.data}: no val split; compare evaluates every design on it")
    if latency_runs < 1:
        raise ConfigError(f"latency_runs must be at least 1, got {latency_runs}")
    threads = torch.get_num_threads() if threads is None else threads
    if threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    out = Path(out_dir)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        seed_list = list(range(seed, seed + seeds))
        return _compare(
            designs, shared, out, seeds=seed_list, threads=threads, latency_runs=latency_runs, progress=progress
        )
    finally:
        torch.set_num_threads(previous_threads)


def backbone_override(weights: str | None) -> list[str]:
    """``model.backbone.weights=<absolute path>`` for an ImageNet checkpoint (a URL as given); refused up front
    when the file is missing, before any design trains."""
    if weights is None:
        return []
    if weights.startswith(("http://", "https://")):
        return [f"model.backbone.weights={weights}"]
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"--backbone-weights {weights}: no such file")
    return [f"model.backbone.weights={path.resolve()}"]


def _compare(
    designs: list[str], shared: RunConfig, out: Path, *, seeds: list[int], threads: int, latency_runs: int,
    progress: bool,
) -> dict[str, Any]:  # fmt: skip
    started = time.perf_counter()
    val = load_dataset(shared.data, "val")  # the built-in set is generated here the first time
    probe_image = val[0][0]
    run_settings = shared.to_dict()
    run_settings["model"]["pyramid"].pop("design")  # the one setting that differs between the runs
    run_settings["model"].update(class_names=list(val.names), category_ids=list(val.category_ids))  # as trained
    results: dict[str, Any] = {
        "designs": {},
        "config": {
            "designs": designs,
            "data": shared.data,
            "budget": {"iters": shared.train.iters, "minutes": shared.train.minutes},
            "seed": shared.train.seed,
            "seeds": seeds,
            "reference": REFERENCE,
            "probe_image": val.records[0].file_name,
            "latency_runs": latency_runs,
            "latency_warmup": LATENCY_WARMUP,
            "run": run_settings,
        },
        "machine": machine_info(threads=threads),
    }
    bar = tqdm(designs, desc="compare", unit="design", dynamic_ncols=True, disable=not progress, file=sys.stderr)
    try:
        for design in bar:
            row = run_design(
                design, shared, out, probe_image, seeds=seeds, threads=threads, progress=progress,
                status=lambda text, design=design: bar.set_postfix_str(f"{design}: {text}"),
            )  # fmt: skip
            results["designs"][design] = row
            results["elapsed_s"] = round(time.perf_counter() - started, 1)  # this call's wall time, so far
            atomic_write_text(json.dumps(results, indent=2) + "\n", out / "results.json")  # partial results survive
        bar.set_postfix_str(f"latency, {latency_runs} rounds")
        models = {design: load_detector(Path(row["run"]) / "model.pt")[0] for design, row in results["designs"].items()}
        rounds = latency_rounds(models, probe_image, rounds=latency_runs, warmup=LATENCY_WARMUP)
        for design, latency in medians(rounds).items():
            results["designs"][design].update(latency_s=round(latency, 5), latency_rounds_s=rounds[design])
    finally:
        bar.close()
    spreads = {design: row.get("spread", {}) for design, row in results["designs"].items()}
    results["differences"] = differences(spreads, REFERENCE, METRICS, len(seeds))
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    atomic_write_text(json.dumps(results, indent=2) + "\n", out / "results.json")
    for design, row in results["designs"].items():
        line = f"{design}: {summary_line(row)}"
        if progress:
            tqdm.write(line, file=sys.stderr)
        else:
            logger.info(line)
    write_report(results, out)
    return results


def run_dirs(out: Path, design: str, seeds: list[int]) -> list[Path]:
    """``runs/<design>`` for one seed; ``runs/<design>-seed<k>`` for each of several."""
    if len(seeds) == 1:
        return [out / "runs" / design]
    return [out / "runs" / f"{design}-seed{seed}" for seed in seeds]


def run_design(
    design: str,
    shared: RunConfig,
    out: Path,
    probe_image: torch.Tensor,
    *,
    seeds: Sequence[int] | None = None,
    threads: int,
    progress: bool,
    status: Callable[[str], object] = lambda text: None,
) -> dict[str, Any]:
    """One design's row of the results, latency aside (measured in rounds across the designs): train (or
    reuse) its run of every seed under ``out/runs``, evaluate each; the costs of the first seed's model."""
    seeds = list(seeds) if seeds is not None else [shared.train.seed]
    run_list = run_dirs(out, design, seeds)
    source_list = run_dirs(out, trained_design(design), seeds)
    per_seed: list[dict[str, float | None]] = []
    for seed, run_dir, source_dir in zip(seeds, run_list, source_list, strict=True):
        seeded = RunConfig.from_dict(shared.to_dict())
        seeded.train.seed = seed
        config = design_config(seeded, design)
        what = f" (seed {seed})" if len(seeds) > 1 else ""
        status(f"training {trained_design(design)}{what}")
        ensure_trained(design_config(seeded, trained_design(design)), source_dir, progress=progress)
        if design == "image-pyramid":
            status(f"evaluating at {len(config.model.pyramid.test_scales)} scales{what}")
            derive_image_pyramid(source_dir, run_dir, config, progress=progress)
        status(f"evaluating{what}")
        per_seed.append(run_metrics(run_dir, config, progress=progress))
    status("measuring")
    row: dict[str, Any] = {}
    spread = {key: summarise([metrics.get(key) for metrics in per_seed]) for key in METRICS}
    for key in METRICS:
        row[key] = per_seed[0].get(key) if spread[key] is None else spread[key]["mean"]
    if len(seeds) > 1:
        row["spread"] = spread
    row.update(_measure(run_list[0] / "model.pt", design_config(shared, design), probe_image, threads=threads))
    row["iterations"] = read_state_dict(run_list[0] / "model.pt").get("iteration")
    train_s = [training_seconds(source_dir) for source_dir in source_list]
    row["train_s"] = None if None in train_s else round(sum(train_s) / len(train_s), 2)
    row["run"] = str(run_list[0])
    row["runs"] = [str(run_dir) for run_dir in run_list]
    return row


def _measure(model_path: Path, config: RunConfig, image: torch.Tensor, *, threads: int) -> dict[str, Any]:
    model, _ = load_detector(model_path)  # on the CPU, in eval mode
    return {
        "GFLOPs": forward_gflops(model, image),
        "params": sum(p.numel() for p in model.parameters()),
        **measure_memory(model_path, config, threads=threads),
    }
