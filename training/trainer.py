"""`ranker train`: fit a multi-task model with a loss balancer, evaluate each epoch, checkpoint.

The loop lives here; data preparation in training/prepare.py, the model files' atomic writing and
reading in training/checkpoint.py. Over 400 lines on purpose: what is left is one Trainer whose
state (wrapper, optimizer, balancer, epoch/step/best) every step, epoch and checkpoint method
reads and writes; splitting it further would pass that state around in pieces.

The log is loaded into contiguous arrays (the fast path) or, with `data.stream`, streamed row group
by row group through a shuffle buffer (training/stream.py) for logs larger than memory.

Run directory:
    checkpoint.pt  full state of the last finished epoch (model, aux heads, optimizer, balancer,
                   history) for `--resume`; each epoch seeds its own dropout draws (`rank_seed`).
                   Written atomically after each epoch that trained; its size is printed and
                   stored in metrics.json (`checkpoint_bytes`). Embedding tables train with
                   row-sparse gradients and SparseAdam (`training.optimizer`).
    best.pt        the inference model of the best epoch + config + fitted feature spec (export reads it)
    metrics.json   per-epoch validation metrics, final valid/test metrics with oracle gaps
    steps.csv      per-step task losses, balancer weights, relative rates (equity), gate usage
    *.png          loss curves, equity curve, balancer weights, gate utilisation
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from ranker.balancing import Balancer, build_balancer
from ranker.balancing.gramian import gramian_on_params, gramian_on_representation
from ranker.features import FeatureEncoder
from ranker.models import MultiTaskModel, MultiTaskTrainingModel, build_model
from ranker.models.calibration import OutputCalibration
from ranker.models.inputs import use_sparse_gradients
from ranker.models.position import POSITION_INPUT, AtServedPosition, PositionBias
from ranker.schema import FeatureSpec
from ranker.tasks import build_tasks
from training.calibration import TaskDrift, fit_drift
from training.checkpoint import BEST, CHECKPOINT, atomic_save, load_best
from training.config import ConfigError, TrainConfig
from training.data import EncodedData, day_number
from training.distributed import DistributedWorld, all_reduce_sum, barrier, rank_seed
from training.evaluate import evaluate_model, higher_is_better, lookup, predict
from training.grad_reducer import GradientSync, gradient_sync
from training.optimizer import SplitOptimizer, clip_grad_norm
from training.prepare import PreparedData
from training.stream import StreamingData, StreamSplit, evaluate_stream
from training.weight_average import ema_fn


def build_training(
    config: TrainConfig, spec: FeatureSpec
) -> tuple[MultiTaskTrainingModel, Balancer]:
    """The training wrapper (model + aux heads) and the balancer; errors name the config key."""
    try:
        tasks = build_tasks(config.tasks.names, config.tasks.losses)
    except ValueError as exc:
        raise ConfigError(f"tasks: {exc}") from None
    try:
        model = build_model(config.model.kind, spec, tasks, config.model.config)
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from None
    try:
        balancer = build_balancer(
            config.balancer.name,
            len(tasks),
            config.balancer.params,
            regression=[t.is_regression for t in tasks],
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"balancer: {exc}") from None
    position = None
    if config.debias.position == "pal":
        position = PositionBias(config.debias.max_positions)
    wrapper = MultiTaskTrainingModel(
        model,
        config.aux,
        config.optimizer.embedding_l2,
        factor_l2=config.optimizer.factor_l2,
        position=position,
    )
    return wrapper, balancer


def _save_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=2, default=_json_default, allow_nan=True))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)


class Trainer:
    """Owns one training run: the loop, evaluation, checkpoints and the run directory."""

    # MLflow tracking (training/tracking.py), started by `fit` when tracking.mlflow_uri is set.
    tracker: Any = None

    def __init__(
        self,
        config: TrainConfig,
        data: PreparedData | StreamingData,
        run_dir: Path,
        world: DistributedWorld | None = None,
        progress: bool = True,
        equity_every: int = 10,
    ) -> None:
        self.config = config
        self.data = data
        self.encoder = FeatureEncoder(data.spec)
        # Mixed precision (`train.precision=bfloat16`): the forward's matrix products in bfloat16;
        # weights, gradients, optimiser state and losses float32; evaluation and export float32.
        self.bfloat16 = config.train.precision == "bfloat16"
        self.run_dir = run_dir
        self.world = world or DistributedWorld()
        self.progress = progress and self.world.is_main
        # Every `equity_every` steps the Gramian is computed for logging the relative rates, even
        # for methods that do not use it, so every method gets an equity curve.
        self.equity_every = equity_every
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        torch.manual_seed(config.train.seed)
        self.wrapper, self.balancer = build_training(config, data.spec)
        if self.wrapper.position is not None and getattr(data.train, "position", None) is None:
            raise ConfigError(
                f"debias.position={config.debias.position}: the training days of "
                f"{list(config.data.paths)} have no `position` column in every file (ranker "
                "build-log and simulate-traffic --log-dir write it); or set debias.position=none"
            )
        if config.optimizer.l2_per_id > 0:
            self.wrapper.use_id_prior(self._train_inputs(), config.optimizer.l2_per_id)
        self.device = torch.device(self.world.device)
        self.wrapper.to(self.device)
        self.balancer.to(self.device)
        groups = self.wrapper.param_groups(
            config.optimizer.lr, config.optimizer.task_lr, position_lr=config.debias.lr
        )
        balancer_params = [p for p in self.balancer.parameters() if p.requires_grad]
        if balancer_params:
            groups.append(
                {"name": "balancer", "params": balancer_params, "lr": config.optimizer.lr}
            )
        sparse = use_sparse_gradients(self.wrapper) if config.optimizer.sparse_embeddings else []
        self.optimizer = SplitOptimizer(groups, sparse, config.optimizer.weight_decay)
        # train.ema_decay: the moving average of the weights is what is validated and kept.
        self.average: AveragedModel | None = None
        if config.train.ema_decay > 0:
            self.average = AveragedModel(
                self.model,
                multi_avg_fn=ema_fn(config.train.ema_decay),
                use_buffers=False,  # buffers (hashing offsets, dense statistics) are copied
            )
        self.gradients = self._gradient_sync()
        self.step = 0
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_value: float | None = None
        self.best_epoch = -1
        self.stale_epochs = 0
        self.task_names = list(self.wrapper.task_names)
        # Size of the last checkpoint written (bytes) and the step it holds (None: none yet).
        self.checkpoint_bytes = 0
        self._saved_step: int | None = None

    def _gradient_sync(self) -> GradientSync:
        """How gradients are summed over ranks: all-reduced bucket by bucket during the backward
        (`train.overlap_allreduce`), or in one all-reduce after it. Dense parameters are passed in
        module order, the order the buckets are cut in."""
        loop = self.config.train
        modules = itertools.chain(self.wrapper.parameters(), self.balancer.parameters())
        order = {id(p): i for i, p in enumerate(modules)}
        dense = [p for g in self.optimizer.dense.param_groups for p in g["params"]]
        dense.sort(key=lambda p: order.get(id(p), len(order)))
        sparse_groups = [] if self.optimizer.sparse is None else self.optimizer.sparse.param_groups
        sparse = [p for g in sparse_groups for p in g["params"]]
        return gradient_sync(dense, sparse, self.world, loop.overlap_allreduce, loop.bucket_mb)

    @property
    def model(self) -> MultiTaskModel:
        return self.wrapper.model

    @property
    def inference_model(self) -> MultiTaskModel:
        """What is validated and saved as best.pt: the weights' moving average with
        `train.ema_decay`, else the model as trained."""
        if self.average is None:
            return self.model
        return cast(MultiTaskModel, self.average.module)

    # -- one step ---------------------------------------------------------------------------
    def _tensors(self, arrays: Mapping[str, np.ndarray], part: slice) -> dict[str, Tensor]:
        return {
            k: torch.from_numpy(np.ascontiguousarray(v[part])).to(self.device)
            for k, v in arrays.items()
        }

    def train_step(self, batch: EncodedData) -> dict[str, Any]:
        """Forward, balance, one backward, sum gradients over ranks, optimizer step.

        Each rank scales its mean losses by its share of the batch (local rows / batch rows), so
        the sums over ranks are the global batch's mean losses and gradients. A rank whose slice
        is empty runs the forward on one row with share 0: it joins every collective with exact
        zeros (never the NaN of an empty mean).
        """
        part = self.world.shard(batch.rows)
        return self._step(batch, part, part.stop - part.start, batch.rows)

    def train_local_step(
        self, batch: EncodedData | None, spare: EncodedData
    ) -> dict[str, Any] | None:
        """One step on this rank's own batch (the streaming path: ranks read their own row
        groups). The global batch is the ranks' batches together; a rank that has run out
        (`batch` None) joins with share 0 on a row of `spare`. None once every rank is out."""
        local_rows = 0 if batch is None else batch.rows
        counted = torch.tensor([float(local_rows)], device=self.device)
        global_rows = int(all_reduce_sum(counted, self.world).item())
        if global_rows == 0:
            return None
        source = spare if batch is None else batch
        return self._step(source, slice(0, local_rows), local_rows, global_rows)

    def _step(
        self, batch: EncodedData, part: slice, local_rows: int, global_rows: int
    ) -> dict[str, Any]:
        """The step on rows `part` of `batch` (its first row, with share 0, when `local_rows`
        is 0)."""
        world = self.world
        share = local_rows / global_rows
        if local_rows == 0:
            part = slice(0, 1)
        inputs = self._tensors(batch.inputs, part)
        labels = self._tensors({t: batch.labels[t] for t in self.task_names}, part)
        position = None
        if self.wrapper.position is not None and batch.position is not None:
            position = self._tensors({"position": batch.position}, part)["position"]
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.bfloat16):
            out = self.wrapper(inputs, labels, position)
        losses = out.losses.float() * share
        wants = self.balancer.wants_gramian(self.step)
        log_equity = self.equity_every > 0 and self.step % self.equity_every == 0
        gramian = self._gramian(losses, out.shared) if (wants or log_equity) else None
        global_losses = all_reduce_sum(losses.detach(), world)
        weights = self.balancer.weights(global_losses, gramian if wants else None)
        total = (weights * losses).sum()
        regulariser = self.balancer.regulariser()
        if regulariser is not None:
            total = total + regulariser * share  # the shares sum to 1 over ranks
        if out.penalty is not None:  # embedding L2: no task's, so outside the balancer
            total = total + out.penalty * share
        self.optimizer.zero_grad(set_to_none=True)
        self.gradients.backward(total)  # the gradients come back summed over ranks
        if self.config.optimizer.clip_norm > 0:
            clip_grad_norm(self.wrapper.parameters(), self.config.optimizer.clip_norm)
        self.optimizer.step()
        if self.average is not None:
            self.average.update_parameters(self.model)
        record: dict[str, Any] = {"step": self.step, "epoch": self.epoch}
        main = all_reduce_sum(out.main_losses.detach() * share, world)
        for i, task in enumerate(self.task_names):
            record[f"loss_{task}"] = float(main[i])
            record[f"w_{task}"] = float(weights[i].detach())
        if gramian is not None:
            norms = gramian.diagonal().clamp_min(0).sqrt()
            rates = (global_losses.double() / (norms + 1e-12)).cpu().numpy()
            for i, task in enumerate(self.task_names):
                record[f"r_{task}"] = float(rates[i])
            record["r_var"] = float(np.var(rates / rates.mean())) if rates.mean() > 0 else math.nan
        for gate, usage in self.wrapper.gate_usage.items():
            record[f"gate_{gate}"] = " ".join(f"{u:.4f}" for u in usage.cpu().tolist())
        self.step += 1
        return record

    def _gramian(self, losses: Tensor, shared: tuple[Tensor, ...]) -> Tensor:
        """The Gramian of the global batch's per-task gradients, identical on every rank."""
        task_losses = list(losses.unbind())
        if self.config.balancer.gradients == "representation":
            local = gramian_on_representation(task_losses, shared)
            # Rows are disjoint across ranks: the per-row products add up.
            return all_reduce_sum(local, self.world)
        # Per-task gradients are summed over ranks before the products (the global batch's G).
        return gramian_on_params(
            task_losses, self.model.shared_parameters(), lambda g: all_reduce_sum(g, self.world)
        )

    # -- epochs -----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs with early stopping; returns the final metrics document."""
        loop = self.config.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.world.is_main and self.config.tracking.mlflow_uri is not None:
            from training.tracking import Tracker

            self.tracker = Tracker.start(self.config, self.run_dir, resume=self.epoch > 0)
        steps_file = self.run_dir / "steps.csv"
        if self.epoch == 0 and self.world.is_main:
            # A fresh run (not resumed) starts its curves clean: appending to an earlier run's
            # steps.csv in the same directory would stitch two runs into one plot.
            steps_file.unlink(missing_ok=True)
        started = time.perf_counter()
        while self.epoch < loop.epochs:
            records = self._train_epoch()
            if self.world.is_main:
                _append_csv(steps_file, records)
                valid = self._evaluate(self.inference_model, self.data.valid, self.wrapper.position)
                self._after_epoch(valid, records)
            barrier(self.world)
            self._sync_stop()
            self.epoch += 1
            if self.world.is_main:
                self.save_checkpoint(self.run_dir / CHECKPOINT)
                if self.progress:
                    print(f"checkpoint: {self.checkpoint_bytes / 1e6:.1f} MB")
            if self.stale_epochs >= loop.patience > 0:
                break
        return self._finish(time.perf_counter() - started)

    def _train_inputs(self) -> Iterator[Mapping[str, np.ndarray]]:
        """The training days' encoded inputs: the whole array, or a streamed log chunk by chunk."""
        train = self.data.train
        if isinstance(train, StreamSplit):
            yield from (chunk.inputs for chunk in train.chunks(self.encoder))
        else:
            yield train.inputs

    def _evaluate(
        self,
        model: MultiTaskModel,
        split: EncodedData | StreamSplit,
        tower: PositionBias | None = None,
    ) -> dict[str, dict[str, float]]:
        if isinstance(split, StreamSplit):
            return evaluate_stream(model, split, self.encoder, device=str(self.device))
        if tower is not None and split.position is not None:
            # Judged as trained, at the served positions: on logged days the position-0 outputs
            # alone look worse the better the position effect is removed.
            served = replace(split, inputs={**split.inputs, POSITION_INPUT: split.position})
            at_position = cast(MultiTaskModel, AtServedPosition(model, tower))
            return evaluate_model(at_position, served, device=str(self.device))
        return evaluate_model(model, split, device=str(self.device))

    def _calibrate(self, model: MultiTaskModel, tower: PositionBias | None) -> dict[str, TaskDrift]:
        """With `calibration.drift: trend`, fit the best model's offsets on the training days
        (at the served positions when debiased, as evaluated), set them on `model` and store
        them in best.pt, which export and load_best read."""
        settings = self.config.calibration
        train = self.data.train
        if settings.drift == "none" or not isinstance(train, EncodedData) or train.day is None:
            return {}
        days = train.day
        model.calibration = OutputCalibration()  # fit on the model's own outputs (a resumed run)
        scored: torch.nn.Module = model
        if tower is not None and train.position is not None:
            train = replace(train, inputs={**train.inputs, POSITION_INPUT: train.position})
            scored = AtServedPosition(model, tower)
        preds = predict(scored, train, device=str(self.device))
        split = self.data.split
        newest = max(day_number(d) for d in [*split.train, *split.valid, *split.test])
        fits = fit_drift(model.tasks, days, preds, train.labels, newest + settings.horizon_days)
        offsets = {task: fit.offset for task, fit in fits.items()}
        model.calibration = OutputCalibration.for_tasks(model.tasks, offsets)
        state = torch.load(self.run_dir / BEST, map_location="cpu", weights_only=True)
        state["calibration"] = offsets
        atomic_save(state, self.run_dir / BEST)
        return fits

    def _best_tower(self) -> PositionBias | None:
        """The best epoch's position tower (from best.pt); None without debiasing."""
        if self.wrapper.position is None:
            return None
        tower = PositionBias(self.wrapper.position.max_positions)
        state = torch.load(self.run_dir / BEST, map_location=self.device, weights_only=True)
        tower.load_state_dict(state["position_state"])
        return tower.to(self.device)

    def _epoch_steps(self) -> Iterator[dict[str, Any]]:
        """The epoch's steps: slices of the in-memory shuffled log, or this rank's streamed
        batches (the global batch is split over the ranks' own row groups)."""
        loop = self.config.train
        seed = loop.seed * 1000 + self.epoch
        train = self.data.train
        if isinstance(train, EncodedData):
            for batch in train.shuffled_batches(loop.batch_size, seed=seed):
                yield self.train_step(batch)
            return
        world = self.world
        batches = train.shuffled_batches(
            self.encoder,
            max(1, loop.batch_size // world.size),
            seed=seed,
            buffer_rows=self.config.data.shuffle_buffer_rows,
            rank=world.rank,
            size=world.size,
        )
        spare = next(train.chunks(self.encoder, [0])).take(np.arange(1))
        while True:
            record = self.train_local_step(next(batches, None), spare)
            if record is None:
                return
            yield record

    def _train_epoch(self) -> list[dict[str, Any]]:
        loop = self.config.train
        self.wrapper.train()
        torch.manual_seed(rank_seed(loop.seed, self.epoch, self.world.rank))
        steps: Iterator[dict[str, Any]] = self._epoch_steps()
        total = -(-self.data.train.rows // loop.batch_size)
        if loop.max_steps_per_epoch is not None:
            total = min(total, loop.max_steps_per_epoch)
            steps = itertools.islice(steps, loop.max_steps_per_epoch)
        bar = None
        if self.progress:
            from ranker.progress import progress_bar

            bar = progress_bar(
                total=total, desc=f"epoch {self.epoch + 1}/{loop.epochs}", unit="step", leave=False
            )
        records = []
        for record in steps:
            records.append(record)
            if bar is not None:
                bar.update()
                bar.set_postfix({t: f"{record[f'loss_{t}']:.4g}" for t in self.task_names})
        if bar is not None:
            bar.close()
        return records

    def _after_epoch(
        self, valid: dict[str, dict[str, float]], records: list[dict[str, Any]]
    ) -> None:
        key = self.config.train.early_stopping
        try:
            value = lookup(valid, key)
        except KeyError:
            raise ConfigError(f"train.early_stopping: unknown metric {key!r}") from None
        better = self.best_value is None or (
            value > self.best_value if higher_is_better(key) else value < self.best_value
        )
        train_loss = {t: float(np.mean([r[f"loss_{t}"] for r in records])) for t in self.task_names}
        self.history.append({"epoch": self.epoch + 1, "train_loss": train_loss, "valid": valid})
        if self.tracker is not None:
            self.tracker.epoch_end(self.history[-1])
        if better:
            self.best_value, self.best_epoch, self.stale_epochs = value, self.epoch + 1, 0
            self.save_best(self.run_dir / BEST)
        else:
            self.stale_epochs += 1
        if self.progress:
            summary = ", ".join(f"{t} {train_loss[t]:.4g}" for t in self.task_names)
            print(
                f"epoch {self.epoch + 1}: train loss {summary}; valid {key} {value:.4f}"
                + (" (best)" if better else "")
            )

    def _sync_stop(self) -> None:
        """Rank 0 decides early stopping; the other ranks follow."""
        if self.world.distributed:
            flag = torch.tensor([float(self.stale_epochs)], device=self.device)
            self.stale_epochs = int(
                all_reduce_sum(flag if self.world.is_main else flag * 0, self.world).item()
            )

    def _finish(self, seconds: float) -> dict[str, Any]:
        if not self.world.is_main:
            return {}
        best = load_best(self.run_dir / BEST, device=str(self.device))
        tower = self._best_tower()
        drift = self._calibrate(best, tower)
        doc: dict[str, Any] = {
            "config": self.config.to_dict(),
            "split": {
                "train": self.data.split.train,
                "valid": self.data.split.valid,
                "test": self.data.split.test,
            },
            "rows": {
                "train": self.data.train.rows,
                "valid": self.data.valid.rows,
                "test": self.data.test.rows if self.data.test else 0,
            },
            "dropped": self.data.dropped,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epoch,
            "steps": self.step,
            "seconds": seconds,
            "checkpoint_bytes": self.checkpoint_bytes,
            "history": self.history,
            "valid": self._evaluate(best, self.data.valid, tower),
        }
        if self.data.test is not None:
            doc["test"] = self._evaluate(best, self.data.test, tower)
        if drift:  # calibration under drift: per-day offsets, the line, the applied offset
            doc["calibration"] = {task: fit.to_dict() for task, fit in drift.items()}
        if tower is not None:  # the best epoch's P(seen | position); metrics at served positions
            doc["examination"] = [round(float(v), 4) for v in tower.examination()]
            doc["evaluated_at"] = "served positions (model x position tower)"
        _save_json(self.run_dir / "metrics.json", doc)
        from training.plots import plot_run

        plot_run(self.run_dir)
        if self.tracker is not None:
            self.tracker.finish(self.run_dir, doc)
        return doc

    # -- checkpoints ------------------------------------------------------------------------
    def save_best(self, path: Path) -> None:
        """What export needs: the inference model's weights, its hyper-parameters and spec."""
        atomic_save(
            {
                "model_state": self.inference_model.state_dict(),
                "hparams": self.model.hparams(),
                "spec_yaml": self.data.spec.to_yaml(),
                "config": self.config.to_dict(),
                "epoch": self.epoch + 1,
                "split": {
                    "train": self.data.split.train,
                    "valid": self.data.split.valid,
                    "test": self.data.split.test,
                },
                # Training only, never exported: the position tower and its P(seen | position).
                "position_state": (
                    None if self.wrapper.position is None else self.wrapper.position.state_dict()
                ),
                "examination": (
                    None if self.wrapper.position is None else self.wrapper.position.examination()
                ),
            },
            path,
        )

    def save_checkpoint(self, path: Path) -> None:
        """Everything `--resume` needs, written atomically; skipped when no step ran since the
        last write (the file on disk already holds this state). Sets `checkpoint_bytes`."""
        if self._saved_step == self.step and path.exists():
            return
        self.checkpoint_bytes = atomic_save(
            {
                "wrapper_state": self.wrapper.state_dict(),
                "optimizer_state": self.optimizer.state_dict(),
                "balancer_state": self.balancer.state_dict(),
                "average_state": None if self.average is None else self.average.state_dict(),
                "config": self.config.to_dict(),
                "spec_yaml": self.data.spec.to_yaml(),
                "epoch": self.epoch,
                "step": self.step,
                "history": json.dumps(self.history, default=_json_default),
                "best_value": self.best_value,
                "best_epoch": self.best_epoch,
                "stale_epochs": self.stale_epochs,
            },
            path,
        )
        self._saved_step = self.step

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.wrapper.load_state_dict(state["wrapper_state"])
        self.optimizer.load_state_dict(state["optimizer_state"])
        self.balancer.load_state_dict(state["balancer_state"])
        if self.average is not None and state.get("average_state") is not None:
            self.average.load_state_dict(state["average_state"])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.history = json.loads(state["history"])
        self.best_value = state["best_value"]
        self.best_epoch = int(state["best_epoch"])
        self.stale_epochs = int(state["stale_epochs"])
        self._saved_step = self.step
        self.checkpoint_bytes = path.stat().st_size


def _append_csv(path: Path, records: list[dict[str, Any]]) -> None:
    if not records:
        return
    fields: list[str] = []
    for record in records:
        fields.extend(k for k in record if k not in fields)
    existing: list[dict[str, Any]] = []
    if path.exists():
        with path.open() as handle:
            existing = list(csv.DictReader(handle))
        for row in existing:
            fields.extend(k for k in row if k not in fields)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(existing)
        writer.writerows(records)
