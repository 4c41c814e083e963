"""A readable summary of an impression log: sizes, label rates and loss scales per task."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.data import ImpressionLog


@dataclass(frozen=True)
class LogSummary:
    rows: int
    requests: int
    users: int
    items: int
    days: list[str]
    rows_per_day: list[int]
    click_rate: float
    mean_watch_time: float
    mean_completion: float
    # Loss of the best constant predictor per task: shows how far apart the label scales are.
    click_bce_at_base_rate: float
    watch_time_mse_at_mean: float
    completion_mse_at_mean: float
    dropped: dict[str, int]

    def render(self) -> str:
        lines = [
            f"rows            {self.rows:,}",
            f"requests        {self.requests:,}  ({self.rows / max(self.requests, 1):.1f} impressions each)",
            f"users / items   {self.users:,} / {self.items:,}",
            f"days            {self.days[0]} .. {self.days[-1]} ({len(self.days)})",
            f"rows per day    {', '.join(f'{n:,}' for n in self.rows_per_day)}",
            f"click rate      {self.click_rate:.3f}",
            f"watch time      {self.mean_watch_time:.1f} s per impression",
            f"completion      {self.mean_completion:.3f} per impression",
            "loss of a constant predictor (label scales):",
            f"  click BCE        {self.click_bce_at_base_rate:.4f}",
            f"  watch_time MSE   {self.watch_time_mse_at_mean:,.1f} s^2",
            f"  completion MSE   {self.completion_mse_at_mean:.4f}",
        ]
        for reason, count in self.dropped.items():
            lines.append(f"dropped {count:,} rows: {reason}")
        return "\n".join(lines)


def summarize(log: ImpressionLog) -> LogSummary:
    click = log.column("click").astype(np.float64)
    watch = log.column("watch_time").astype(np.float64)
    duration = log.column("duration").astype(np.float64)
    completion = np.minimum(watch / duration, 1.0)
    rate = float(click.mean()) if click.size else 0.0
    p = min(max(rate, 1e-7), 1 - 1e-7)
    day_index = log.day_index()
    _, per_day = np.unique(day_index, return_counts=True)
    return LogSummary(
        rows=log.rows,
        requests=len(np.unique(log.column("request_id"))),
        users=len(np.unique(log.column("user_id"))),
        items=len(np.unique(log.column("item_id"))),
        days=log.days(),
        rows_per_day=per_day.tolist(),
        click_rate=rate,
        mean_watch_time=float(watch.mean()),
        mean_completion=float(completion.mean()),
        click_bce_at_base_rate=float(-(rate * np.log(p) + (1 - rate) * np.log(1 - p))),
        watch_time_mse_at_mean=float(watch.var()),
        completion_mse_at_mean=float(completion.var()),
        dropped=dict(log.dropped),
    )
