"""Enrollment: exchange a one-time token for the device's credentials and pin the signing keys."""

from __future__ import annotations

import logging
import time

from edge_agent.client import FleetClient
from edge_agent.config import AgentSettings
from edge_agent.errors import AgentError, ConfigError
from edge_agent.state import CREDENTIALS, Credentials, save_credentials

logger = logging.getLogger(__name__)


def enroll(settings: AgentSettings, token: str | None = None, force: bool = False,
           client: FleetClient | None = None) -> Credentials:
    """Enroll with the control plane at `settings.server_url` and store the credentials in the
    state folder. Refuses to overwrite existing credentials unless `force` (a device that enrolls
    again gets a new identity: its outbox and models are kept, but its counters start over)."""
    token = token or settings.enrollment_token
    if not token:
        raise ConfigError("no enrollment token: pass --token or set QSAE_AGENT_ENROLLMENT_TOKEN")
    if (settings.state_dir / CREDENTIALS).exists() and not force:
        raise AgentError(f"{settings.state_dir} already holds credentials; pass --force to enroll again")
    own = client is None
    client = client or FleetClient(settings.server_url, timeout_s=settings.request_timeout_s)
    try:
        e = client.enroll(token, settings.agent_version)
    finally:
        if own:
            client.close()
    if not e.signing_keys:
        raise AgentError("the server announced no signing keys: this device could not verify any model")
    creds = Credentials(device_id=e.device_id, device_token=e.device_token, server_url=settings.server_url,
                        signing_keys=e.signing_keys, base_model=e.base_model, poll_interval_s=e.poll_interval_s,
                        enrolled_at=time.time())
    if force:
        (settings.state_dir / "counters.json").unlink(missing_ok=True)
    save_credentials(settings.state_dir, creds)
    logger.info("device_id=%s enrolled with %s; pinned signing keys %s", e.device_id, settings.server_url,
                ", ".join(sorted(e.signing_keys)))
    return creds
