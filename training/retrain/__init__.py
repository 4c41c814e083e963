"""The scheduled retraining job: config, lock, train, gate against production, publish, report.

`run` holds the job; `gate` its decision (paired bootstrap intervals, `paired_bootstrap`); `lock`
keeps two runs apart; `cleanup` removes what a killed run left; `report` writes what happened.
"""
