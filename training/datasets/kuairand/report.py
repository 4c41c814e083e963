"""What an import read, wrote, dropped and noted, in numbers and in words."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ImportReport:
    """What an import read, wrote and dropped."""

    rows_in: int  # data rows in the logs, malformed ones included
    rows_out: int
    dropped: dict[str, int]  # reason (see ROW_CHECKS) -> rows dropped
    requests: int
    days: list[str]
    files: list[Path]  # Parquet part files written
    spec_path: Path
    # Rows kept but changed or defaulted, and feature-table problems: name -> count.
    notes: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """Human-readable lines for the CLI."""
        lines = [
            f"rows in: {self.rows_in}, rows out: {self.rows_out}, requests: {self.requests}",
            f"days: {self.days[0]} .. {self.days[-1]} ({len(self.days)})"
            if self.days
            else "days: none",
            f"files: {len(self.files)} Parquet parts, feature spec {self.spec_path}",
        ]
        lines += [f"dropped {reason}: {n}" for reason, n in self.dropped.items()]
        lines += [f"note {name}: {n} ({explain_note(name)})" for name, n in self.notes.items()]
        return "\n".join(lines)


# What each note counts; the rows are kept (see the module docstring).
NOTE_MEANINGS = {
    "watch_time_zeroed_no_click": "rows not clicked but with play time: watch_time written as 0, "
    "the raw play time kept in `play_time`",
    "duration_from_video_features": "rows without duration_ms: duration taken from the video's "
    "video_duration",
    "user_features_missing": "rows whose user_id has no row in user_features: user features take "
    "the spec's defaults",
    "video_features_missing": "rows whose video_id has no row in video_features_basic: item "
    "features take the spec's defaults",
    "date_differs_from_time_ms": "rows whose KuaiRand `date` is not the Beijing (UTC+8) date of "
    "their time_ms: kept in their `date` partition with ts = time_ms unchanged, so their ts falls "
    "on another day than the partition (day splits in training follow ts)",
}


def explain_note(name: str) -> str:
    """What an import note counts, in words."""
    if name in NOTE_MEANINGS:
        return NOTE_MEANINGS[name]
    if name.startswith("missing_"):
        return f"rows with no {name.removeprefix('missing_')} value: written as null"
    for stem in ("user_features", "video_features_basic"):
        kind = name.removeprefix(f"{stem}_")
        if kind == name:
            continue
        return {
            "malformed_rows": f"lines of {stem} with the wrong number of fields, skipped",
            "duplicate_ids": f"ids listed more than once in {stem}: the first row is used",
            "invalid_values": f"unparsable values in {stem}: written as null (spec default)",
            "invalid_ids": f"rows of {stem} with a missing or non-integer id, skipped",
        }.get(kind, "see training/datasets/kuairand/report.py")
    return "see training/datasets/kuairand/report.py"
