"""`qsae-fleet`: the server-side command line (serve, db, apikey, device, policy, keys, demo).

Commands that train import `workers` lazily, so the control plane itself never loads torch.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from control_plane.services import FleetStore

app = typer.Typer(help="QSAE Fleet server side: control plane, workers, controller, demo.", pretty_exceptions_show_locals=False,
                  no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
apikey_app = typer.Typer(help="Operator API keys.", no_args_is_help=True)
device_app = typer.Typer(help="Devices (the operator API, from the shell).", no_args_is_help=True)
keys_app = typer.Typer(help="Manifest signing keys (rotation: docs/security.md).", no_args_is_help=True)
policy_app = typer.Typer(help="Re-prune policies: `default` and per-cohort (docs/dynamic-loop.md).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(apikey_app, name="apikey")
app.add_typer(device_app, name="device")
app.add_typer(keys_app, name="keys")
app.add_typer(policy_app, name="policy")


def _setup_logging() -> None:
    from control_plane.settings import get_settings

    logging.basicConfig(level=get_settings().log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _store() -> FleetStore:
    from control_plane.services import FleetStore

    return FleetStore.from_settings()


@app.command()
def demo(quick: bool = typer.Option(False, help="a smaller, faster run")) -> None:
    """Run the whole dynamic-pruning loop on the embedded default and print its results."""
    from workers.demo import run_demo

    run_demo(quick=quick)


@app.command()
def worker(max_parallel: int = typer.Option(2, help="Ray tasks in flight at once")) -> None:
    """Run the dispatcher: jobs from the jobs table as Ray tasks (FLEET_RAY_ADDRESS or local)."""
    from workers.dispatcher import DispatcherConfig, run_dispatcher

    _setup_logging()
    run_dispatcher(config=DispatcherConfig(max_parallel=max_parallel))


@app.command()
def controller(tick: float = typer.Option(5.0, help="seconds between passes over the fleet")) -> None:
    """Run the pruning controller: retrain triggers per device, rollout advance/abort."""
    from control_plane.controller.loop import ControllerConfig, run_controller

    _setup_logging()
    run_controller(config=ControllerConfig(tick_s=tick))


@app.command()
def simulate(devices: int = typer.Option(None, help="agents to run (default: the scenario's)"),
             scenario: str = typer.Option(..., help="scenario YAML (see edge_agent/scenarios/)"),
             server: str = typer.Option("http://127.0.0.1:8000", help="control plane base URL"),
             operator_key: str = typer.Option(None, envvar="FLEET_BOOTSTRAP_ADMIN_KEY",
                                              help="operator API key used to create the devices"),
             state_dir: str = typer.Option(".fleet/sim", help="agents' state folders"),
             rounds: int = typer.Option(None, help="batches per device (default: the whole scenario)")) -> None:
    """Run N simulated edge agents against a control plane and print what happened (JSON)."""
    from edge_agent.simulator import report_json
    from edge_agent.simulator import simulate as run_simulation

    _setup_logging()
    report = run_simulation(server, scenario, devices=devices, operator_key=operator_key, state_dir=state_dir,
                            rounds=rounds)
    typer.echo(report_json(report))


@app.command()
def serve(host: str = typer.Option(None, help="default FLEET_HOST (127.0.0.1)"),
          port: int = typer.Option(None, help="default FLEET_PORT (8000)"),
          workers: int = typer.Option(None, help="uvicorn worker processes (default FLEET_WORKERS)"),
          migrate: bool = typer.Option(True, help="run `db upgrade` first (turn off with several replicas)"),
          ) -> None:
    """Run the control plane API with uvicorn."""
    import uvicorn

    from control_plane.db.migrate import upgrade
    from control_plane.http_protocol import header_deadline_protocol
    from control_plane.settings import get_settings

    _setup_logging()
    s = get_settings()
    if migrate:
        upgrade(str(s.database_url))
    uvicorn.run("control_plane.main:create_app", factory=True, host=host or s.host, port=port or s.port,
                workers=workers or s.workers, log_level=s.log_level.lower(), access_log=False,
                proxy_headers=True, server_header=False, http=header_deadline_protocol(s.client_timeout_s))


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Create or migrate the schema of FLEET_DATABASE_URL."""
    from control_plane.db.migrate import current_revision, upgrade
    from control_plane.services import auth
    from control_plane.settings import get_settings

    _setup_logging()
    s = get_settings()
    upgrade(str(s.database_url), revision)
    if s.bootstrap_admin_key:
        store = _store()
        store.db.run(auth.ensure_api_key, secret=s.bootstrap_admin_key, role="admin", name="bootstrap admin")
        store.close()
    typer.echo(f"database at revision {current_revision(str(s.database_url))}")


@db_app.command("current")
def db_current() -> None:
    """Print the schema revision of FLEET_DATABASE_URL and the newest one this build knows."""
    from control_plane.db.migrate import current_revision, head_revision
    from control_plane.settings import get_settings

    typer.echo(f"current {current_revision(str(get_settings().database_url))}, head {head_revision()}")


@apikey_app.command("create")
def apikey_create(role: str = typer.Option("admin", help="viewer | operator | admin"),
                  name: str = typer.Option("cli", help="a label for the key")) -> None:
    """Create an operator API key and print it (shown once)."""
    from control_plane.services import auth

    store = _store()
    try:
        key, secret = store.db.run(auth.create_api_key, name=name, role=role, actor="system:cli")
    finally:
        store.close()
    typer.echo(json.dumps({"id": key.id, "role": key.role, "api_key": secret}))


@apikey_app.command("list")
def apikey_list() -> None:
    from control_plane.services import auth

    store = _store()
    try:
        for k in store.db.run(auth.list_api_keys):
            typer.echo(f"{k.id}\t{k.role}\t{k.name}\t{'revoked' if k.revoked_at else 'active'}")
    finally:
        store.close()


@apikey_app.command("revoke")
def apikey_revoke(key_id: str) -> None:
    from control_plane.services import auth

    store = _store()
    try:
        store.db.run(auth.revoke_api_key, key_id, actor="system:cli")
    finally:
        store.close()
    typer.echo(f"revoked {key_id}")


@device_app.command("create")
def device_create(name: str, base_model: str = typer.Option(..., help="registered base model name"),
                  label: list[str] = typer.Option([], help="key=value; `cohort=...` sets the cohort")) -> None:
    """Register a device and print its one-time enrollment token."""
    from control_plane.services import devices
    from control_plane.settings import get_settings

    labels = dict(item.split("=", 1) for item in label)
    store = _store()
    try:
        d, token = store.db.run(devices.create_device, name=name, labels=labels, base_model=base_model,
                                actor="system:cli", enrollment_ttl_s=get_settings().enrollment_ttl_s)
    finally:
        store.close()
    typer.echo(json.dumps({"device_id": d.id, "enrollment_token": token}))


@policy_app.command("list")
def policy_list() -> None:
    """Print every policy; a cohort without its own follows `default`."""
    from control_plane.services import policies

    store = _store()
    try:
        rows = store.db.run(policies.list_policies)
    finally:
        store.close()
    typer.echo(json.dumps([p.model_dump(mode="json") for p in rows], indent=1))


@policy_app.command("set")
def policy_set(name: str = typer.Argument(..., help="`default` or a cohort's name"),
               kl_budget: float | None = typer.Option(None, help="most KL(dense || pruned) a version may cost, nats"),
               min_compression: float | None = typer.Option(None, help="least compression worth deploying"),
               accuracy_drop_pp: float | None = typer.Option(None, help="re-prune when accuracy falls this many points"),
               drift_threshold: float | None = typer.Option(None, help="re-prune above this histogram drift (JS, 0..1)"),
               interval_s: float | None = typer.Option(None, help="re-prune at least this often, seconds"),
               auto_deploy: bool | None = typer.Option(None, "--auto-deploy/--no-auto-deploy",
                                                help="deploy a passing version without a rollout")) -> None:
    """Change some values of a policy and print it as stored.

    The values not given stay as they are; a new cohort policy starts from `default`."""
    from pydantic import ValidationError

    from control_plane.schemas import PolicyValues
    from control_plane.services import policies

    changes = {k: v for k, v in {"kl_budget": kl_budget, "min_compression": min_compression,
                                 "accuracy_drop_pp": accuracy_drop_pp, "drift_threshold": drift_threshold,
                                 "interval_s": interval_s, "auto_deploy": auto_deploy}.items() if v is not None}
    if not changes:
        raise typer.BadParameter("give at least one value to change (see --help)")
    store = _store()
    try:
        current = store.db.run(policies.effective_policy, name)
        try:
            values = PolicyValues(**{**current.model_dump(exclude={"name", "updated_at"}), **changes})
        except ValidationError as exc:
            raise typer.BadParameter("; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())) from None
        stored = store.db.run(policies.put_policy, name, values, actor="system:cli")
    finally:
        store.close()
    typer.echo(json.dumps(stored.model_dump(mode="json"), indent=1))


@keys_app.command("list")
def keys_list() -> None:
    """Print the current signing key and every key devices are told to trust."""
    from control_plane.keyring import trusted_public_keys
    from control_plane.keys import load_or_create_signing_key
    from control_plane.settings import get_settings

    signer = load_or_create_signing_key(get_settings().signing_key_file)
    typer.echo(json.dumps({"current": signer.key_id, "trusted": trusted_public_keys(signer)}, indent=1))


@keys_app.command("rotate")
def keys_rotate(retire_previous: bool = typer.Option(False, help="devices that follow stop trusting the old key")
                ) -> None:
    """Sign with a new key from now on, announced with the current one (devices follow the
    announcement; running servers and workers pick the new key up without a restart)."""
    from control_plane.keyring import rotate_signing_key
    from control_plane.keys import load_or_create_signing_key
    from control_plane.settings import get_settings

    path = get_settings().signing_key_file
    load_or_create_signing_key(path)
    ann = rotate_signing_key(path, retire_previous=retire_previous)
    typer.echo(json.dumps(ann.to_dict(), indent=1))


if __name__ == "__main__":
    app()
