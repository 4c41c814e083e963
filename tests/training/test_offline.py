"""`ranker score` and `ranker evaluate` on a simulated log (with oracle columns) and on a synthetic
log in KuaiRand's layout, imported with `import-kuairand` (no oracle)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cli.main import main
from ranker.features import FeatureEncoder
from ranker.registry import load_manifest
from ranker.scoring import DEFAULT_FORMULA, ScoreFormula, score
from tests.training.datasets.test_kuairand import (
    LOG_HEADER,
    USER_HEADER,
    VIDEO_HEADER,
    log_row,
    write_csv,
)
from training.checkpoint import BEST, load_best
from training.config import load_config
from training.data import MS_PER_DAY, encode_table, read_log
from training.datasets.kuairand.columns import SPEC_FILE
from training.datasets.kuairand.importer import import_kuairand
from training.export import export_run
from training.offline import OfflineModel, evaluate_log, score_log
from training.prepare import prepare_data
from training.trainer import Trainer

TASKS = ["click", "watch_time", "completion"]


def read(path: Path) -> pa.Table:
    return pq.read_table(path)


def test_score_writes_ids_predictions_and_score(
    tiny_log: Path, tiny_run: Path, tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scores.parquet"
    formula = ScoreFormula(weights={"click": 1.0, "watch_time": 0.1})
    # Small chunks: the stream must give the same rows as one pass.
    summary = score_log(OfflineModel(tiny_model), [tiny_log], out, formula=formula, batch_rows=97)
    table = read(out)
    model = load_best(tiny_run / BEST)
    log = read_log(tiny_log, model.spec)
    assert summary.rows == table.num_rows == log.rows
    assert table.column_names == [
        "request_id", "user_id", "item_id", "ts",
        "pred_click", "pred_watch_time", "pred_completion", "score",
    ]  # fmt: skip
    for name in ("request_id", "user_id", "item_id", "ts"):
        assert np.array_equal(table[name].to_numpy(), log.table[name].to_numpy())
    # The ONNX predictions of the serving encoder match the trained PyTorch model.
    data = encode_table(log.table, FeatureEncoder(model.spec))
    with torch.no_grad():
        want = model({k: torch.from_numpy(v) for k, v in data.inputs.items()})
    preds = {t: table[f"pred_{t}"].to_numpy() for t in TASKS}
    for task in TASKS:
        np.testing.assert_allclose(preds[task], want[task].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        table["score"].to_numpy(), score(formula, preds, table["request_id"].to_numpy())
    )


def test_score_cli_days_and_formula(tiny_log: Path, tiny_model: Path, tmp_path: Path) -> None:
    days = sorted(p.name.removeprefix("day=") for p in tiny_log.glob("day=*"))
    out = tmp_path / "one_day.parquet"
    code = main(
        ["score", "--model", str(tiny_model), "--data", str(tiny_log), "--out", str(out),
         "--days", days[-1], "--formula", "{weights: {completion: 1.0}}"]
    )  # fmt: skip
    assert code == 0
    table = read(out)
    assert set(table["ts"].to_numpy() // MS_PER_DAY) == {np.datetime64(days[-1], "D").astype(int)}
    np.testing.assert_allclose(table["score"].to_numpy(), table["pred_completion"].to_numpy())


def test_a_log_that_does_not_fit_the_spec_gets_one_line(
    tiny_log: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    day = sorted(tiny_log.glob("day=*"))[0] / "part-0.parquet"
    table = read(day)
    bad = tmp_path / "bad" / "part-0.parquet"
    bad.parent.mkdir()
    pq.write_table(table.drop_columns(["device"]), bad)
    code = main(["score", "--model", str(tiny_model), "--data", str(bad.parent), "--out",
                 str(tmp_path / "x.parquet")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert str(bad) in err and "column 'device'" in err and f"({table.num_rows} bad rows)" in err
    assert not (tmp_path / "x.parquet").exists()


def test_evaluate_simulated_log_metrics_oracle_segments_and_curves(
    tiny_log: Path, tiny_model: Path, tmp_path: Path
) -> None:
    manifest = load_manifest(tiny_model / "manifest.json")
    evaluation = evaluate_log(OfflineModel(tiny_model), [tiny_log], tmp_path)
    # Default days: the log's days outside the model's training and validation window.
    assert evaluation.days == manifest.data_window["test"]
    log = read_log(tiny_log, manifest.spec()).filter_days(evaluation.days)
    assert evaluation.rows == log.rows
    click = evaluation.metrics["click"]
    for metric in ("auc", "gauc", "logloss"):
        span = click[f"oracle_{metric}"] - click[f"constant_{metric}"]
        want = (click[metric] - click[f"constant_{metric}"]) / span
        assert click[f"captured_{metric}"] == pytest.approx(want)
    assert click["constant_auc"] == 0.5 and click["oracle_auc"] > click["auc"] - 0.2
    watch = evaluation.metrics["watch_time"]
    assert watch["constant_rmse"] == pytest.approx(
        float(np.std(log.column("watch_time").astype(np.float64))), rel=1e-5
    )
    assert watch["mean_observed"] == pytest.approx(float(np.mean(log.column("watch_time"))))
    assert "captured_rmse" in evaluation.metrics["completion"]

    # Seen: the id appears in the log's rows on the model's training days.
    train = read_log(tiny_log, manifest.spec()).filter_days(manifest.data_window["train"])
    seen_users = set(train.column("user_id").tolist())
    users = log.column("user_id")
    n_seen = int(np.isin(users, list(seen_users)).sum())
    assert evaluation.segments["users: seen"]["rows"] == n_seen
    assert evaluation.segments["users: new"]["rows"] == log.rows - n_seen
    items = evaluation.segments["items: seen"]["rows"] + evaluation.segments["items: new"]["rows"]
    assert items == log.rows
    assert "training days" in evaluation.seen_rule

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["metrics"]["click"]["auc"] == pytest.approx(click["auc"])
    assert set(report["reliability"]) == set(TASKS)
    assert sum(report["reliability"]["click"]["rows"]) == log.rows
    for task in TASKS:
        assert (tmp_path / f"reliability_{task}.png").stat().st_size > 1000
    markdown = (tmp_path / "report.md").read_text()
    assert "| click | auc |" in markdown and "users: new" in markdown
    assert read(tmp_path / "scores.parquet").num_rows == log.rows


def test_evaluate_without_training_rows_says_so(
    tiny_log: Path, tiny_model: Path, tmp_path: Path
) -> None:
    manifest = load_manifest(tiny_model / "manifest.json")
    test_day = manifest.data_window["test"][0]
    only_test = tmp_path / "log"
    (only_test / f"day={test_day}").mkdir(parents=True)
    src = tiny_log / f"day={test_day}" / "part-0.parquet"
    (only_test / f"day={test_day}" / "part-0.parquet").write_bytes(src.read_bytes())
    evaluation = evaluate_log(OfflineModel(tiny_model), [only_test], tmp_path / "out")
    assert evaluation.segments == {}
    assert any("pass --train-data" in note for note in evaluation.notes)
    with_train = evaluate_log(
        OfflineModel(tiny_model), [only_test], tmp_path / "out2", train_data=[tiny_log]
    )
    assert set(with_train.segments) == {"users: seen", "users: new", "items: seen", "items: new"}


# -- a synthetic log in KuaiRand's layout ------------------------------------------------------
T0 = 1_650_412_800_000  # 2022-04-20 08:00 Beijing, a multiple of 60 s
DAYS = 4


def synthetic_kuairand(root: Path, seed: int = 0) -> Path:
    """KuaiRand CSVs with 40 users, 60 videos and 4 days of 400 impressions; clicks follow a
    user x video affinity so a model has something to learn."""
    rng = np.random.default_rng(seed)
    users, videos = 40, 60
    affinity = rng.normal(size=(users, 4)) @ rng.normal(size=(4, videos)) / 2
    rows = []
    for day in range(DAYS):
        for k in range(400):
            user, video = int(rng.integers(users)), int(rng.integers(videos))
            ts = T0 + day * 86_400_000 + (k // 4) * 60_000 + int(rng.integers(50_000))
            beijing = np.datetime64(ts + 8 * 3_600_000, "ms").astype(object)
            clicked = int(rng.random() < 1 / (1 + np.exp(-affinity[user, video])))
            duration = 1000 * (10 + video)
            play = int(clicked * duration * rng.random())
            date = int(beijing.strftime("%Y%m%d"))
            rows.append(log_row(user, video, date, beijing.hour * 100 + beijing.minute, ts,
                                clicked, play, duration, tab=int(rng.integers(3))))  # fmt: skip
    root.mkdir(parents=True)
    write_csv(root / "log_standard_4_20_to_4_23_pure.csv", LOG_HEADER, rows)
    degrees = ["high_active", "full_active", "middle_active"]
    user_rows = [
        [u, degrees[u % 3], 0, 0, 0, u, "(0,10]", 2 * u, "[1,10)", 0, "0", 100 + u, "31-60",
         *[int(v) for v in rng.integers(0, 2, 18)]]
        for u in range(users)
    ]  # fmt: skip
    write_csv(root / "user_features_pure.csv", USER_HEADER, user_rows)
    video_rows = [
        [v, 100 + v % 7, "NORMAL", "2022-04-01", "ShortImport", 1, 1000.0 * (10 + v), 720, 1280,
         5000 + v % 5, v % 3, f"{v % 9},{v % 4 + 20}"]
        for v in range(videos)
    ]  # fmt: skip
    write_csv(root / "video_features_basic_pure.csv", VIDEO_HEADER, video_rows)
    return root


@pytest.mark.filterwarnings("ignore::FutureWarning")  # pytree deprecation inside torch.export
def test_score_and_evaluate_an_imported_kuairand_log(tmp_path: Path) -> None:
    log = tmp_path / "imported"
    import_kuairand(synthetic_kuairand(tmp_path / "src"), log)
    run = tmp_path / "run"
    config = load_config(
        None,
        [
            f"data.paths=[{log}]",
            f"data.spec={log / SPEC_FILE}",
            f"out={run}",
            "train.epochs=2",
            "train.batch_size=128",
            "train.threads=1",
            "model.config={num_experts: 2, expert_units: [16], tower_units: [8], embedding_dim: 4}",
        ],
    )
    Trainer(config, prepare_data(config), run, progress=False).fit()
    manifest = export_run(run, tmp_path / "models", "kuairand")
    version = tmp_path / "models" / "kuairand" / manifest.version

    summary = score_log(OfflineModel(version), [log], tmp_path / "scores.parquet")
    assert summary.rows == DAYS * 400
    scores = read(tmp_path / "scores.parquet")
    assert np.all(scores["pred_watch_time"].to_numpy() >= 0)
    np.testing.assert_allclose(
        scores["score"].to_numpy(),
        score(DEFAULT_FORMULA, {t: scores[f"pred_{t}"].to_numpy() for t in TASKS},
              scores["request_id"].to_numpy()),
    )  # fmt: skip

    evaluation = evaluate_log(OfflineModel(version), [log], tmp_path / "eval")
    assert evaluation.days == manifest.data_window["test"]
    assert 0.0 <= evaluation.metrics["click"]["auc"] <= 1.0
    assert not any(k.startswith(("oracle_", "captured_")) for k in evaluation.metrics["click"])
    assert (
        evaluation.segments["users: seen"]["rows"] + evaluation.segments["users: new"]["rows"]
        == evaluation.rows
    )
    assert (tmp_path / "eval" / "reliability_click.png").exists()
