"""Operator commands for the cluster: ``stereo-spot kfp-trigger`` (run by the Kubeflow Sensor's Job),
``stereo-spot reconcile`` (the backstop for lost uploads and stuck jobs) and ``stereo-spot doctor`` (checks a
cluster before a deploy). Registered on the main app by ``stereo_spot.cli`` with ``cli_ops.register(app)``."""

from __future__ import annotations

import os
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from stereo_spot.errors import UserError, one_line

console = Console(stderr=True)
out = Console()

EXIT_RETRY = 1  # a retry may help (Kubernetes Job backoff, the CronWorkflow's next run)
EXIT_USER_ERROR = 2  # a retry cannot help: the message says what to fix


def _die(message: str, code: int) -> NoReturn:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def _debug() -> None:
    if os.environ.get("STEREO_SPOT_DEBUG"):
        console.print_exception()


def kfp_trigger_command(
    event: Annotated[str | None, typer.Option(help="The S3 event notification (JSON), as the Sensor passes it "
                                              "(default: $STEREO_SPOT_EVENT).", show_default=False)] = None,
    delivery_id: Annotated[str | None, typer.Option(help="The id of this delivery of the event (the Argo "
                                                    "Events event id; default: $STEREO_SPOT_DELIVERY_ID).",
                                                    show_default=False)] = None,
    host: Annotated[str | None, typer.Option(help="The KFP API (default: $KFP_HOST or the in-cluster "
                                             "ml-pipeline service).", show_default=False)] = None,
    pipeline_id: Annotated[str | None, typer.Option(help="The uploaded pipeline's id (default: "
                                                    "$KFP_PIPELINE_ID).", show_default=False)] = None,
    experiment: Annotated[str | None, typer.Option(help="Experiment of the runs (default: $KFP_EXPERIMENT or "
                                                   "stereo-spot).", show_default=False)] = None,
    namespace: Annotated[str | None, typer.Option(help="Profile namespace on multi-user KFP (default: "
                                                  "$KFP_NAMESPACE).", show_default=False)] = None,
) -> None:
    """Start the Kubeflow run for one upload event, once: claim the event, then create the run."""
    from stereo_spot.adapters import build_backend
    from stereo_spot.kfp_trigger import KfpApi, KfpSettings, KfpUnavailable, trigger
    from stereo_spot.logs import configure_logging
    from stereo_spot.ports import StoreError

    configure_logging()
    body = event if event is not None else os.environ.get("STEREO_SPOT_EVENT", "")
    delivery = delivery_id if delivery_id is not None else os.environ.get("STEREO_SPOT_DELIVERY_ID", "")
    try:
        settings = KfpSettings.from_environment(host=host, pipeline_id=pipeline_id, experiment=experiment,
                                                namespace=namespace)
        results = trigger(build_backend(), KfpApi(settings), body, delivery)
    except (KfpUnavailable, StoreError) as exc:
        _debug()
        _die(f"{one_line(exc)} (retried by the Job)", EXIT_RETRY)
    except UserError as exc:
        _die(one_line(exc), EXIT_USER_ERROR)
    for result in results:
        out.print(f"{result.outcome.value}: {result.reason}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("kfp-trigger")(kfp_trigger_command)
