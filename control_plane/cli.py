"""`qsae-fleet`: the server-side command line (serve, db, worker, controller, demo, simulate).

Commands that train import `workers` lazily, so the control plane itself never loads torch.
"""

from __future__ import annotations

import typer

app = typer.Typer(help="QSAE Fleet server side: control plane, workers, controller, demo.",
                  no_args_is_help=True)


@app.command()
def demo(quick: bool = typer.Option(False, help="a smaller, faster run")) -> None:
    """Run the whole dynamic-pruning loop on the embedded default and print its results."""
    from workers.demo import run_demo

    run_demo(quick=quick)


if __name__ == "__main__":
    app()
