"""`ranker export RUN --quantize int8`: the options and the handler (wired into `ranker export`).

Without `--base` the run is exported as usual (fp32, checked against PyTorch) and that version is
quantised; with `--base vNNNN` an fp32 version already published from this run is. The run
directory supplies the training log (its config's data paths): calibration from the training
days, parity on the validation day.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.quantize_config import MODES, QualityBound, QuantizeOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = QualityBound()
    group = parser.add_argument_group("int8 scoring")
    group.add_argument(
        "--quantize",
        choices=["int8"],
        help="also publish an int8 version of the model (refused if it loses too much quality)",
    )
    group.add_argument(
        "--quantize-mode",
        choices=MODES,
        default="dynamic",
        help="dynamic: activation scales per run (default, measured faster here); static: "
        "scales calibrated on training-day requests",
    )
    group.add_argument(
        "--base",
        metavar="VERSION",
        help="quantise this already published fp32 version instead of exporting the run again",
    )
    group.add_argument(
        "--max-auc-drop",
        type=float,
        default=defaults.max_auc_drop,
        help="refuse when click AUC drops by more than this (default %(default)s)",
    )
    group.add_argument(
        "--max-rmse-rise",
        type=float,
        default=defaults.max_rmse_rise,
        help="refuse when a task's RMSE rises by more than this fraction (default %(default)s)",
    )
    group.add_argument(
        "--calibration-requests",
        type=int,
        default=QuantizeOptions().calibration_requests,
        help="training-day requests that calibrate static scales (default %(default)s)",
    )


def run_log(run_dir: Path) -> tuple[list[str], bool]:
    """The training log paths and the drop_invalid flag recorded in a run's best.pt."""
    import torch

    from training.checkpoint import BEST

    best = run_dir / BEST
    if not best.is_file():
        raise FileNotFoundError(f"{best}: not found; {run_dir} is not a finished training run")
    data = torch.load(best, map_location="cpu", weights_only=True)["config"]["data"]
    return [str(p) for p in data["paths"]], bool(data.get("drop_invalid"))


def export_quantized(args: argparse.Namespace) -> int:
    from training.export import export_run
    from training.quantize import QuantizeError, quantize_version

    if args.quantize != "int8":
        raise ValueError(f"--quantize: only int8 is supported, got {args.quantize!r}")
    if args.base and args.parent:
        raise ValueError("--parent: the int8 version's parent is --base; give one of them")
    registry, name, run_dir = Path(args.registry), args.name, Path(args.run_dir)
    options = QuantizeOptions(
        mode=args.quantize_mode,
        bound=QualityBound(args.max_auc_drop, args.max_rmse_rise),
        calibration_requests=args.calibration_requests,
    )
    paths, drop_invalid = run_log(run_dir)
    base = args.base
    if base is None:
        fp32 = export_run(run_dir, registry, name, parent=args.parent)
        base = fp32.version
        print(f"exported fp32 {name} version {base} to {registry / name / base}")
    try:
        manifest = quantize_version(registry, name, base, paths, options, drop_invalid=drop_invalid)
    except QuantizeError as exc:
        if args.base is None:
            raise QuantizeError(f"{exc}; the fp32 version {base} stays published") from None
        raise
    report = manifest.exporter["quantization"]["parity"]
    deltas = ", ".join(
        f"{k} {v:+.5f}" if k.endswith("_auc") else f"{k} {v:+.3%}"
        for k, v in report["delta"].items()
    )
    print(
        f"published int8 {name} version {manifest.version} (parent {base}, {options.mode}) to "
        f"{registry / name / manifest.version}"
    )
    print(
        f"vs fp32 on {report['days']} ({report['requests']} requests): {deltas}; ranking "
        f"agreement ndcg@10 mean {report['ranking']['mean']:.4f}, min {report['ranking']['min']:.4f}"
    )
    print(manifest.version)
    return 0
