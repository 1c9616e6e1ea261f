"""Operator commands for the cluster: ``stereo-spot kfp-trigger`` (run by the Kubeflow Sensor's Job),
``stereo-spot reconcile`` (the backstop for lost uploads and stuck jobs) and ``stereo-spot doctor`` (checks a
cluster before a deploy). Registered on the main app by ``stereo_spot.cli.main`` with ``cli_ops.register(app)``."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, NoReturn

import typer
from rich.markup import escape

from stereo_spot.cli.console import console, out, print_error
from stereo_spot.config import get_settings, reporting_settings
from stereo_spot.errors import UserError, one_line

EXIT_RETRY = 1  # a retry may help (Kubernetes Job backoff, the CronWorkflow's next run)
EXIT_USER_ERROR = 2  # a retry cannot help: the message says what to fix


def _die(message: str, code: int) -> NoReturn:
    print_error(message)
    raise typer.Exit(code)


def _debug() -> None:
    if reporting_settings().stereo_spot_debug:
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
    from stereo_spot.cluster.kfp_trigger import KfpApi, KfpSettings, KfpUnavailable, trigger
    from stereo_spot.logs import configure_logging
    from stereo_spot.ports import StoreError

    configure_logging()
    try:
        config = get_settings()
        body = event if event is not None else config.stereo_spot_event
        delivery = delivery_id if delivery_id is not None else config.stereo_spot_delivery_id
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


def _duration(text: str) -> timedelta:
    """30s, 15m, 2h, 7d."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text or "")
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration: use e.g. 30s, 15m, 2h or 7d")
    return timedelta(seconds=float(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]])


def reconcile_command(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be done; change nothing.")] = False,
    grace: Annotated[str, typer.Option(help="An upload this old with no run counts as lost.")] = "15m",
    stuck_after: Annotated[str, typer.Option(help="A job with no progress for this long is re-driven.")] = "2h",
    fail_after: Annotated[str, typer.Option(help="A job with no progress for this long is marked failed.")]
    = "24h",
    redrive_every: Annotated[str, typer.Option(help="Re-drive one stuck job at most this often.")] = "1h",
    lookback: Annotated[str, typer.Option(help="Look for uploads without a job this far back.")] = "7d",
    limit: Annotated[int, typer.Option(min=1, help="At most this many re-drives and failures per pass.")] = 100,
) -> None:
    """Re-drive uploads that never got a run and jobs stuck past a deadline; fail jobs that stay stuck.

    Sends a fresh upload event to the events queue (CHUNKING_QUEUE_URL) for each, which the Argo Sensor, the
    Kubeflow trigger or the SQS worker handle like the upload itself: what is done is skipped.
    """
    from stereo_spot.adapters import build_backend
    from stereo_spot.cluster.reconcile import Reconciler, ReconcileSettings
    from stereo_spot.config import get_settings
    from stereo_spot.logs import configure_logging
    from stereo_spot.ports import StoreError

    configure_logging()
    options = ReconcileSettings(grace=_duration(grace), stuck_after=_duration(stuck_after),
                                fail_after=_duration(fail_after), redrive_every=_duration(redrive_every),
                                lookback=_duration(lookback), limit=limit)
    if options.fail_after <= options.stuck_after:
        _die("--fail-after must be longer than --stuck-after (a stuck job is re-driven before it is failed)",
             EXIT_USER_ERROR)
    try:
        settings = get_settings()
        if settings.storage_adapter != "aws":
            raise UserError("reconcile works on the AWS storage (STORAGE_ADAPTER=aws): locally, "
                            "`stereo-spot jobs` and `stereo-spot resume JOB` do the same")
        from stereo_spot.adapters.aws import events_queue

        backend = build_backend(settings)
        queue = None if dry_run else events_queue(settings)
        findings = Reconciler(backend, queue, options, dry_run=dry_run).run()
    except StoreError as exc:
        _debug()
        _die(f"{one_line(exc)} (the next pass tries again)", EXIT_RETRY)
    except UserError as exc:
        _die(one_line(exc), EXIT_USER_ERROR)
    for finding in findings:
        out.print(finding.line(dry_run), highlight=False, soft_wrap=True)
    if not findings:
        console.print("nothing to reconcile: every upload has a run and every job is moving", highlight=False)


def doctor_command(
    kube_api: Annotated[str | None, typer.Option(help="Kubernetes API URL (default: in-cluster, or the "
                                                 "kubeconfig).", show_default=False)] = None,
    kube_token: Annotated[str | None, typer.Option(envvar="KUBE_TOKEN", help="Bearer token for the Kubernetes "
                                                   "API.", show_default=False)] = None,
    kubeconfig: Annotated[str | None, typer.Option(help="Kubeconfig file (default: $KUBECONFIG or "
                                                   "~/.kube/config).", show_default=False)] = None,
    context: Annotated[str | None, typer.Option(help="Kubeconfig context (default: the current one).",
                                                show_default=False)] = None,
    argo_server: Annotated[str | None, typer.Option(envvar="ARGO_SERVER_URL", help="Argo server, to read its "
                                                    "version (default: the controller's image tag).",
                                                    show_default=False)] = None,
    argo_token: Annotated[str | None, typer.Option(envvar="ARGO_TOKEN", help="Token for the Argo server.",
                                                   show_default=False)] = None,
    namespace: Annotated[str, typer.Option(help="Where stereo-spot is (to be) deployed.")] = "stereo-spot",
    argo_namespace: Annotated[str, typer.Option(help="Where Argo Workflows runs.")] = "argo",
    kubeflow: Annotated[bool, typer.Option("--kubeflow", help="Also check what the Kubeflow overlay needs.")]
    = False,
    insecure: Annotated[bool, typer.Option("--insecure", help="Do not verify TLS certificates.")] = False,
) -> None:
    """Check that the cluster can run stereo-spot: Argo Workflows 3.6+, the CRDs, the service accounts."""
    from stereo_spot.cluster.doctor import kube_endpoint, run_checks

    try:
        kube = kube_endpoint(kube_api, kube_token, kubeconfig, context, verify=not insecure)
    except UserError as exc:
        _die(one_line(exc), EXIT_USER_ERROR)
    argo = None
    if argo_server:
        from stereo_spot.adapters.argo_runs import endpoint
        from stereo_spot.config import get_settings

        token = (argo_token or "").removeprefix("Bearer ").strip() or None  # `argo auth token` prints "Bearer …"
        try:  # the server's certificate is checked as every client of it checks it (ARGO_CA_FILE, ...)
            argo = endpoint(get_settings(), host=argo_server, token=token, insecure=insecure)
        except ValueError as exc:
            _die(one_line(exc), EXIT_USER_ERROR)
    checks = run_checks(kube, argo=argo, namespace=namespace, argo_namespace=argo_namespace, kubeflow=kubeflow)
    style = {"ok": "green", "warn": "yellow", "missing": "bold red"}
    for check in checks:
        out.print(f"[{style[check.state]}]{check.state:8}[/] {escape(check.name)}: {escape(check.detail)}",
                  highlight=False, soft_wrap=True)
    missing = [c for c in checks if c.failed]
    if missing:
        _die(f"{len(missing)} thing(s) missing: fix them before deploying ({', '.join(c.name for c in missing)})",
             EXIT_RETRY)
    console.print("the cluster can run stereo-spot", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("kfp-trigger")(kfp_trigger_command)
    app.command("reconcile")(reconcile_command)
    app.command("doctor")(doctor_command)
