"""``stereo-spot models list|download|verify``: the depth models known by name, and their cache.

Registered by ``stereo_spot.cli.main`` as ``app.add_typer(cli_models.app, name="models")``.
"""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from stereo_spot.cli.console import console, out, print_error
from stereo_spot.errors import UserError, one_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Depth models by name: list them, download them into the cache, verify the cache.")

NamesArgument = Annotated[list[str], typer.Argument(help="Model names (NAME or NAME@REVISION); see `models list`.",
                                                     show_default=False)]


def _die(exc: BaseException) -> NoReturn:
    print_error(one_line(exc))
    raise typer.Exit(1)


def _require_hub() -> None:
    from stereo_spot.errors import require_extra

    require_extra("huggingface_hub", "models", "downloading and verifying models by name")


@app.command("list")
def list_models() -> None:
    """The models known by name: their licence, size (parameters), whether they are consistent over time by
    training, their hub repository and revision, and whether the cache has them."""
    from stereo_spot import hub_models
    from stereo_spot.errors import require_extra

    try:
        require_extra("huggingface_hub", "models", "downloading and using models by name")
        missing = None
    except UserError as exc:  # the catalog is still worth showing; the cache cannot be read without the hub
        missing = exc
    table = Table("name", "licence", "parameters", "video", "repository", "revision", "cached", "about")
    for model in hub_models.CATALOG.values():
        cached = "?" if missing else ("yes" if hub_models.cached_snapshot(model.name) else "no")
        licence = model.licence if model.commercial_use else f"{model.licence} (non-commercial)"
        table.add_row(model.name, licence, f"{model.parameters_m:g}M", "yes" if model.video_consistent else "no",
                      model.repo_id, model.revision, cached, model.summary)
    out.print(table)
    if missing:
        console.print(f"note: {escape(one_line(missing))}", highlight=False, soft_wrap=True)


@app.command()
def download(names: NamesArgument,
             force: Annotated[bool, typer.Option("--force", help="Download every file again.")] = False) -> None:
    """Put models into the cache (HF_HUB_CACHE), so conversions start without the hub."""
    from stereo_spot import hub_models

    for name in names:
        try:
            _require_hub()
            path = hub_models.resolve(name, force=force)
        except UserError as exc:
            _die(exc)
        out.print(f"{name}: {path}", highlight=False, soft_wrap=True)


@app.command()
def verify(names: NamesArgument) -> None:
    """Check every cached file of the models against the hash the hub named it by."""
    from stereo_spot import hub_models

    for name in names:
        try:
            _require_hub()
            files = hub_models.verify(name)
        except UserError as exc:
            _die(exc)
        out.print(f"{name}: {len(files)} files intact", highlight=False)
