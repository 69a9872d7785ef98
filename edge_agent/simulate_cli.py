"""`qsae-fleet simulate` (and `python -m edge_agent.simulate_cli`): N simulated agents on a scenario.

The control plane's CLI forwards its arguments here, so the command needs only the agent's
packages (and PyYAML for the scenario file).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path

import typer

app = typer.Typer(help="Run simulated edge agents against a control plane.", add_completion=False)


def _operator_key() -> str | None:
    return os.environ.get("QSAE_OPERATOR_KEY") or os.environ.get("FLEET_BOOTSTRAP_ADMIN_KEY") or None


@app.command()
def simulate(
    devices: int = typer.Option(4, "--devices", "-n", min=1, help="number of agents"),
    scenario: str = typer.Option("smoke", "--scenario", "-s",
                                 help="YAML file, or a bundled name: smoke, steady, drift"),
    server: str = typer.Option("http://127.0.0.1:8000", "--server", help="control plane URL"),
    state_dir: Path = typer.Option(Path(".fleet/sim"), "--state-dir", help="one agent folder per device"),
    operator_key: str = typer.Option(None, "--operator-key", help="API key (operator role) to create the devices; "
                                     "default $QSAE_OPERATOR_KEY or $FLEET_BOOTSTRAP_ADMIN_KEY"),
    initial_version: str = typer.Option(None, "--initial-version",
                                        help="start every device on this version (else the server assigns one)"),
    rounds: int = typer.Option(None, "--rounds", min=1, help="batches per device (default: the scenario's length)"),
    batch_size: int = typer.Option(None, "--batch-size", min=1),
    label_rate: float = typer.Option(None, "--label-rate", min=0.0, max=1.0, help="share of labels fed back"),
    label_delay_s: float = typer.Option(None, "--label-delay", min=0.0, help="simulated seconds until a label"),
    seconds_per_batch: float = typer.Option(None, "--seconds-per-batch", min=0.0),
    threads: int = typer.Option(None, "--threads", min=1),
    name_prefix: str = typer.Option(None, "--name-prefix", help="device names on the server: prefix + scenario id"),
    base_model: str = typer.Option(None, "--base-model", help="base model of the devices it creates (fmnist-cnn)"),
    json_out: Path = typer.Option(None, "--json", help="also write the report as JSON here"),
    log_level: str = typer.Option("WARNING", "--log-level"),
) -> None:
    """Create (or reuse) N devices, enroll an agent for each and run them on the scenario's streams;
    print what happened, including the label-free accuracy estimate's error."""
    from edge_agent.errors import AgentError
    from edge_agent.simulator import report_json
    from edge_agent.simulator import simulate as run

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        report = run(server, scenario, devices=devices, operator_key=operator_key or _operator_key(),
                     state_dir=state_dir, initial_version=initial_version, stop=stop, rounds=rounds,
                     batch_size=batch_size, label_rate=label_rate, label_delay_s=label_delay_s,
                     seconds_per_batch=seconds_per_batch, threads=threads, name_prefix=name_prefix,
                     base_model=base_model)
    except (AgentError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(report.summary())
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(report_json(report))
    else:
        typer.echo(json.dumps({k: v for k, v in report.to_dict().items() if k != "devices"}, default=str))


def main(argv: list[str] | None = None) -> None:
    """Entry point for `qsae-fleet simulate ARGS...` (forwards ARGS)."""
    typer.main.get_command(app).main(args=argv, prog_name="qsae-fleet simulate")


if __name__ == "__main__":
    main()
