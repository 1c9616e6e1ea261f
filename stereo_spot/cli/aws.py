"""``stereo-spot aws ...`` (create and remove the AWS resources, runbook actions) and ``stereo-spot worker``.

Registered by ``stereo_spot.cli.main``: ``app.add_typer(cli_aws.app, name="aws")`` and
``app.command("worker")(cli_aws.worker_command)``.
"""

from __future__ import annotations

import logging
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.table import Table

from stereo_spot.cli.console import console, out, print_error
from stereo_spot.config import reporting_settings
from stereo_spot.errors import one_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="AWS resources (buckets, tables, queues) and the runbook actions.")
dlq_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                      help="Inspect and replay the dead-letter queue of the events queue.")
app.add_typer(dlq_app, name="dlq")


PrefixOption = Annotated[str | None, typer.Option(
    "--prefix", help="Derive every resource name from this prefix ({prefix}-input, {prefix}-jobs, ...). "
    "Without it the names come from the environment (INPUT_BUCKET_NAME, JOBS_TABLE_NAME, ...).")]


def _fail(exc: BaseException) -> NoReturn:
    from stereo_spot.errors import Failure, classify

    if reporting_settings().stereo_spot_debug:
        console.print_exception()
    if classify(exc) is Failure.INTERNAL:
        message = f"internal error: {one_line(exc)}; set STEREO_SPOT_DEBUG=1 for the traceback"
    else:
        message = one_line(exc)
    print_error(message)
    raise typer.Exit(1)


_STYLE = {"created": "green", "updated": "yellow", "exists": "dim", "deleted": "red", "absent": "dim",
          "skipped": "dim"}


def _print_change(change) -> None:
    style = _STYLE.get(change.action, "")
    detail = f" ({change.detail})" if change.detail else ""
    console.print(f"  [{style}]{change.action:8}[/] {change.kind:12} {change.name}{detail}", highlight=False)


OidcIssuerOption = Annotated[str | None, typer.Option(
    "--oidc-issuer", help="The cluster's OIDC issuer URL (aws eks describe-cluster --query "
    "cluster.identity.oidc.issuer): with it, the IRSA trust policy of each role too.")]
KubeflowRunnerOption = Annotated[list[str] | None, typer.Option(
    "--kubeflow-runner", help="NAMESPACE/NAME of a Kubeflow run service account (kubeflow/pipeline-runner, or "
    "<profile>/default-editor) that may assume the workflow role too; repeat for several.")]


@app.command()
def bootstrap(prefix: PrefixOption = None,
              oidc_issuer: OidcIssuerOption = None,
              kubeflow_runner: KubeflowRunnerOption = None,
              irsa_patch: Annotated[Path | None, typer.Option(
                  "--irsa-patch", help="With --oidc-issuer: write the aws overlay's IRSA patch (the service "
                  "accounts with their role ARNs) here, e.g. manifests/overlays/aws/irsa.yaml.")] = None,
              kubeflow_irsa_patch: Annotated[Path | None, typer.Option(
                  "--kubeflow-irsa-patch", help="With --oidc-issuer: the same for the aws-kubeflow overlay, e.g. "
                  "manifests/overlays/aws-kubeflow/irsa.yaml.")] = None) -> None:
    """Create the buckets, tables, queues and the S3 -> SQS notification (idempotent), then print the
    environment block (KEY=value lines) for the ConfigMap or the worker's environment. With --oidc-issuer, also
    the IAM role of each service account (IRSA trust policy and permissions), and the overlays' IRSA patches."""
    from stereo_spot.adapters.aws.clients import AwsClients, AwsConfig
    from stereo_spot.aws.bootstrap import bootstrap as run_bootstrap
    from stereo_spot.aws.roles import ensure_roles, write_irsa_patch
    from stereo_spot.config import get_settings
    from stereo_spot.errors import UserError

    try:
        if (irsa_patch or kubeflow_irsa_patch or kubeflow_runner) and not oidc_issuer:
            raise UserError("--irsa-patch, --kubeflow-irsa-patch and --kubeflow-runner need --oidc-issuer (the "
                            "roles' trust names the cluster's OIDC provider)")
        settings = get_settings()
        console.print(f"AWS resources ({settings.aws_endpoint_url or settings.aws_region}):")
        result = run_bootstrap(settings, prefix, on_change=_print_change)
        if oidc_issuer:
            console.print("IAM roles (IRSA):")
            changes, arns = ensure_roles(AwsClients(AwsConfig.from_settings(settings)), result.names, oidc_issuer,
                                         prefix, kubeflow_runners=kubeflow_runner or (), on_change=_print_change)
            result.changes.extend(changes)
            for path, overlay in ((irsa_patch, "aws"), (kubeflow_irsa_patch, "aws-kubeflow")):
                if path is not None:
                    write_irsa_patch(path, overlay, arns)
                    console.print(f"IRSA patch for overlays/{overlay}: {path}", highlight=False)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    console.print("no changes" if not result.changed else "done", style="bold")
    console.print(f"dead-letter queue: {result.dead_letter_queue_url}", highlight=False)
    console.print("environment (stdout):", highlight=False)
    out.print(result.env_block(), highlight=False, soft_wrap=True)


@app.command()
def policies(prefix: PrefixOption = None,
             account: Annotated[str | None, typer.Option(help="AWS account id (default: the caller's, from STS).")]
             = None,
             oidc_issuer: OidcIssuerOption = None,
             kubeflow_runner: KubeflowRunnerOption = None,
             out_dir: Annotated[Path | None, typer.Option("--out", help="Write ROLE.json (and ROLE.trust.json) "
                                                          "files here instead of printing them.")] = None) -> None:
    """Print (or write) the least-privilege IAM policy of each role (stereo-spot-workflow, -events, -ui,
    -reconcile, -kfp-trigger, -worker) and, with --oidc-issuer, its trust policy."""
    import json

    from stereo_spot.adapters.aws.clients import AwsClients, AwsConfig
    from stereo_spot.aws.bootstrap import ResourceNames
    from stereo_spot.aws.iam import IDENTITIES, trust_policy
    from stereo_spot.aws.iam import policies as build_policies
    from stereo_spot.config import get_settings

    try:
        settings = get_settings()
        names = ResourceNames.from_settings(settings, prefix)
        if account is None:
            account = AwsClients(AwsConfig.from_settings(settings)).client("sts").get_caller_identity()["Account"]
        documents = build_policies(names, account, settings.aws_region)
        files: dict[str, dict] = {}
        for identity in IDENTITIES:
            role = identity.role_name(prefix)
            files[f"{role}.json"] = documents[identity.name]
            if oidc_issuer is not None or identity.service_account is None:
                files[f"{role}.trust.json"] = trust_policy(identity, account, oidc_issuer,
                                                           kubeflow_runners=kubeflow_runner or ())
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    for name, document in files.items():
        text = json.dumps(document, indent=2)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / name).write_text(text + "\n")
            console.print(f"{out_dir / name}", highlight=False)
        else:
            out.print(f"# {name}\n{text}", highlight=False, soft_wrap=True)
    if oidc_issuer is None:
        console.print("no --oidc-issuer: the IRSA trust policies were left out", highlight=False)


@app.command()
def destroy(prefix: PrefixOption = None,
            yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False) -> None:
    """Delete the buckets (with every object in them), tables and queues."""
    from stereo_spot.aws.bootstrap import ResourceNames
    from stereo_spot.aws.bootstrap import destroy as run_destroy
    from stereo_spot.config import get_settings

    try:
        settings = get_settings()
        names = ResourceNames.from_settings(settings, prefix)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    if not yes:
        console.print("This deletes, with all their contents:", highlight=False)
        for name in (names.input_bucket, names.output_bucket):
            console.print(f"  bucket {name}", highlight=False)
        for name in (names.jobs_table, names.completions_table, names.reassembly_table, names.dedup_table):
            console.print(f"  table  {name}", highlight=False)
        for name in (names.queue, names.dead_letter_queue):
            console.print(f"  queue  {name}", highlight=False)
        if not typer.confirm("Delete them?", default=False, err=True):
            console.print("nothing deleted")
            raise typer.Exit(1)
    try:
        run_destroy(settings, prefix, on_change=_print_change)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)


@app.command("recover-chunking")
def recover_chunking_command(job_id: Annotated[str, typer.Argument(help="A job stuck in chunking_in_progress.")]
                             ) -> None:
    """Mark a job whose segments are all stored as chunked: total_segments from the segment keys, one update."""
    from stereo_spot.adapters import build_backend
    from stereo_spot.aws.ops import recover_chunking

    try:
        job = recover_chunking(build_backend(), job_id)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    out.print(f"job {job.job_id}: {job.status.value}, {job.total_segments} segments; finish it with "
              f"`stereo-spot resume {job.job_id}` or by replaying its event", highlight=False)


@app.command()
def queues() -> None:
    """Messages waiting and in flight on the events queue and its dead-letter queue."""
    from stereo_spot.aws.ops import queue_depths
    from stereo_spot.config import get_settings

    try:
        depths = queue_depths(get_settings())
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    table = Table("queue", "visible", "in flight", "url")
    for label, info in depths.items():
        table.add_row(label, str(info["visible"]), str(info["in flight"]), info["url"])
    out.print(table)


def _print_letters(letters) -> None:
    """One plain line per dead letter: easy to read and to grep in a terminal of any width."""
    for letter in letters:
        sent = (datetime.fromtimestamp(letter.sent_at_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                if letter.sent_at_ms else "-")
        parts = [letter.message_id, f"receives={letter.receive_count}", f"sent={sent}"]
        if letter.job_id:
            parts.append(f"job={letter.job_id} ({letter.job_status or 'no such job'})")
        if letter.key:
            parts.append(f"key={letter.key}")
        if letter.problem:
            parts.append(f"problem: {letter.problem}")
        out.print("  ".join(parts), highlight=False, soft_wrap=True)


@dlq_app.command("show")
def dlq_show(limit: Annotated[int, typer.Option(min=1, max=1000)] = 10) -> None:
    """List dead letters with their job and its status (they stay in the queue)."""
    from stereo_spot.adapters import build_backend
    from stereo_spot.aws.ops import peek_dead_letters
    from stereo_spot.config import get_settings

    try:
        letters = peek_dead_letters(get_settings(), build_backend(), limit)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    if not letters:
        out.print("the dead-letter queue is empty")
    _print_letters(letters)


@dlq_app.command("replay")
def dlq_replay(limit: Annotated[int | None, typer.Option(min=1, help="At most this many (default: all).")]
               = None,
               yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False
               ) -> None:
    """Send dead letters back to the events queue (their uploads start a run again); unusable ones are dropped."""
    from stereo_spot.adapters import build_backend
    from stereo_spot.aws.ops import replay_dead_letters
    from stereo_spot.config import get_settings

    if not yes and not typer.confirm("Replay the dead-letter queue into the events queue?", default=False,
                                     err=True):
        raise typer.Exit(1)
    try:
        letters = replay_dead_letters(get_settings(), build_backend(), limit)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    if not letters:
        out.print("the dead-letter queue is empty")
    _print_letters(letters)
    replayed = sum(1 for letter in letters if letter.problem is None)
    out.print(f"replayed {replayed}, dropped {len(letters) - replayed}")


# --- the worker -----------------------------------------------------------------------------------------


def worker_command(
    workers: Annotated[int | None, typer.Option(min=1, help="Segments converted at once (default: CPU "
                                                "count).")] = None,
    device: Annotated[str | None, typer.Option(help="Torch device for conversion, e.g. cuda or cpu "
                                               "(default: cuda when available).")] = None,
    visibility_timeout: Annotated[int, typer.Option(min=30, max=43200, help="Seconds a message stays hidden "
                                                    "between heartbeats' extensions.")] = 300,
    grace: Annotated[int, typer.Option(min=0, help="After SIGTERM/SIGINT: seconds to let the current job "
                                       "finish before its message is released for another worker.")] = 60,
    max_messages: Annotated[int | None, typer.Option(min=1, help="Exit after this many messages.")] = None,
    wait_seconds: Annotated[int, typer.Option(min=0, max=20, help="Long-poll length; a shutdown waits for "
                                              "the poll in progress.")] = 20,
    metrics_port: Annotated[int, typer.Option(min=0, max=65535, envvar="STEREO_SPOT_METRICS_PORT",
                                              help="Serve Prometheus metrics on this port at /metrics (0: off).")]
    = 0,
) -> None:
    """Convert each upload announced on the SQS events queue, on this machine, against AWS storage.

    Reads S3 events from CHUNKING_QUEUE_URL one at a time and runs the job with the embedded runner. Stops
    cleanly on SIGTERM (spot reclaim) or Ctrl-C: the current job gets --grace seconds, then its message is
    released for another worker.
    """
    from stereo_spot.adapters.aws import aws_backend, events_queue
    from stereo_spot.cluster.worker import run_worker
    from stereo_spot.config import get_settings
    from stereo_spot.logs import configure_logging

    configure_logging()  # one JSON line per event (text at a terminal), with the job id
    metrics = None
    try:
        settings = get_settings()
        backend = aws_backend(settings)
        receiver = events_queue(settings)
        if metrics_port:
            from stereo_spot.errors import require_extra

            require_extra("prometheus_client", "metrics", "serving metrics (--metrics-port)")
            from stereo_spot.cluster.metrics import WorkerMetrics, serve

            metrics = WorkerMetrics()
            serve(metrics, metrics_port)
            console.print(f"metrics on http://0.0.0.0:{metrics_port}/metrics", highlight=False)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    stop, abort = threading.Event(), threading.Event()
    install_signal_handlers(stop, abort, grace)
    stats = run_worker(backend, receiver, stop_event=stop, abort_event=abort, max_messages=max_messages,
                       workers=workers, device=device, visibility_timeout=visibility_timeout,
                       wait_seconds=wait_seconds, metrics=metrics)
    summary = ", ".join(f"{o.value} {stats.count(o)}" for o in sorted({h.outcome for h in stats.handled}))
    console.print(f"worker stopped: {len(stats.handled)} message(s){': ' + summary if summary else ''}",
                  highlight=False)


def install_signal_handlers(stop: threading.Event, abort: threading.Event, grace: float) -> None:
    """First SIGTERM/SIGINT: take no new messages and give the current job ``grace`` seconds; then (or at a
    second signal) give the job up at its next progress report and release its message."""
    log = logging.getLogger("stereo_spot.cluster.worker")

    def on_signal(signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("%s again: releasing the current job now", name)
            abort.set()
            return
        log.info("%s: taking no new messages; the current job has %.0f s to finish", name, grace)
        stop.set()
        timer = threading.Timer(grace, abort.set)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
