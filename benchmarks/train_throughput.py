"""End-to-end training throughput on a KuaiRand-layout import: ranker vs torch-rechub's MMOE.

    pip install torch-rechub    # the `bench` extra
    python -m benchmarks.train_throughput [--epochs 3] [--rounds 1] [--requests 2460]

One KuaiRand-layout log (a simulated world written as KuaiRand CSVs, `benchmarks.kuairand_layout`:
2,000 users, 1,500 videos, 14 days, ~690k impressions by default) is imported with
`import_kuairand` (tables sized to the data). Then, in the same process and on the same data:
- ranker: `prepare_data` (read the Parquet, split by day, fit dense stats, encode) and
  `Trainer.fit` (shuffled epochs, per-epoch validation and checkpoint) with equal weights;
- torch-rechub: the same read and encode (ours, so both get the same buckets and the same time for
  it), then its own data path and loop: `DataGenerator` -> `DataLoader` (per-sample dataset and
  collate) -> `MTLTrainer.fit` (per-epoch validation, best weights kept);
- torch-rechub's model driven by our batches in a hand-written loop (its model step without its
  data path: the fastest way to train it here).
Both: MMoE with 8 experts [256, 128], towers [64], 16-dim embeddings, Adam lr 1e-3 without weight
decay, batch 2048, click BCE + log1p(watch time) + completion losses summed with equal weights.
Samples/s = training rows x epochs / seconds, end to end (from reading the import to the end of the
last epoch's validation) and for the training epochs alone. Test metrics: the best-validation
epoch of each, on the last 3 days. Also measured: the step rate and checkpoint size of the
configuration before issue 16 (dense Adam on tables sized for KuaiRand-27K).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.kuairand_layout import write_kuairand_layout
from benchmarks.peer_training import rechub_inputs, rechub_model
from benchmarks.report import machine, write_section
from ranker.schema import FeatureSpec
from sim.simulate import SimulatorConfig
from training.checkpoint import CHECKPOINT
from training.config import TrainConfig, load_config
from training.data import EncodedData
from training.datasets.kuairand.columns import SPEC_FILE, kuairand_spec
from training.datasets.kuairand.importer import import_kuairand
from training.evaluate import evaluate_predictions
from training.prepare import PreparedData, prepare_data
from training.trainer import Trainer

MODEL = [
    "model.kind=mmoe",
    "model.config.num_experts=8",
    "model.config.expert_units=[256, 128]",
    "model.config.tower_units=[64]",
    "model.config.embedding_dim=16",
    "balancer.name=ew",
    "aux.form=none",
    "tasks.losses={watch_time: log_mse}",
]


class TimedTrainer(Trainer):
    """The trainer, timing its training epochs and when the last epoch's work ended."""

    epoch_seconds: float = 0.0
    loop_end: float = 0.0

    def _train_epoch(self) -> list[dict[str, Any]]:
        started = time.perf_counter()
        records = super()._train_epoch()
        self.epoch_seconds += time.perf_counter() - started
        return records

    def _finish(self, seconds: float) -> dict[str, Any]:
        self.loop_end = time.perf_counter()
        return super()._finish(seconds)


def run_ranker(config: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """`ranker train` as the CLI runs it (equity logging every 10 steps), timed."""
    started = time.perf_counter()
    data = prepare_data(config)
    assert isinstance(data, PreparedData)  # the in-memory path
    prepared = time.perf_counter()
    trainer = TimedTrainer(config, data, run_dir, progress=False)  # as `ranker train` runs
    doc = trainer.fit()
    rows = data.train.rows * doc["epochs_run"]
    return {
        "name": f"ranker MMoE ({config.train.precision}, SparseAdam tables)",
        "prepare_s": prepared - started,
        "e2e_s": trainer.loop_end - started,
        "epoch_s": trainer.epoch_seconds,
        "samples": rows,
        "epochs": doc["epochs_run"],
        "best_epoch": doc["best_epoch"],
        "test": doc["test"],
        "checkpoint_mb": (run_dir / CHECKPOINT).stat().st_size / 1e6,
    }


def run_rechub(config: TrainConfig, run_dir: Path, epochs: int, patience: int) -> dict[str, Any]:
    """torch-rechub's MTLTrainer at our learning rate; with `patience`, early stopping on the
    validation click AUC (its task 0), as ranker's run then stops."""
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import DataGenerator

    class TimedMTLTrainer(MTLTrainer):  # type: ignore[misc]
        epoch_seconds = 0.0
        epochs_run = 0
        valid_auc: ClassVar[list[float]] = []  # the class is made per call: one list per run

        def train_one_epoch(self, data_loader):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            out = super().train_one_epoch(data_loader)
            self.epoch_seconds += time.perf_counter() - started
            self.epochs_run += 1
            return out

        def evaluate(self, model, data_loader):  # type: ignore[no-untyped-def]
            scores = super().evaluate(model, data_loader)
            self.valid_auc.append(scores[0])  # fit() evaluates the validation set once an epoch
            return scores

    started = time.perf_counter()
    data = prepare_data(config)
    assert isinstance(data, PreparedData)  # the in-memory path
    prepared = time.perf_counter()
    assert data.test is not None
    x = {k: _numpy(rechub_inputs(data.spec, d.inputs)) for k, d in _splits(data).items()}
    y = {k: _targets(d.labels) for k, d in _splits(data).items()}
    loaders = DataGenerator(x["train"], y["train"]).generate_dataloader(
        x["valid"], y["valid"], x["test"], y["test"], batch_size=config.train.batch_size
    )
    model = rechub_model(data.spec)
    trainer = TimedMTLTrainer(
        model,
        ["classification", "regression", "regression"],
        optimizer_params={"lr": config.optimizer.lr, "weight_decay": 0.0},
        n_epoch=epochs,
        earlystop_patience=patience if patience > 0 else epochs + 1,
        model_path=str(run_dir),
    )
    trainer.fit(loaders[0], loaders[1])
    ended = time.perf_counter()
    if trainer.early_stopper.best_weights is not None:
        model.load_state_dict(trainer.early_stopper.best_weights)
    return {
        "name": "torch-rechub MMOE (DataGenerator + MTLTrainer)",
        "prepare_s": prepared - started,
        "e2e_s": ended - started,
        "epoch_s": trainer.epoch_seconds,
        "samples": data.train.rows * trainer.epochs_run,
        "epochs": trainer.epochs_run,
        "best_epoch": int(np.argmax(trainer.valid_auc)) + 1,  # EarlyStopper keeps the first best
        "test": evaluate_predictions(_rechub_predict(model, data.spec, data.test), data.test),
        "checkpoint_mb": None,
    }


def _splits(data: PreparedData) -> dict[str, Any]:
    return {"train": data.train, "valid": data.valid, "test": data.test}


def _numpy(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in tensors.items()}


def _targets(labels: dict[str, np.ndarray]) -> np.ndarray:
    """torch-rechub's label matrix: click, log1p(watch seconds), completion."""
    return np.stack(
        [labels["click"], np.log1p(labels["watch_time"]), labels["completion"]], axis=1
    ).astype(np.float32)


@torch.no_grad()
def _rechub_predict(
    model: torch.nn.Module, spec: FeatureSpec, data: EncodedData
) -> dict[str, np.ndarray]:
    """torch-rechub's outputs in natural units, for our metrics."""
    was_training = model.training
    model.eval()
    raw = np.concatenate(
        [model(rechub_inputs(spec, batch.inputs)).numpy() for batch in data.slices(8192)]
    )
    model.train(was_training)
    return {
        "click": raw[:, 0],  # its prediction layer applies the sigmoid
        "watch_time": np.expm1(np.clip(raw[:, 1], 0.0, 30.0)),
        "completion": np.clip(raw[:, 2], 0.0, 1.0),
    }


def run_rechub_manual(config: TrainConfig, epochs: int) -> dict[str, Any]:
    """torch-rechub's model driven by our batches (no DataLoader, a hand-written loop): the
    fastest way to train it here, so the model step itself is compared too."""
    started = time.perf_counter()
    data = prepare_data(config)
    assert isinstance(data, PreparedData)  # the in-memory path
    prepared = time.perf_counter()
    assert data.test is not None
    model = rechub_model(data.spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.optimizer.lr)
    epoch_s, best_auc, best_state = 0.0, -1.0, None
    for epoch in range(epochs):
        epoch_started = time.perf_counter()
        model.train()
        for batch in data.train.shuffled_batches(config.train.batch_size, seed=epoch):
            y = model(rechub_inputs(data.spec, batch.inputs))
            target = torch.from_numpy(_targets(batch.labels))
            loss = (
                F.binary_cross_entropy(y[:, 0], target[:, 0])
                + F.mse_loss(y[:, 1], target[:, 1])
                + F.mse_loss(y[:, 2], target[:, 2])
            ) / 3
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        epoch_s += time.perf_counter() - epoch_started
        valid = evaluate_predictions(_rechub_predict(model, data.spec, data.valid), data.valid)
        if valid["click"]["auc"] > best_auc:
            best_auc, best_state = valid["click"]["auc"], copy.deepcopy(model.state_dict())
    ended = time.perf_counter()
    assert best_state is not None
    model.load_state_dict(best_state)
    return {
        "name": "torch-rechub MMOE (our batches, hand-written loop)",
        "prepare_s": prepared - started,
        "e2e_s": ended - started,
        "epoch_s": epoch_s,
        "samples": data.train.rows * epochs,
        "epochs": epochs,
        "best_epoch": None,
        "test": evaluate_predictions(_rechub_predict(model, data.spec, data.test), data.test),
        "checkpoint_mb": None,
    }


def before_issue_16(base: list[str], root: Path, steps: int) -> dict[str, float]:
    """Step rate and checkpoint size with dense Adam on the fixed KuaiRand-27K tables."""
    spec_path = root / "spec_27k.yaml"
    kuairand_spec().save(spec_path)
    old = load_config(
        None,
        [*base, f"data.spec={spec_path}", "optimizer.sparse_embeddings=false", f"out={root}"],
    )
    data = prepare_data(old)
    assert isinstance(data, PreparedData)  # the in-memory path
    trainer = Trainer(old, data, root / "before", progress=False, equity_every=0)
    batches = data.train.shuffled_batches(old.train.batch_size, seed=0)
    trainer.train_step(next(batches))  # warm-up (allocates Adam's state)
    started = time.perf_counter()
    rows = 0
    for _, batch in zip(range(steps), batches, strict=False):
        trainer.train_step(batch)
        rows += batch.rows
    rate = rows / (time.perf_counter() - started)
    (root / "before").mkdir(exist_ok=True)
    trainer.save_checkpoint(root / "before" / CHECKPOINT)
    params = sum(p.numel() for p in trainer.model.parameters())
    return {
        "samples_per_s": rate,
        "checkpoint_mb": trainer.checkpoint_bytes / 1e6,
        "params": params,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="ranker/torch-rechub pairs")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=1500)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--requests", type=int, default=2460, help="requests per day")
    parser.add_argument(
        "--before-steps", type=int, default=30, help="steps of the pre-issue-16 setup (0: skip)"
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's rate, for every run")
    parser.add_argument(
        "--patience", type=int, default=0,
        help="early stopping on validation click AUC after this many stale epochs (0: none)",
    )  # fmt: skip
    parser.add_argument(
        "--ranker-stopping", default="click.auc", choices=["click.auc", "loss"],
        help="ranker's early-stopping rule: torch-rechub's (click AUC) or ranker's default (the "
        "sum of the tasks' validation losses); torch-rechub's MTLTrainer has only click AUC",
    )  # fmt: skip
    parser.add_argument(
        "--section", default="train_throughput", help="docs/benchmarks.md section to write"
    )
    parser.add_argument(
        "--precisions", nargs="+", default=["float32", "bfloat16"],
        help="train.precision of the ranker runs",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads for every run (default: torch's)"
    )
    parser.add_argument(
        "--no-manual", dest="manual", action="store_false",
        help="skip torch-rechub driven by a hand-written loop over our batches",
    )  # fmt: skip
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world = SimulatorConfig(
            users=args.users, items=args.items, authors=300, days=args.days,
            requests_per_day=args.requests,
        )  # fmt: skip
        log_rows = write_kuairand_layout(world, root / "src")
        started = time.perf_counter()
        import_kuairand(root / "src", root / "imported")
        import_s = time.perf_counter() - started
        base = [
            f"data.paths=[{root / 'imported'}]",
            f"data.spec={root / 'imported' / SPEC_FILE}",
            "data.valid_days=1",
            "data.test_days=3",
            f"train.batch_size={args.batch}",
            f"train.epochs={args.epochs}",
            f"train.patience={args.patience}",
            f"train.early_stopping={args.ranker_stopping}",
            f"optimizer.lr={args.lr}",
            f"train.threads={args.threads or 'null'}",
            *MODEL,
        ]
        results: list[dict[str, Any]] = []
        for round_ in range(args.rounds):
            for precision in args.precisions:
                run_dir = root / f"ranker{round_}{precision}"
                overrides = [*base, f"out={run_dir}", f"train.precision={precision}"]
                results.append(run_ranker(load_config(None, overrides), run_dir))
            config = load_config(None, [*base, f"out={root / 'rechub'}"])
            (root / f"rechub{round_}").mkdir()
            results.append(run_rechub(config, root / f"rechub{round_}", args.epochs, args.patience))
            if args.manual:
                results.append(run_rechub_manual(config, args.epochs))
            peer = next(r for r in results[::-1] if "MTLTrainer" in r["name"])
            for r in results[-(len(args.precisions) + 1 + args.manual) :]:
                print(_row(r, peer["samples"] / peer["e2e_s"]), flush=True)
        before = before_issue_16(base, root, args.before_steps) if args.before_steps else None
        body = _report(args, log_rows, import_s, results, before)
    print(body)
    write_section(args.section, body)


def _row(r: dict[str, Any], peer_rate: float) -> str:
    e2e = r["samples"] / r["e2e_s"]
    epochs = r["samples"] / r["epoch_s"]
    test = r["test"]
    return (
        f"| {r['name']} | {e2e:,.0f} | {e2e / peer_rate:.2f}x | {epochs:,.0f} | "
        f"{r['epochs']} ({r['best_epoch'] or '-'}) | "
        f"{r['prepare_s']:.1f} | {r['e2e_s']:.0f} | {test['click']['auc']:.4f} | "
        f"{test['click']['logloss']:.4f} | {test['watch_time']['rmse']:.2f} | "
        f"{test['completion']['rmse']:.4f} |"
    )


def _report(
    args: argparse.Namespace,
    log_rows: int,
    import_s: float,
    results: list[dict[str, Any]],
    before: dict[str, float] | None,
) -> str:
    ours = [r for r in results if r["name"].startswith("ranker")]
    peer = [r for r in results if "MTLTrainer" in r["name"]]
    manual = [r for r in results if "hand-written" in r["name"]]
    peer_rate = statistics.median(r["samples"] / r["e2e_s"] for r in peer)

    def rate(r: dict[str, Any]) -> float:
        return float(r["samples"] / r["e2e_s"])

    ratios = [
        f"{o['name']}: {rate(o) / peer_rate:.2f}x torch-rechub's MTLTrainer"
        + (
            f", {rate(o) / statistics.median(map(rate, manual)):.2f}x its model in our loop"
            if manual
            else ""
        )
        for o in ours
    ]
    rows = [
        "| run | samples/s end to end | vs torch-rechub | samples/s in training epochs | "
        "epochs run (best) | read + encode s | end to end s | test click AUC | test click logloss | "
        "test watch RMSE s | test completion RMSE |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(_row(r, peer_rate) for r in results),
    ]
    train_rows = ours[0]["samples"] // ours[0]["epochs"]
    return "\n".join(
        [
            "## Training end to end on a KuaiRand-layout import: ranker vs torch-rechub"
            + (", each side's own early stopping" if args.ranker_stopping == "loss" else ""),
            "",
            f"`python -m benchmarks.train_throughput --epochs {args.epochs} --rounds {args.rounds} "
            f"--requests {args.requests} --lr {args.lr:g} --patience {args.patience}"
            + (f" --threads {args.threads}" if args.threads else "")
            + ("" if args.manual else " --no-manual")
            + (
                f" --ranker-stopping {args.ranker_stopping}"
                if args.ranker_stopping != "click.auc"
                else ""
            )
            + (f" --section {args.section}" if args.section != "train_throughput" else "")
            + f" --before-steps {args.before_steps}"
            + f"`: a simulated world of {args.users:,} users and "
            f"{args.items:,} videos over {args.days} days written as KuaiRand CSVs ({log_rows:,} "
            f"impressions), imported in {import_s:.1f} s with tables sized to the data; "
            f"{train_rows:,} training rows (3 test days, 1 validation day), "
            + (
                f"up to {args.epochs} epochs, early stopping after {args.patience} stale "
                "epoch(s) on validation click AUC for both"
                + (
                    ""
                    if args.ranker_stopping == "click.auc"
                    else " (torch-rechub's only rule) and, for ranker, on its default rule, the "
                    "sum of the tasks' validation losses"
                )
                + ", "
                if args.patience
                else f"{args.epochs} epochs, "
            )
            + f"batch {args.batch}, MMoE 8 x [256, 128], towers [64], 16-dim embeddings, "
            f"Adam {args.lr:g} for both, "
            f"equal weights; torch threads: {torch.get_num_threads()}; {machine()}. End to end = "
            "reading the import to the end of the last epoch's validation (ranker's checkpoints "
            "included); torch-rechub is given our vectorised read and encode (the same buckets, "
            "the same seconds), then its own DataGenerator/DataLoader and MTLTrainer. Test "
            "metrics: best-validation epoch, last 3 days. Rounds run one after the other on a "
            "shared machine.",
            "",
            *rows,
            "",
            "End to end: "
            + "; ".join(ratios)
            + f". Checkpoint: {ours[0]['checkpoint_mb']:.1f} MB now"
            + (
                f"; before issue 16 (dense Adam, tables sized for KuaiRand-27K, "
                f"{before['params'] / 1e6:.1f}M parameters) {before['checkpoint_mb']:.0f} MB and "
                f"{before['samples_per_s']:,.0f} samples/s over {args.before_steps} training "
                "steps (step rate only, same session)."
                if before
                else "."
            ),
        ]
    )


if __name__ == "__main__":
    main()
