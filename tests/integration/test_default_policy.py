"""The product deploys one default policy: what the control plane serves is what the workers use."""

from control_plane.services.policies import DEFAULT_POLICY as SERVED
from workers.policy import DEFAULT_POLICY as WORKERS


def test_served_default_policy_is_the_workers_default():
    assert SERVED.kl_budget == WORKERS.kl_budget
    assert SERVED.min_compression == WORKERS.min_compression
