"""Ground truth of the simulated platform: users, authors and items with latent factors.

One `World` both writes the offline impression logs (`sim.simulate`) and can serve a
closed-loop traffic simulator: sample requests and candidates from it, send them to a service, and
draw outcomes for whatever it served from the same expected values the logs were drawn from.

Click and completion read partly different latent directions, and a per-item "clickbait" factor
raises clicks while lowering completion, so the tasks are related but conflicting.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
ACTIVE_DEGREES = ("high_active", "full_active", "middle_active", "low_active")
DEVICES = ("android", "ios", "web")
TABS = 4
MAX_TAGS = 4
# Hours are UTC; a night trough, a lunch bump and an evening peak, like a short-video app's traffic.
HOUR_PROFILE = np.array(
    [3, 2, 1.5, 1, 1, 1.5, 3, 5, 6, 6, 6, 7, 9, 8, 6, 6, 6, 7, 9, 11, 12, 12, 9, 5], dtype=float
)
HOUR_CLICK = 0.15 * np.sin(2 * np.pi * (np.arange(24) - 14) / 24)  # evenings click a bit more
TAB_PROBS = np.array([0.55, 0.2, 0.15, 0.1])
TAB_CLICK = np.array([0.0, 0.35, -0.25, 0.1])  # tab 1 ("follow") shows what users chose to see
DEGREE_PROBS = np.array([0.15, 0.3, 0.35, 0.2])
DEGREE_CLICK = np.array([0.5, 0.25, 0.0, -0.45])  # active users click more ...
DEGREE_RATE = np.array([4.0, 2.0, 1.0, 0.4])  # ... and send more requests
DEVICE_PROBS = np.array([0.6, 0.32, 0.08])
DEVICE_CLICK = np.array([0.0, 0.05, -0.2])
DEVICE_COMPLETION = np.array([0.0, 0.1, -0.3])
TREND_CLICK = 0.3  # weight of an item's popularity trend (a daily random walk) in its click logit
CODE_LEVELS = 50  # values of each "encrypted" user code (fits the spec's 64 buckets)
BAIT_TAGS = 8  # tags that clickbait items tend to carry, so tags carry a conflicting-task signal


@dataclass(frozen=True)
class SimulatorConfig:
    """Size, seed and latent-model knobs of a simulation; validated on construction."""

    users: int = 5000  # distinct users
    items: int = 20000  # distinct items, including those uploaded during the simulated days
    authors: int = 2000  # distinct authors; item counts per author are Zipf-like
    days: int = 7  # simulated days, one Parquet partition each
    requests_per_day: int = 5000  # ranking requests per day
    min_impressions: int = 10  # impressions per request, uniform in [min, max]
    max_impressions: int = 30
    seed: int = 0  # same config and seed give identical logs
    start_date: str = "2026-01-01"  # first day, ISO date (UTC)
    oracle: bool = False  # also write true expected labels (oracle_* columns)
    latent_dim: int = 12  # split in thirds: shared, click-only, completion-only directions
    categories: int = 32  # item categories; latents, durations and tags cluster by category
    tags_per_category: int = 12  # tags owned by each category (plus BAIT_TAGS shared ones)
    new_item_fraction: float = 0.2  # items uploaded after day 0, spread over the later days
    popularity_mix: float = 0.7  # share of candidates drawn by popularity; the rest uniformly
    popularity_walk: float = 0.3  # std of the daily log-popularity random-walk step
    click_base: float = -1.5  # global click logit offset (sets the click rate, ~0.3)
    completion_concentration: float = 3.0  # Beta a + b of completion given click; lower = noisier
    # Task conflict: the item clickbait factor's weight, + in the click logit and - in the
    # completion logit (0: none; the held-out worlds of issue 14 used 0.6).
    task_conflict: float = 0.5

    def __post_init__(self) -> None:
        for name in ("users", "items", "authors", "days", "requests_per_day", "min_impressions",
                     "latent_dim", "categories", "tags_per_category"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_impressions < self.min_impressions:
            raise ValueError(
                f"max_impressions ({self.max_impressions}) must be >= min_impressions "
                f"({self.min_impressions})"
            )
        if self.latent_dim < 3:
            raise ValueError(f"latent_dim must be >= 3, got {self.latent_dim}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        try:
            date.fromisoformat(self.start_date)
        except (TypeError, ValueError):
            raise ValueError(f"start_date must be an ISO date, got {self.start_date!r}") from None
        for name in ("new_item_fraction", "popularity_mix"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.popularity_walk < 0:
            raise ValueError(f"popularity_walk must be >= 0, got {self.popularity_walk}")
        if self.task_conflict < 0:
            raise ValueError(f"task_conflict must be >= 0, got {self.task_conflict}")
        if self.completion_concentration <= 0:
            raise ValueError(
                f"completion_concentration must be > 0, got {self.completion_concentration}"
            )
        if self.items - self.new_items < self.max_impressions:
            raise ValueError(
                f"items: {self.items - self.new_items} items exist on the first day, fewer than "
                f"max_impressions ({self.max_impressions}); raise items"
            )

    @property
    def new_items(self) -> int:
        """Items uploaded after the first day (none in a one-day simulation)."""
        return round(self.items * self.new_item_fraction) if self.days > 1 else 0


@dataclass(frozen=True)
class Requests:
    """Sampled requests, sorted by time; all arrays have one entry per request."""

    user_idx: np.ndarray  # int64 user index (== user_id)
    hour: np.ndarray  # int64 hour of day, 0-23
    tab: np.ndarray  # int64 app tab
    ts: np.ndarray  # int64 ms since epoch (UTC)


@dataclass(frozen=True)
class Expected:
    """True expected outcomes of impressions, one entry per impression."""

    p_click: np.ndarray  # P(click)
    completion_given_click: np.ndarray  # E[min(watch_time / duration, 1) | click]
    duration: np.ndarray  # seconds

    @property
    def watch_time(self) -> np.ndarray:
        """E[watch_time] over the impression, seconds."""
        return self.p_click * self.completion_given_click * self.duration

    @property
    def completion(self) -> np.ndarray:
        """E[min(watch_time / duration, 1)] over the impression (0 when not clicked)."""
        return self.p_click * self.completion_given_click


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _draw_from_cdf(cdf: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices drawn with probability proportional to the increments of an unnormalised CDF."""
    return np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")


def _duplicates(owner: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Mask of entries whose item already appears earlier in the same request."""
    order = np.lexsort((items, owner))
    same = (owner[order][1:] == owner[order][:-1]) & (items[order][1:] == items[order][:-1])
    dup = np.zeros(len(items), dtype=bool)
    dup[order[1:][same]] = True
    return dup


class World:
    """Users, authors and items of one seeded simulation, and the ground truth of their behaviour."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.start_ms = int(
            datetime.combine(date.fromisoformat(config.start_date), datetime.min.time(), UTC)
            .timestamp() * 1000
        )  # fmt: skip
        rng = np.random.default_rng([config.seed, 0])
        d = config.latent_dim
        # Click reads the shared + click thirds of the latents; completion shared + completion.
        third = np.arange(d) * 3 // d
        click_weights = np.where(third < 2, 1.0, 0.0)
        completion_weights = np.where(third != 1, 1.0, 0.0)
        # (d, 2) weights of the user-item products; the scale gives the click dot a std of ~1.
        self._task_weights = np.stack([click_weights, completion_weights], axis=1) / np.sqrt(
            click_weights.sum()
        )
        self.category_latent = rng.standard_normal((config.categories, d))
        self._make_users(rng)
        self._make_authors(rng)
        self._make_items(rng)

    def _make_users(self, rng: np.random.Generator) -> None:
        c = self.config
        self.user_degree = rng.choice(len(ACTIVE_DEGREES), size=c.users, p=DEGREE_PROBS)
        self.user_device = rng.choice(len(DEVICES), size=c.users, p=DEVICE_PROBS)
        self.user_latent = rng.standard_normal((c.users, c.latent_dim))
        self.user_click_bias = DEGREE_CLICK[self.user_degree] + 0.35 * rng.standard_normal(c.users)
        self.user_completion_bias = 0.1 * (1.5 - self.user_degree) + 0.3 * rng.standard_normal(
            c.users
        )
        self.follower_bucket = np.minimum(rng.poisson(3.0 - 0.7 * self.user_degree), 9)
        # Codes: noisy quantiles of random latent projections under a random relabelling, so they
        # are informative only to a model that learns each code's embedding.
        proj = self.user_latent @ rng.standard_normal((c.latent_dim, 3)) / np.sqrt(c.latent_dim)
        proj += 1.5 * rng.standard_normal(proj.shape)
        ranks = proj.argsort(axis=0).argsort(axis=0)
        codes = ranks * CODE_LEVELS // c.users
        relabel = np.stack([rng.permutation(CODE_LEVELS) for _ in range(3)], axis=1)
        self.user_codes = np.take_along_axis(relabel, codes, axis=0)  # (users, 3)
        rate = DEGREE_RATE[self.user_degree] * rng.lognormal(0.0, 0.5, c.users)
        self._user_cdf = np.cumsum(rate)

    def _make_authors(self, rng: np.random.Generator) -> None:
        c = self.config
        self.author_category = rng.integers(0, c.categories, c.authors)
        self.author_latent = 0.5 * self.category_latent[self.author_category]
        self.author_latent += 0.87 * rng.standard_normal((c.authors, c.latent_dim))
        self.author_clickbait = 0.7 * rng.standard_normal(c.authors)
        self._author_cdf = np.cumsum(rng.permutation(1.0 / np.arange(1, c.authors + 1) ** 0.8))

    def _make_items(self, rng: np.random.Generator) -> None:
        c = self.config
        n = c.items
        self.item_author = _draw_from_cdf(self._author_cdf, n, rng)
        own = rng.random(n) < 0.75
        self.item_category = np.where(
            own, self.author_category[self.item_author], rng.integers(0, c.categories, n)
        )
        self.item_latent = 0.55 * self.category_latent[self.item_category]
        self.item_latent += 0.55 * self.author_latent[self.item_author]
        self.item_latent += 0.63 * rng.standard_normal((n, c.latent_dim))
        self.item_clickbait = self.author_clickbait[self.item_author] + 0.7 * rng.standard_normal(n)
        self.item_click_quality = 0.5 * rng.standard_normal(n)
        self.item_completion_quality = 0.4 * rng.standard_normal(n)
        log_duration = np.log(30.0) + 0.4 * rng.standard_normal(c.categories)
        duration = rng.lognormal(log_duration[self.item_category], 0.8)
        self.item_duration = np.clip(duration, 5.0, 600.0).astype(np.float32)
        # New items appear at midnight of their upload day; older ones were uploaded in the 60 days
        # before the start. An item is never shown before it exists.
        self.item_upload_day = np.zeros(n, dtype=np.int64)
        if c.new_items:
            new = rng.permutation(n)[: c.new_items]
            self.item_upload_day[new] = rng.integers(1, c.days, c.new_items)
        old_age_ms = (rng.random(n) * 60 * DAY_MS).astype(np.int64)
        self.item_upload_ms = np.where(
            self.item_upload_day > 0,
            self.start_ms + self.item_upload_day * DAY_MS,
            self.start_ms - old_age_ms,
        )
        # Popularity follows quality, then drifts day by day; the drift also moves click rates.
        base = 1.5 * self.item_click_quality + 1.2 * rng.standard_normal(n)
        steps = c.popularity_walk * rng.standard_normal((n, c.days))
        steps[:, 0] = 0.0
        self.item_trend = np.cumsum(steps, axis=1)  # (items, days)
        self.item_log_popularity = base[:, None] + self.item_trend
        self._make_tags(rng)

    def _make_tags(self, rng: np.random.Generator) -> None:
        c = self.config
        n = c.items
        first_bait = c.categories * c.tags_per_category
        own = self.item_category[:, None] * c.tags_per_category + rng.integers(
            0, c.tags_per_category, (n, MAX_TAGS)
        )
        tags = np.where(
            rng.random((n, MAX_TAGS)) < 0.8, own, rng.integers(0, first_bait, (n, MAX_TAGS))
        )
        bait = rng.random(n) < _sigmoid(2.0 * self.item_clickbait - 2.0)
        tags[bait, 0] = first_bait + rng.integers(0, BAIT_TAGS, int(bait.sum()))
        # Keep 1-4 distinct tags per item: pad with a sentinel, sort, drop repeats, sort again.
        pad = np.iinfo(np.int64).max
        tags[np.arange(MAX_TAGS)[None, :] >= rng.integers(1, MAX_TAGS + 1, n)[:, None]] = pad
        tags.sort(axis=1)
        tags[:, 1:][tags[:, 1:] == tags[:, :-1]] = pad
        tags.sort(axis=1)
        self.item_tag_count = (tags != pad).sum(axis=1)
        self.item_tags = np.where(tags == pad, -1, tags)  # (items, MAX_TAGS), -1 padded

    def day_of(self, ts: np.ndarray) -> np.ndarray:
        """Simulated day index of timestamps, clamped to the simulated days for drift lookups."""
        return np.clip((ts - self.start_ms) // DAY_MS, 0, self.config.days - 1)

    def sample_requests(self, day: int, n: int, rng: np.random.Generator) -> Requests:
        """`n` requests on `day`: users by activity, hours by the daily profile; sorted by time."""
        users = _draw_from_cdf(self._user_cdf, n, rng)
        hour = rng.choice(24, size=n, p=HOUR_PROFILE / HOUR_PROFILE.sum())
        tab = rng.choice(TABS, size=n, p=TAB_PROBS)
        ts = self.start_ms + day * DAY_MS + hour * HOUR_MS + rng.integers(0, HOUR_MS, n)
        order = np.argsort(ts, kind="stable")
        return Requests(users[order], hour[order], tab[order], ts[order])

    def sample_candidates(
        self, day: int, sizes: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Item indices for requests of the given sizes, concatenated; distinct within a request.

        Candidates mix popularity (of that day) with uniform draws over the items that exist.
        """
        live = np.flatnonzero(self.item_upload_day <= day)
        cdf = np.cumsum(np.exp(self.item_log_popularity[live, min(day, self.config.days - 1)]))
        owner = np.repeat(np.arange(len(sizes)), sizes)

        def draw(k: int) -> np.ndarray:
            by_popularity = live[_draw_from_cdf(cdf, k, rng)]
            uniform = live[rng.integers(0, len(live), k)]
            return np.where(rng.random(k) < self.config.popularity_mix, by_popularity, uniform)

        items = draw(len(owner))
        for _ in range(200):  # redraw repeats; each round removes most of them
            dup = _duplicates(owner, items)
            if not dup.any():
                return items
            items[dup] = draw(int(dup.sum()))
        raise RuntimeError("could not draw distinct candidates; are there enough live items?")

    def user_features(self, user_idx: np.ndarray) -> dict[str, np.ndarray]:
        """Observable user features (spec names) of the given users."""
        codes = self.user_codes[user_idx]
        return {
            "user_active_degree": np.asarray(ACTIVE_DEGREES)[self.user_degree[user_idx]],
            "device": np.asarray(DEVICES)[self.user_device[user_idx]],
            "follower_bucket": self.follower_bucket[user_idx],
            **{f"user_code_{k}": codes[:, k] for k in range(3)},
        }

    def item_features(self, item_idx: np.ndarray, ts: np.ndarray) -> dict[str, np.ndarray]:
        """Observable item features at impression time; `tags` is (n, MAX_TAGS), -1 padded."""
        age_ms = np.maximum(ts - self.item_upload_ms[item_idx], 0)
        return {
            "author_id": self.item_author[item_idx],
            "category": self.item_category[item_idx],
            "tags": self.item_tags[item_idx],
            "duration": self.item_duration[item_idx],
            "upload_age_days": (age_ms / DAY_MS).astype(np.float32),
        }

    def expected_outcomes(
        self,
        user_idx: np.ndarray,
        item_idx: np.ndarray,
        hour: np.ndarray,
        tab: np.ndarray,
        ts: np.ndarray,
    ) -> Expected:
        """True P(click) and E[completion | click] per impression (arrays broadcast together)."""
        user_idx, item_idx, hour, tab, ts = np.broadcast_arrays(user_idx, item_idx, hour, tab, ts)
        dots = (self.user_latent[user_idx] * self.item_latent[item_idx]) @ self._task_weights
        age_days = np.maximum(ts - self.item_upload_ms[item_idx], 0) / DAY_MS
        duration = self.item_duration[item_idx].astype(np.float64)
        clickbait = self.item_clickbait[item_idx]
        device = self.user_device[user_idx]
        click_logit = (
            self.config.click_base
            + self.user_click_bias[user_idx]
            + self.item_click_quality[item_idx]
            + dots[:, 0]
            + self.config.task_conflict * clickbait
            + TREND_CLICK * self.item_trend[item_idx, self.day_of(ts)]
            - 0.08 * np.log1p(age_days)  # freshness
            + TAB_CLICK[tab]
            + HOUR_CLICK[hour]
            + DEVICE_CLICK[device]
        )
        completion_logit = (
            0.2
            + self.user_completion_bias[user_idx]
            + self.item_completion_quality[item_idx]
            + dots[:, 1]
            - self.config.task_conflict * clickbait
            - 0.6 * np.log(duration / 30.0)  # long videos complete less
            + DEVICE_COMPLETION[device]
        )
        return Expected(_sigmoid(click_logit), _sigmoid(completion_logit), duration)

    def draw_outcomes(
        self, expected: Expected, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sampled (click int8, watch_time float32 seconds); watch_time > 0 exactly when clicked."""
        click = rng.random(len(expected.p_click)) < expected.p_click
        mean = expected.completion_given_click[click]
        kappa = self.config.completion_concentration
        completion = np.zeros(len(click))
        # The floor keeps a click's watch time positive; it moves the mean by < 1e-3.
        completion[click] = np.maximum(rng.beta(mean * kappa, (1.0 - mean) * kappa), 1e-3)
        watch_time = (completion * expected.duration).astype(np.float32)
        return click.astype(np.int8), watch_time
