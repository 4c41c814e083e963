"""Exit codes of the scheduled jobs (`ranker retrain`, `ranker build-log`), one vocabulary.

Here, not in one job, because the scheduler (training/schedule.py) reads them for every job it
runs: EXIT_LOCKED is a skip (another run held the lock), any other non-zero code a failure.
"""

EXIT_OK = 0  # done (retrain: published and rolled out, or production kept by the gate)
EXIT_FAILED = 1  # the run failed; registry and config untouched
EXIT_USAGE = 2  # bad config, cron expression, logs, registry entry, or a failed export check
EXIT_LOCKED = 4  # another run holds the lock
EXIT_UNREFERENCED = 5  # retrain: published, but the experiment config could not be updated
