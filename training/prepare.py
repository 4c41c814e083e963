"""Data preparation for training: read the log, split it by day, fit the dense statistics on the
training days and encode (in memory), or open it for streaming (training/stream.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ranker.features import FeatureEncoder, fit_dense_stats
from ranker.schema import FeatureSpec, load_default_spec
from training.config import TrainConfig
from training.data import DaySplit, EncodedData, encode_log, find_log_spec, read_log, split_days
from training.stream import StreamingData, prepare_stream


@dataclass
class PreparedData:
    """A log split by day and encoded with the spec fitted on the training days."""

    spec: FeatureSpec
    split: DaySplit
    train: EncodedData
    valid: EncodedData
    test: EncodedData | None
    dropped: dict[str, int] = field(default_factory=dict)


def prepare_data(config: TrainConfig) -> PreparedData | StreamingData:
    """Read, validate, split by day, fit dense statistics on the training days, encode; with
    `data.stream`, open the log for streaming instead (training/stream.py)."""
    data = config.data
    # data.spec, else the feature_spec.yaml an importer wrote next to the log, else the simulator's.
    spec_path = data.spec or find_log_spec(list(data.paths))
    spec = FeatureSpec.load(spec_path) if spec_path else load_default_spec()
    if data.stream:
        return prepare_stream(
            list(data.paths),
            spec,
            valid_days=data.valid_days,
            test_days=data.test_days,
            window_days=data.window_days,
            drop_invalid=data.drop_invalid,
        )
    log = read_log(list(data.paths), spec, drop_invalid=data.drop_invalid)
    split = split_days(log.days(), valid_days=data.valid_days, test_days=data.test_days)
    train_days = split.train
    if data.window_days is not None:
        train_days = train_days[-data.window_days :]
        split = DaySplit(train_days, split.valid, split.test)
    train_log = log.filter_days(split.train)
    columns = {name: train_log.table[name] for name in spec.names if spec[name].kind == "dense"}
    spec = fit_dense_stats(spec, columns)
    encoder = FeatureEncoder(spec)
    return PreparedData(
        spec=spec,
        split=split,
        train=encode_log(train_log, encoder),
        valid=encode_log(log.filter_days(split.valid), encoder),
        test=encode_log(log.filter_days(split.test), encoder) if split.test else None,
        dropped=dict(log.dropped),
    )
