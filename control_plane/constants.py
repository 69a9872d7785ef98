"""Every Redis key and channel the control plane uses, in one place (each under the deployment's
`FLEET_REDIS_PREFIX`). Redis only carries signals; losing it loses no data."""

from __future__ import annotations

ASSIGNMENT_CHANNEL = "assign"  # pub/sub: message = device id whose desired version changed
JOBS_WAKE_LIST = "jobs:wake"  # list: one token per enqueued job; dispatchers BLPOP it
JOBS_WAKE_MAX = 1000  # the wake list is trimmed to this length
RATE_LIMIT = "rl:{device_id}:{window}"  # counter of a device's requests in one minute window
NOTE_ASSIGNMENT = "assignment"  # post-commit note: (NOTE_ASSIGNMENT, device_id)
NOTE_JOB = "job"  # post-commit note: (NOTE_JOB, job_id)


def key(prefix: str, name: str, **fmt: object) -> str:
    return prefix + name.format(**fmt)
