"""`qsae-agent`: the device-side command line."""

from __future__ import annotations

import typer

app = typer.Typer(help="QSAE Fleet edge agent.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the agent version."""
    from importlib.metadata import version as pkg_version

    typer.echo(pkg_version("qsae-fleet"))


if __name__ == "__main__":
    app()
