"""`qsae-agent`: the device-side command line (enroll, run, status)."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import typer

from edge_agent.config import AgentSettings, load_settings
from edge_agent.errors import AgentError

app = typer.Typer(help="QSAE Fleet edge agent.", no_args_is_help=True)

CONFIG = typer.Option(None, "--config", "-c", help="TOML or JSON settings file (else QSAE_AGENT_CONFIG_FILE)")
STATE = typer.Option(None, "--state-dir", help="where credentials, outbox and models live")
SERVER = typer.Option(None, "--server", help="control plane URL, e.g. http://127.0.0.1:8000")


def _settings(config: Path | None, state_dir: Path | None, server: str | None, **more: Any) -> AgentSettings:
    try:
        return load_settings(config, state_dir=state_dir, server_url=server, **more)
    except AgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def enroll(token: str = typer.Option(None, "--token", help="one-time enrollment token (or "
                                     "QSAE_AGENT_ENROLLMENT_TOKEN)"),
           force: bool = typer.Option(False, help="replace existing credentials"),
           config: Path = CONFIG, state_dir: Path = STATE, server: str = SERVER) -> None:
    """Exchange a one-time token for this device's credentials and pin the server's signing keys."""
    from edge_agent.enroll import enroll as do_enroll

    settings = _settings(config, state_dir, server)
    try:
        creds = do_enroll(settings, token, force)
    except AgentError as exc:
        typer.echo(f"error: enrollment failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"enrolled as {creds.device_id} (base model {creds.base_model}); pinned keys: "
               f"{', '.join(sorted(creds.signing_keys))}; state in {settings.state_dir}")


@app.command()
def run(config: Path = CONFIG, state_dir: Path = STATE, server: str = SERVER,
        log_level: str = typer.Option("INFO", help="DEBUG, INFO, WARNING")) -> None:
    """Run the daemon: heartbeat, fetch desired state, install/roll back models, drain the outbox."""
    from edge_agent.agent import Agent

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = _settings(config, state_dir, server)
    try:
        agent = Agent(settings)
    except AgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        agent.run(stop)
    finally:
        agent.close()


@app.command()
def status(config: Path = CONFIG, state_dir: Path = STATE,
           as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """What runs, what is pending, what the outbox holds (reads the state folder only)."""
    from edge_agent.agent import read_status

    settings = _settings(config, state_dir, None)
    try:
        st = read_status(settings)
    except AgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(st, indent=1, default=str))
        return
    a = st["assignment"] or {}
    ob = st["outbox"]
    lines = [
        f"device          {st['device_id']}  (base model {st['base_model']}, server {st['server_url']})",
        f"serving         {st['current'] or '-'}" + (f"  on probation since swap from {st['probation']['previous']}"
                                                    if st["probation"] else ""),
        f"last known good {st['last_known_good'] or '-'}",
        f"desired         {a.get('desired_version') or '-'}  ({a.get('reason', 'not polled yet')})",
        f"outbox          {ob['records']} records, {ob['bytes']} bytes {ob['by_kind']}, {ob['dropped']} dropped",
        f"refused records {st['rejected_records']['total']}",
    ]
    for version, b in st["blocked"].items():
        lines.append(f"blocked         {version}: {b['reason']}" + ("" if b["final"] else " (will retry)"))
    typer.echo("\n".join(lines))


@app.command()
def version() -> None:
    """Print the agent version."""
    from importlib.metadata import version as pkg_version

    typer.echo(pkg_version("qsae-fleet"))


if __name__ == "__main__":
    app()
