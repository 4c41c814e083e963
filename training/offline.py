"""`ranker score` and `ranker evaluate`: a published model version run over an impression log.

The model runs as it is served: the version's ONNX graph (sha256-checked) in ONNX Runtime, its inputs
built by the serving encoder (`ranker.features`) from the feature spec in its manifest. The log is
streamed one Parquet row group (or CSV block) at a time; a file that does not fit the spec gets the
loader's one-line error naming the file, the column and the row count.

`score` writes one Parquet row per impression: the ids, `ts`, each task's prediction
(`pred_<task>`, natural units) and the ranking `score` of a formula (`ranker.scoring`).
`evaluate` scores the same way and adds every metric of `training.evaluate`, the oracle's and the
captured share per metric when the log has oracle columns (simulated logs), reliability curves,
and the metrics of new vs seen users and items. Seen means the id appears in the rows of the
model's training days (the manifest's `data_window.train`) of the training log: `--train-data`,
or the evaluated log itself when it holds those days. The report (report.json, report.md, the
reliability plots) is written by training/offline_report.py.

Over 400 lines on purpose: score and evaluate share the model, the chunked reader and the scored
table, and read best side by side.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

from ranker.features import FeatureEncoder
from ranker.registry import Manifest
from ranker.schema import ID_COLUMNS, LABEL_COLUMNS, ORACLE_COLUMNS, FeatureSpec, SpecError
from ranker.scoring import DEFAULT_FORMULA, ScoreFormula, score
from ranker.tasks import labels_from_columns
from training.data import (
    MS_PER_DAY,
    EncodedData,
    day_name,
    day_number,
    log_files,
    validate_rows,
)
from training.errors import DataError
from training.evaluate import evaluate_predictions, reliability
from training.offline_report import Evaluation, write_report

# Rows per chunk read from a file (a Parquet row group larger than this is read in parts).
BATCH_ROWS = 262_144
PRED_PREFIX = "pred_"


class OfflineModel:
    """A registry version ready to predict: manifest, encoder and one ONNX Runtime session."""

    def __init__(self, version_dir: str | Path, threads: int | None = None) -> None:
        from ranker.onnx_model import OnnxModel, RuntimeOptions

        self.version_dir = Path(version_dir)
        # Verified bytes (a tampered model.onnx is refused), the session built from them.
        self.manifest, self.onnx = OnnxModel.load(
            self.version_dir, RuntimeOptions(intra_op_threads=threads or 0)
        )
        self.spec: FeatureSpec = self.manifest.spec()
        self.encoder = FeatureEncoder(self.spec)
        self.tasks = list(self.manifest.outputs)

    @property
    def name(self) -> str:
        return f"{self.manifest.name}/{self.manifest.version}"

    def predict(self, table: pa.Table) -> dict[str, np.ndarray]:
        """Per-task predictions [rows] for a table of impressions (user inputs one row per item)."""
        columns = {n: table[n] for n in self.spec.names if n in table.column_names}
        try:
            inputs = self.encoder.encode(columns, table.num_rows)
        except SpecError as exc:
            raise DataError("log", str(exc)) from None
        outputs = self.onnx.run({n: inputs[n] for n in self.onnx.input_names})
        return {
            task: np.asarray(values, dtype=np.float32).reshape(-1)
            for task, values in zip(self.tasks, outputs, strict=True)
        }


def load_formula(text: str | None) -> ScoreFormula:
    """A score formula from a YAML/JSON file, an inline mapping, or a tuned variant (its `score`);
    None: the default formula of `ranker.scoring`."""
    if text is None:
        return DEFAULT_FORMULA
    path = Path(text)
    try:
        doc = yaml.safe_load(path.read_text() if path.is_file() else text)
    except yaml.YAMLError as exc:
        raise ValueError(f"--formula {text!r}: not valid YAML or JSON: {exc}") from None
    if isinstance(doc, Mapping) and "score" in doc:  # a variant, e.g. tune's variant.yaml
        doc = doc["score"]
    if not isinstance(doc, Mapping):
        raise ValueError(
            f"--formula {text!r}: expected a file or a mapping such as {{weights: ...}}"
        )
    return ScoreFormula.from_dict(doc)


# -- reading the log in chunks ---------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    """Rows of one file, validated, in file order."""

    file: str
    table: pa.Table


def _needed(spec: FeatureSpec, labels: bool) -> list[str]:
    names = [*ID_COLUMNS, *(LABEL_COLUMNS if labels else ())]
    return names + [n for n in spec.names if n not in names]


def count_row_groups(paths: Sequence[Path]) -> int:
    """Chunks `iter_chunks` will read at most (Parquet row groups; one per CSV file), for progress."""
    return sum(pq.ParquetFile(p).num_row_groups if p.suffix == ".parquet" else 1 for p in paths)


def iter_chunks(
    paths: Sequence[Path],
    spec: FeatureSpec,
    *,
    labels: bool,
    days: Sequence[str] | None = None,
    extra: Sequence[str] = (),
    batch_rows: int = BATCH_ROWS,
) -> Iterator[Chunk]:
    """Stream the files' rows with the columns the spec needs (+ labels, + `extra` when present),
    restricted to `days` (None: all). A missing column raises DataError naming the file, the
    column and the file's rows; bad labels or ids name the column and the number of bad rows."""
    needed = _needed(spec, labels)
    wanted = needed + [c for c in extra if c not in needed]
    day_set = np.array([day_number(d) for d in days], dtype=np.int64) if days is not None else None
    for path in paths:
        file = str(path)
        try:
            if path.suffix == ".csv":
                whole = pacsv.read_csv(path)
                present, rows = whole.column_names, whole.num_rows
                batches: Iterator[pa.RecordBatch] = iter(
                    whole.select([c for c in wanted if c in present]).to_batches(batch_rows)
                )
            else:
                parquet = pq.ParquetFile(path)
                present, rows = parquet.schema_arrow.names, parquet.metadata.num_rows
                keep = [c for c in wanted if c in present]
                batches = parquet.iter_batches(batch_size=batch_rows, columns=keep)
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
            raise DataError(file, f"cannot parse the file: {exc}") from None
        missing = [c for c in needed if c not in present]
        if missing:
            raise DataError(
                file,
                f"missing column; the model's feature spec needs {missing}",
                column=missing[0],
                bad_rows=rows,
            )
        for batch in batches:
            table = pa.Table.from_batches([batch])
            if day_set is not None:
                day = table["ts"].to_numpy(zero_copy_only=False) // MS_PER_DAY
                table = table.filter(pa.array(np.isin(day, day_set)))
            if not table.num_rows:
                continue
            if labels:
                table, _ = validate_rows(table, file, drop_invalid=False)
            else:
                for name in ("request_id", "user_id", "item_id"):
                    nulls = table[name].null_count
                    if nulls:
                        raise DataError(file, "missing", column=name, bad_rows=nulls)
            yield Chunk(file, table)


def log_days(paths: Sequence[Path]) -> list[str]:
    """Distinct days (YYYY-MM-DD) of the logs' `ts`, reading that column only."""
    days: set[int] = set()
    for path in paths:
        for batch in _column_batches(path, ["ts"]):
            ts = batch.column(0).to_numpy(zero_copy_only=False).astype(np.int64)
            days.update(np.unique(ts // MS_PER_DAY).tolist())
    return [day_name(d) for d in sorted(days)]


def _column_batches(path: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    try:
        if path.suffix == ".csv":
            yield from pacsv.read_csv(path).select(columns).to_batches()
        else:
            yield from pq.ParquetFile(path).iter_batches(columns=columns)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError, KeyError) as exc:
        raise DataError(str(path), f"cannot read columns {columns}: {exc}") from None


def _progress(total: int, desc: str) -> Any:
    """A tqdm bar on stderr only when stderr is a terminal (logs and pipes get no bar)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="chunk", disable=not sys.stderr.isatty())


# -- score ----------------------------------------------------------------------------------
@dataclass
class ScoreSummary:
    rows: int
    files: int
    out: Path
    model: str
    formula: dict[str, Any]


def score_log(
    model: OfflineModel,
    data: Sequence[str | Path],
    out: str | Path,
    *,
    formula: ScoreFormula = DEFAULT_FORMULA,
    days: Sequence[str] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> ScoreSummary:
    """Write `out` (Parquet): request_id, user_id, item_id, ts, pred_<task> and score per row."""
    formula.check_tasks(model.tasks)
    paths = log_files(list(data))
    out = Path(out)
    rows = 0
    with _ParquetOut(out) as sink, _progress(count_row_groups(paths), "score") as bar:
        for chunk in iter_chunks(paths, model.spec, labels=False, days=days, batch_rows=batch_rows):
            table = _scored_table(chunk.table, model.predict(chunk.table), formula)
            sink.write(table)
            rows += table.num_rows
            bar.update()
        if not rows:
            raise DataError(
                str(data), "no rows to score" + (f" on days {list(days)}" if days else "")
            )
    return ScoreSummary(rows, len(paths), out, model.name, formula.to_dict())


class _ParquetOut:
    """A Parquet file written in parts to a temporary name and renamed on success only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.writer: pq.ParquetWriter | None = None

    def __enter__(self) -> _ParquetOut:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, table.schema)
        self.writer.write_table(table)

    def __exit__(self, kind: object, *_: object) -> None:
        if self.writer is not None:
            self.writer.close()
        if kind is None and self.writer is not None:
            self.tmp.replace(self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def _scored_table(
    table: pa.Table, preds: Mapping[str, np.ndarray], formula: ScoreFormula
) -> pa.Table:
    request = table["request_id"].to_numpy(zero_copy_only=False)
    columns: dict[str, Any] = {name: table[name] for name in ID_COLUMNS}
    for task, values in preds.items():
        columns[PRED_PREFIX + task] = pa.array(values, type=pa.float32())
    columns["score"] = pa.array(score(formula, preds, request), type=pa.float64())
    return pa.table(columns)


# -- evaluate --------------------------------------------------------------------------------
class _Collected:
    """Arrays gathered over the chunks: ids, labels, oracle columns and predictions."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {}

    def add(self, name: str, values: np.ndarray) -> None:
        self.parts.setdefault(name, []).append(values)

    def get(self, name: str) -> np.ndarray:
        return np.concatenate(self.parts[name])

    def __contains__(self, name: str) -> bool:
        return name in self.parts


def evaluate_log(
    model: OfflineModel,
    data: Sequence[str | Path],
    out_dir: str | Path,
    *,
    formula: ScoreFormula = DEFAULT_FORMULA,
    days: Sequence[str] | None = None,
    train_data: Sequence[str | Path] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Evaluation:
    """Score `data` into out_dir/scores.parquet and measure it: report.json, report.md and
    reliability_<task>.png. `days` None: the log's days outside the model's training and
    validation window (all days when none are)."""
    formula.check_tasks(model.tasks)
    paths = log_files(list(data))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if days is None:
        days, note = _held_out_days(model.manifest, log_days(paths))
        if note:
            notes.append(note)
    oracle = list(ORACLE_COLUMNS)
    collected = _Collected()
    chunks = iter_chunks(
        paths, model.spec, labels=True, days=days, extra=oracle, batch_rows=batch_rows
    )
    with (
        _ParquetOut(out_dir / "scores.parquet") as sink,
        _progress(count_row_groups(paths), "evaluate") as bar,
    ):
        for chunk in chunks:
            preds = model.predict(chunk.table)
            sink.write(_scored_table(chunk.table, preds, formula))
            _collect(collected, chunk.table, preds, model.tasks, oracle)
            bar.update()
        if "request_id" not in collected:
            raise DataError(str(data), f"no rows to evaluate on days {list(days)}")

    rows = len(collected.get("request_id"))
    oracle_present = _oracle_present(collected, oracle, rows, notes)
    result = _metrics(collected, model.tasks, oracle_present, np.ones(rows, dtype=bool))
    evaluation = Evaluation(model.name, list(days), rows, result, notes=notes)
    _add_segments(evaluation, model, collected, oracle_present, train_data or data)
    evaluation.reliability = {
        task: reliability(collected.get(PRED_PREFIX + task), collected.get(task))
        for task in model.tasks
    }
    write_report(evaluation, out_dir)
    return evaluation


def _collect(
    collected: _Collected,
    table: pa.Table,
    preds: Mapping[str, np.ndarray],
    tasks: Sequence[str],
    oracle: Sequence[str],
) -> None:
    """What the metrics need of one scored chunk: ids, labels, predictions, oracle columns."""
    labels = labels_from_columns(*(table[c].to_numpy(zero_copy_only=False) for c in LABEL_COLUMNS))
    for name in ("request_id", "user_id", "item_id"):
        collected.add(name, table[name].to_numpy(zero_copy_only=False))
    for task in tasks:
        collected.add(task, labels[task])
        collected.add(PRED_PREFIX + task, preds[task])
    for name in oracle:
        if name in table.column_names:
            collected.add(name, table[name].to_numpy(zero_copy_only=False))


def _oracle_present(
    collected: _Collected, oracle: Sequence[str], rows: int, notes: list[str]
) -> list[str]:
    """The oracle columns every row has; none (with a note) when only some files hold them."""
    present = [c for c in oracle if c in collected and len(collected.get(c)) == rows]
    if len(present) < len(oracle) and any(c in collected for c in oracle):
        notes.append("oracle columns are missing from some files: no oracle metrics")
        return []
    return present


def _metrics(
    collected: _Collected, tasks: Sequence[str], oracle: Sequence[str], mask: np.ndarray
) -> dict[str, dict[str, float]]:
    """Every task's metrics (+ oracle and captured shares) on the rows of `mask`."""
    data = EncodedData(
        inputs={},
        labels={t: collected.get(t)[mask] for t in tasks},
        request_id=collected.get("request_id")[mask],
        user_id=collected.get("user_id")[mask],
        oracle={c: collected.get(c)[mask] for c in oracle},
    )
    result = evaluate_predictions({t: collected.get(PRED_PREFIX + t)[mask] for t in tasks}, data)
    for task in tasks:
        preds, labels = collected.get(PRED_PREFIX + task)[mask], collected.get(task)[mask]
        result[task]["mean_predicted"] = float(np.mean(preds))
        result[task]["mean_observed"] = float(np.mean(labels))
    return result


def _held_out_days(manifest: Manifest, present: Sequence[str]) -> tuple[list[str], str | None]:
    window = manifest.data_window or {}
    used = set(window.get("train", [])) | set(window.get("valid", []))
    held_out = [d for d in present if d not in used]
    if held_out:
        return held_out, None
    return list(present), (
        "every day of the log is in the model's training or validation window; evaluating all "
        "of them (pass --days to choose)"
    )


def _add_segments(
    evaluation: Evaluation,
    model: OfflineModel,
    collected: _Collected,
    oracle: Sequence[str],
    train_data: Sequence[str | Path],
) -> None:
    train_days = list((model.manifest.data_window or {}).get("train", []))
    if not train_days:
        evaluation.notes.append("the manifest names no training days: no new/seen split")
        return
    seen_users: set[Any] = set()
    seen_items: set[Any] = set()
    wanted = np.array([day_number(d) for d in train_days], dtype=np.int64)
    for path in log_files(list(train_data)):
        for batch in _column_batches(path, ["ts", "user_id", "item_id"]):
            table = pa.Table.from_batches([batch])
            day = table["ts"].to_numpy(zero_copy_only=False) // MS_PER_DAY
            table = table.filter(pa.array(np.isin(day, wanted)))
            seen_users.update(np.unique(table["user_id"].to_numpy(zero_copy_only=False)).tolist())
            seen_items.update(np.unique(table["item_id"].to_numpy(zero_copy_only=False)).tolist())
    if not seen_users:
        evaluation.notes.append(
            f"no rows of the model's training days {train_days[0]} .. {train_days[-1]} in "
            f"{[str(p) for p in train_data]}: no new/seen split (pass --train-data)"
        )
        return
    evaluation.seen_rule = (
        f"seen = the id appears in the training log on the model's {len(train_days)} training "
        f"days ({train_days[0]} .. {train_days[-1]}): {len(seen_users)} users, "
        f"{len(seen_items)} items"
    )
    for side, seen in (("users", seen_users), ("items", seen_items)):
        ids = collected.get("user_id" if side == "users" else "item_id")
        is_seen = np.isin(ids, np.fromiter(seen, dtype=ids.dtype, count=len(seen)))
        for label, mask in (("seen", is_seen), ("new", ~is_seen)):
            entry: dict[str, Any] = {"rows": int(mask.sum())}
            if mask.any():
                entry["metrics"] = _metrics(collected, model.tasks, oracle, mask)
            evaluation.segments[f"{side}: {label}"] = entry
