"""The pruning controller: decides, per device, when to re-prune and what to deploy.

`triggers` and `rollouts` hold the decisions as pure functions over plain data (unit-tested without
a database); `loop` reads the database, applies them and enqueues jobs.
"""
