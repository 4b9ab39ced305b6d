"""Entry point of the `m2s` console script."""

from __future__ import annotations

import typer

from cli.commands import distill, evaluate, fuse, inspect, show, synth, train
from cli.common import DEBUG_ENV, set_debug

app = typer.Typer(
    name="m2s",
    help="Multi-to-single knowledge distillation for single-scan LiDAR semantic segmentation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", envvar=DEBUG_ENV, help="Show full tracebacks on errors."),
) -> None:
    set_debug(debug)


app.command("synth")(synth.synth)
app.command("fuse")(fuse.fuse)
app.command("train-teacher")(train.train_teacher)
app.command("distill")(distill.distill)
app.command("evaluate")(evaluate.evaluate)
app.command("inspect")(inspect.inspect)
app.command("show")(show.show)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
