"""The pipeline on Argo Workflows: the ``stereo-spot`` WorkflowTemplate, built with Hera.

    chunk ──withParam──▶ convert × N (GPU, retried on spot loss) ──▶ concat        onExit: fail (if not Succeeded)

The Sensor (manifests/base/sensor-argo.yaml) and ``stereo-spot submit --engine argo`` start it with ``bucket``
and ``key``; ``format``, ``divergence``, ``convergence``, ``baseline-mm`` and ``hfov`` (spatial video's camera)
override the job's settings when given. Its name carries
the contract's version (``template_name()``, e.g. ``stereo-spot-v1``).

What every step shares (Hera's runner constructor, the CPU image, resources, the environment contract, the
security context, retries) is set once (``step_defaults``) and handed to each component's ``argo_template``; a
template states only where it differs (convert: the GPU image and its resources, more retries; the exit handler:
smaller resources).

Logs: no template says ``archiveLocation``. Argo decides per pod with "controller(on) > template > workflow >
controller(off)" (workflow/controller/operator.go, ``IsArchiveLogs``): a repository with ``archiveLogs: true``
archives every pod whatever the template says, while a template's ``archiveLogs: true`` without a repository makes
the controller hand the pod an archive location with nothing in it (workflowpod.go, ``addArchiveLocation``) and
the wait container's log upload fails the node. So the base runs on a stock Argo install, and the overlay that
brings a repository (manifests/overlays/aws/artifact-repositories.yaml) turns archiving on for every pod of the
namespace, the reconcile CronWorkflow's included.
"""

from __future__ import annotations

from typing import Any

from stereo_spot.pipelines.config import (
    APP_JOB_PAGE,
    APP_URL_KEY,
    CREDENTIALS_SECRET,
    DO_NOT_DISRUPT,
    ENV_CONFIG_MAP,
    GPU_MEMORY_LABEL,
    GPU_POOL_LABEL,
    GPU_RESOURCE,
    MODEL_CACHE_ENV,
    MODEL_CACHE_HOST_PATH,
    MODEL_CACHE_VOLUME,
    PIPELINE_SCHEMA,
    SCHEMA_LABEL,
    WORKFLOW_SERVICE_ACCOUNT,
    PipelineConfig,
    Resources,
    project_version,
    template_name,
)

# The job id (a UUID, no '/') taken from the key, as an Argo expression. The mutex is keyed by it (an expression
# tag): two runs of one job (a duplicate S3 event, a manual resubmit) never overlap, while different jobs run side
# by side.
_JOB_ID = "sprig.regexFind('[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', workflow.parameters.key)"
JOB_ID_EXPRESSION = "{{=" + _JOB_ID + "}}"
OPTIONAL_PARAMETERS = ("format", "divergence", "convergence", "baseline-mm", "hfov", "depth-video")
# What the Argo UI shows of a run. The controller substitutes the workflow's parameters (and evaluates `{{=...}}`)
# in spec.workflowMetadata before it copies its annotations onto the Workflow (workflow/controller/operator.go:
# setGlobalParameters, substituteGlobalVariables, then updateWorkflowMetadata). The UI lists a run under its
# `workflows.argoproj.io/title` and `/description` annotations, Markdown from 3.6 on (docs/title-and-description.md),
# and a `links` entry of the controller's ConfigMap may point at `${workflow.metadata.annotations.<key>}`, a key
# with dots included (ui/src/shared/components/links.tsx, splitWithMetadataKnowledge): JOB_URL_ANNOTATION.
TITLE_ANNOTATION = "workflows.argoproj.io/title"
DESCRIPTION_ANNOTATION = "workflows.argoproj.io/description"
JOB_URL_ANNOTATION = "stereo-spot.io/job-url"
_APP_URL = "workflow.parameters['app-url']"


def _job_page_expression() -> str:
    """The app's page of the run's job, as an Argo expression (APP_JOB_PAGE under the app-url parameter)."""
    prefix, suffix = APP_JOB_PAGE.split("{job_id}")
    return f"sprig.trimSuffix('/', {_APP_URL}) + '/{prefix}' + {_JOB_ID}" + (f" + '{suffix}'" if suffix else "")


def run_annotations() -> dict[str, str]:
    """The annotations every run gets: the job's title (the `title` parameter, else the job id), a description
    with a Markdown link to the job's page in the app (when the app's URL is set) or the source key, and the
    page's URL alone for the Argo UI's links."""
    page = _job_page_expression()
    return {
        TITLE_ANNOTATION: "{{=workflow.parameters.title != '' ? workflow.parameters.title : 'stereo-spot job ' + "
                          + _JOB_ID + "}}",
        DESCRIPTION_ANNOTATION: "{{=" + _APP_URL + " != '' ? '[Open the job in stereo-spot](' + " + page
                                + " + ')' : 'source: ' + workflow.parameters.key}}",
        JOB_URL_ANNOTATION: "{{=" + _APP_URL + " != '' ? " + page + " : ''}}",
    }


def _resources(spec: Resources, gpus: int | None = None):
    from hera.workflows import Resources as HeraResources

    return HeraResources(cpu_request=spec.cpu, memory_request=spec.memory, memory_limit=spec.memory,
                         ephemeral_request=spec.ephemeral_storage, gpus=gpus, gpu_flag=GPU_RESOURCE)


# Every step retries whatever went wrong except a user error (exit code 2: bad input, a job in the wrong state).
# `Always` and not `OnFailure`/`OnError`: in Argo a main container that exits non-zero (a store timing out, an OOM
# kill, a spot node's graceful shutdown) is a Failure, which `OnError` never retries, while a deleted pod or a lost
# node is an Error, which `OnFailure` never retries. The expression keeps bad input from being retried.
RETRY_EXPRESSION = "lastRetry.exitCode != '2'"


# Buckets for a step's duration: seconds for a clip's chunk, hours for a film's shard.
DURATION_BUCKETS = [10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0]


def _step_metrics(step: str, *, counts_segments: bool = False) -> list:
    """Prometheus metrics the controller emits when a node of ``step`` ends (Argo's custom metrics): its
    duration by outcome, failures by phase and exit code (2: the user's input, anything else: retried), and for
    convert the segments its shard holds, all done (the component's result)."""
    from hera.workflows import Counter, Histogram, Label

    metrics = [
        Histogram(name="stereo_spot_step_duration_seconds", help="Duration of a stereo-spot pipeline step",
                  labels=[Label(key="step", value=step), Label(key="status", value="{{status}}")],
                  buckets=DURATION_BUCKETS, value="{{duration}}"),
        Counter(name="stereo_spot_step_failures_total",
                help="Failed stereo-spot pipeline steps by phase and exit code (2: bad input, not retried)",
                labels=[Label(key="step", value=step), Label(key="status", value="{{status}}"),
                        Label(key="exit_code", value="{{exitCode}}")],
                when="{{status}} != Succeeded", value="1"),
    ]
    if counts_segments:
        metrics.append(Counter(name="stereo_spot_segments_converted_total",
                               help="Segments completed by stereo-spot convert pods",
                               when="{{status}} == Succeeded", value="{{outputs.result}}"))
    return metrics


def _retry(config: PipelineConfig, limit: int):
    """No ``backoff.maxDuration``: Argo counts it from the first attempt's start and gives up once it is past
    (workflow/controller/operator.go, ``processNodeRetries``: ``maxDurationDeadline =
    firstChildNode.StartedAt.Add(maxDuration)``, "Max duration limit exceeded"), so a convert shard reclaimed
    hours in would never be retried. The retry limit and the workflow's ``activeDeadlineSeconds`` bound retries
    instead (the same function stops retrying past the workflow deadline)."""
    from hera.workflows import RetryStrategy
    from hera.workflows.models import Backoff

    return RetryStrategy(limit=limit, retry_policy="Always", expression=RETRY_EXPRESSION,
                         backoff=Backoff(duration=f"{config.retry_backoff_seconds}s", factor=2))


def step_defaults(config: PipelineConfig) -> dict[str, Any]:
    """The choices every step template shares, as keyword arguments of Hera's ``Script``."""
    from hera.workflows import ConfigMapEnvFrom, SecretEnvFrom
    from hera.workflows.models import Capabilities, SecurityContext

    return {
        "constructor": "runner",  # `python -m hera.workflows.runner -e stereo_spot.components.<step>:<step>`, typed I/O
        "image": config.image("cpu"),
        "command": ["python"],
        "resources": _resources(config.cpu_step),
        # the environment contract, plus static keys only where a cluster has no IRSA (the Secret is optional)
        "env_from": [ConfigMapEnvFrom(name=ENV_CONFIG_MAP), SecretEnvFrom(name=CREDENTIALS_SECRET, optional=True)],
        "security_context": SecurityContext(allow_privilege_escalation=False, capabilities=Capabilities(drop=["ALL"])),
        "termination_message_policy": "FallbackToLogsOnError",
        "retry_strategy": _retry(config, config.step_retries),
    }


def step_options(config: PipelineConfig, **overrides: Any) -> dict[str, Any]:
    """A step's keyword arguments: ``step_defaults`` and what this step sets differently. Plain arguments, not
    Hera's process-wide class defaults (``global_config.set_class_defaults``, which has no public way to read or
    restore the previous ones): building a template for another registry, or another Hera user in the process,
    sees nothing of ours."""
    return {**step_defaults(config), **overrides}


def _gpu_memory_affinity(min_mib: str):
    from hera.workflows.models import (
        Affinity,
        NodeAffinity,
        NodeSelector,
        NodeSelectorRequirement,
        NodeSelectorTerm,
    )

    return Affinity(node_affinity=NodeAffinity(required_during_scheduling_ignored_during_execution=NodeSelector(
        node_selector_terms=[NodeSelectorTerm(match_expressions=[
            NodeSelectorRequirement(key=GPU_MEMORY_LABEL, operator="Gt", values=[min_mib])])])))


def build_workflow_template(config: PipelineConfig | None = None):
    """The WorkflowTemplate as a Hera object (``.to_dict()`` / ``.to_yaml()`` for the manifest)."""
    from hera.workflows import DAG, Env, HostPathVolume, Parameter, WorkflowTemplate
    from hera.workflows.models import (
        ConfigMapKeySelector,
        Metadata,
        Mutex,
        PodGC,
        PodSecurityContext,
        SeccompProfile,
        Synchronization,
        Toleration,
        TTLStrategy,
        ValueFrom,
        WorkflowMetadata,
    )

    from stereo_spot.components import chunk, concat, convert, fail
    from stereo_spot.models import OutputFormat

    config = config or PipelineConfig()
    arguments = [Parameter(name="bucket", description="bucket of the uploaded source"),
                 Parameter(name="key", description="input/<job id>/source.mp4 (URL-encoded as in S3 events, or not)"),
                 Parameter(name="format", value="", description=f"{', '.join(OutputFormat)}; empty: the job's"),
                 Parameter(name="divergence", value="", description="max disparity, % of the width; empty: the job's"),
                 Parameter(name="convergence", value="", description="depth on the screen, 0..1; empty: the job's"),
                 Parameter(name="baseline-mm", value="", description="format spatial: the camera baseline its vexu "
                                                                     "box declares, mm; empty: the job's"),
                 Parameter(name="hfov", value="", description="format spatial: the horizontal field of view its "
                                                              "hfov box declares, degrees; empty: the job's"),
                 Parameter(name="depth-video", value="", description="render from this depth video: "
                           "input/<job id>/depth.mkv in the source's bucket (key or s3:// URI), uploaded before the "
                           "source; empty: estimate the depth"),
                 Parameter(name="gpu-workers", value=str(config.gpu_workers),
                           description="most convert pods (GPU workers) for this job; each converts a shard of "
                                       "contiguous segments"),
                 Parameter(name="min-gpu-memory-mib", value=str(config.min_gpu_memory_mib),
                           description="convert only on GPUs with more memory than this (MiB): 20000 for "
                                       "diffusion inpainting, 0 for any"),
                 Parameter(name="title", value="", description="the job's title, shown as the run's title in "
                                                               "the Argo UI; empty: the job id"),
                 # the app's base URL, from the environment ConfigMap (labelled for Argo: PARAMETER_CONFIG_MAP_LABEL);
                 # empty when the ConfigMap has no such key
                 Parameter(name="app-url", value_from=ValueFrom(
                     config_map_key_ref=ConfigMapKeySelector(name=ENV_CONFIG_MAP, key=APP_URL_KEY), default=""),
                     description="the app's base URL, for the link to the job's page; empty: no link")]
    with WorkflowTemplate(
        name=template_name(),
        labels={"app.kubernetes.io/name": "stereo-spot", "app.kubernetes.io/component": "pipeline",
                "app.kubernetes.io/version": project_version(), SCHEMA_LABEL: PIPELINE_SCHEMA},
        entrypoint="main",
        on_exit="exit-handler",
        arguments=arguments,
        service_account_name=WORKFLOW_SERVICE_ACCOUNT,
        synchronization=Synchronization(mutexes=[Mutex(name=f"stereo-spot-{JOB_ID_EXPRESSION}")]),
        active_deadline_seconds=config.workflow_deadline_seconds,
        pod_gc=PodGC(strategy="OnPodSuccess"),  # failed pods stay for their logs until the TTL removes the run
        ttl_strategy=TTLStrategy(seconds_after_success=config.ttl_after_success_seconds,
                                 seconds_after_failure=config.ttl_after_failure_seconds),
        security_context=PodSecurityContext(run_as_non_root=True, run_as_user=1000, run_as_group=1000,
                                            fs_group=1000, seccomp_profile=SeccompProfile(type="RuntimeDefault")),
        pod_metadata=Metadata(labels={"app.kubernetes.io/name": "stereo-spot"}),
        workflow_metadata=WorkflowMetadata(annotations=run_annotations()),
    ) as template:
        chunk_step = chunk.argo_template(**step_options(config, metrics=_step_metrics("chunk")))
        convert_step = convert.argo_template(**step_options(
            config,
            image=config.image("gpu"),
            resources=_resources(config.gpu_step, gpus=1),
            node_selector=dict([GPU_POOL_LABEL]),
            affinity=_gpu_memory_affinity("{{workflow.parameters.min-gpu-memory-mib}}"),
            annotations=dict([DO_NOT_DISRUPT]),  # a consolidation would throw away a shard's work in progress
            # one copy of the weights per node, shared by its convert pods (a file lock orders the download)
            volumes=[HostPathVolume(name=MODEL_CACHE_VOLUME, path=MODEL_CACHE_HOST_PATH, type="DirectoryOrCreate",
                                    mount_path=MODEL_CACHE_HOST_PATH)],
            env=[Env(name=MODEL_CACHE_ENV, value=MODEL_CACHE_HOST_PATH)],
            tolerations=[Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")],
            # spot reclaims kill pods at any moment: more retries; each one resumes the shard
            retry_strategy=_retry(config, config.convert_retries),
            metrics=_step_metrics("convert", counts_segments=True),
        ))
        concat_step = concat.argo_template(**step_options(config, metrics=_step_metrics("concat")))
        fail_step = fail.argo_template(**step_options(config, resources=_resources(config.exit_step),
                                                      metrics=_step_metrics("exit-handler")))
        key = "{{workflow.parameters.key}}"
        with DAG(name="main", parallelism=config.parallelism):
            chunked = chunk_step(name="chunk", arguments={
                "bucket": "{{workflow.parameters.bucket}}", "key": key,
                "output_format": "{{workflow.parameters.format}}",
                "divergence": "{{workflow.parameters.divergence}}",
                "convergence": "{{workflow.parameters.convergence}}",
                "baseline_mm": "{{workflow.parameters.baseline-mm}}",
                "hfov": "{{workflow.parameters.hfov}}",
                "gpu_workers": "{{workflow.parameters.gpu-workers}}",
                "depth_video": "{{workflow.parameters.depth-video}}"})
            converted = convert_step(name="convert", with_param=chunked.get_parameter("shards"), arguments={
                "key": key, "shard_index": "{{item}}", "gpu_workers": "{{workflow.parameters.gpu-workers}}"})
            assembled = concat_step(name="concat", arguments={"key": key})
            chunked >> converted >> assembled
        with DAG(name="exit-handler"):
            fail_step(name="mark-failed", when="{{workflow.status}} != Succeeded", arguments={
                "key": key, "status": "{{workflow.status}}", "failures": "{{workflow.failures}}",
                "workflow_name": "{{workflow.name}}"})
    return template


def workflow_template_dict(config: PipelineConfig | None = None) -> dict:
    return build_workflow_template(config).to_dict()
