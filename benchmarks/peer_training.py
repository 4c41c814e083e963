"""Training throughput: our MMoE step (equal weights) vs torch-rechub's MMOE, same data and width.

    pip install torch-rechub    # benchmark-only peer (make bench installs the `bench` extra)
    python -m benchmarks.peer_training [--steps 40] [--batch 2048]

Both models: 8 experts [256, 128], towers [64], 16-dim embeddings over the simulator's features
(one table per categorical feature, mean-pooled tags, the dense features standardised), Adam,
three task losses summed (click BCE, watch-time MSE on log1p seconds, completion MSE). Steps are
interleaved on the same batches; the figure is the fastest step (the least disturbed).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.report import machine, write_section
from sim.simulate import SimulatorConfig, simulate
from training.config import load_config
from training.prepare import PreparedData, prepare_data
from training.trainer import Trainer

MODEL = [
    "model.kind=mmoe",
    "model.config.num_experts=8",
    "model.config.expert_units=[256, 128]",
    "model.config.tower_units=[64]",
    "model.config.embedding_dim=16",
    "optimizer.lr=0.001",
]


def rechub_model(spec):  # type: ignore[no-untyped-def]
    from torch_rechub.basic.features import DenseFeature, SequenceFeature, SparseFeature
    from torch_rechub.models.multi_task import MMOE

    features = []
    for f in spec.features:
        if f.kind == "categorical":
            features.append(SparseFeature(f.name, vocab_size=f.buckets, embed_dim=16))
        elif f.kind == "multi_categorical":
            features.append(
                SequenceFeature(
                    f.name, vocab_size=f.buckets + 1, embed_dim=16, pooling="mean", padding_idx=0
                )
            )
        else:
            features.append(DenseFeature(f.name))
    return MMOE(
        features,
        ["classification", "regression", "regression"],
        n_expert=8,
        expert_params={"dims": [256, 128]},
        tower_params_list=[{"dims": [64]}] * 3,
    )


def rechub_inputs(spec, inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Our encoded arrays split into torch-rechub's one tensor per feature."""
    out: dict[str, torch.Tensor] = {}
    for group in ("user", "item"):
        for kind, key in (
            ("categorical", "cat"),
            ("multi_categorical", "multi"),
            ("dense", "dense"),
        ):
            features = spec.select(group, kind)
            offset = 0
            for j, f in enumerate(features):
                block = inputs[f"{group}_{key}"]
                if kind == "categorical":
                    out[f.name] = torch.from_numpy(block[:, j])
                elif kind == "multi_categorical":
                    out[f.name] = torch.from_numpy(block[:, offset : offset + f.max_len])
                    offset += f.max_len
                else:
                    assert f.stats is not None
                    out[f.name] = torch.from_numpy(
                        (block[:, j] - f.stats.mean) / f.stats.std
                    ).float()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=2048)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        simulate(SimulatorConfig(users=3000, items=8000, days=3, requests_per_day=2000), Path(tmp))
        config = load_config(
            None, [f"data.paths=[{tmp}]", f"train.batch_size={args.batch}", *MODEL]
        )
        data = prepare_data(config)
        assert isinstance(data, PreparedData)  # the in-memory path
    ours = Trainer(config, data, Path(tmp), progress=False, equity_every=0)
    # The same model, seed and batches with the forward's matrix products in bfloat16.
    bf16 = dataclasses.replace(
        config, train=dataclasses.replace(config.train, precision="bfloat16")
    )
    ours_bf16 = Trainer(bf16, data, Path(tmp), progress=False, equity_every=0)
    peer = rechub_model(data.spec)
    peer_optimizer = torch.optim.Adam(peer.parameters(), lr=1e-3)
    batches = list(data.train.shuffled_batches(args.batch, seed=0))[: max(4, args.steps // 4)]

    def peer_step(batch) -> None:  # type: ignore[no-untyped-def]
        x = rechub_inputs(data.spec, batch.inputs)
        # torch-rechub's prediction layer outputs sigmoid(click) and raw regressions.
        y = peer(x)
        labels = batch.labels
        loss = (
            F.binary_cross_entropy(y[:, 0], torch.from_numpy(labels["click"]))
            + F.mse_loss(y[:, 1], torch.log1p(torch.from_numpy(labels["watch_time"])))
            + F.mse_loss(y[:, 2], torch.from_numpy(labels["completion"]))
        )
        peer_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        peer_optimizer.step()

    calls = {
        "ranker MMoE (ew)": ours.train_step,
        "ranker MMoE (ew, bfloat16)": ours_bf16.train_step,
        "torch-rechub MMOE": peer_step,
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for step in range(args.steps + 3):
        batch = batches[step % len(batches)]
        for name, call in calls.items():
            started = time.perf_counter()
            call(batch)
            if step >= 3:
                times[name].append(time.perf_counter() - started)
    best = {k: min(v) for k, v in times.items()}
    base = best["torch-rechub MMOE"]
    rows = [
        "| implementation | ms / step (best) | ms / step (median) | samples / s | speed vs torch-rechub |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, value in best.items():
        rows.append(
            f"| {name} | {value * 1e3:.1f} | {statistics.median(times[name]) * 1e3:.1f} | "
            f"{args.batch / value:,.0f} | {base / value:.2f}x |"
        )
    body = "\n".join(
        [
            "## Training: ranker's MMoE vs torch-rechub's MMOE",
            "",
            f"`python -m benchmarks.peer_training --steps {args.steps} --batch {args.batch}`: 8 experts [256, 128], "
            f"towers [64], 16-dim embeddings, the simulator's features, Adam, equal weights; fastest of "
            f"{args.steps} interleaved steps; {torch.get_num_threads()} torch threads; {machine()}. "
            "Our step includes the balancer call and the per-task loss bookkeeping; torch-rechub's MLPs carry "
            "BatchNorm (its default), ours batch all experts into one matmul. Ours: SparseAdam on the "
            "embedding tables, Adam elsewhere; `bfloat16` is `train.precision=bfloat16` (matrix "
            "products in bfloat16, weights and optimiser state float32).",
            "",
            *rows,
        ]
    )
    print(body)
    write_section("peer_training", body)


if __name__ == "__main__":
    main()
