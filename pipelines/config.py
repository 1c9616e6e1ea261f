"""Where and how the pipeline's pods run: images, the GPU pool, limits. One place for both engines, so the Argo
WorkflowTemplate and the Kubeflow pipeline make the same choices. The defaults are what ``manifests/generated/``
is compiled with; a deployment changes images with kustomize (Argo) or ``stereo-spot compile --registry/--tag``
(Kubeflow, whose pipeline spec carries its images)."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

DEFAULT_REGISTRY = "ghcr.io/stereo-spot"
IMAGE_NAMES = ("cpu", "gpu", "ui")  # each is images/<name>/Dockerfile, pushed as <registry>/stereo-spot-<name>

# The version of the pipeline's contract: the WorkflowTemplate's parameters, the steps' inputs and outputs. Bump it
# when a parameter is renamed or removed, or a step's interface changes, so that a Sensor or `stereo-spot submit`
# of one contract never starts a template of another (both name the template through `template_name`).
PIPELINE_SCHEMA = "v1"
TEMPLATE_BASE_NAME = "stereo-spot"
SCHEMA_LABEL = "stereo-spot.io/pipeline-schema"
PIPELINE_NAME = "stereo-spot"  # the Kubeflow pipeline
ENV_CONFIG_MAP = "stereo-spot-env"  # the environment contract (manifests/base/configmap.yaml)
CREDENTIALS_SECRET = "stereo-spot-credentials"  # optional: static keys where the cluster has no IRSA
# The app's base URL (e.g. https://stereo-spot.example.com), a key of the environment ConfigMap: the Argo run links
# to the job's page there. Argo reads a workflow parameter from a ConfigMap only when the ConfigMap carries this
# label (workflow/controller/controller.go newTypedConfigMapInformer selects on the key; workflow/common/common.go
# LabelValueTypeConfigMapParameter is the value).
APP_URL_KEY = "APP_URL"
PARAMETER_CONFIG_MAP_LABEL = ("workflows.argoproj.io/configmap-type", "Parameter")
# The app's job page, relative to its base URL: the Streamlit page registered with url_path "job"
# (ui/streamlit_app.py) reads the job id from the query parameter "job" (ui/pages/job.py).
APP_JOB_PAGE = "job?job={job_id}"
WORKFLOW_SERVICE_ACCOUNT = "stereo-spot-workflow"
GPU_POOL_LABEL = ("stereo-spot.io/pool", "gpu")  # set on GPU nodes by the Karpenter NodePool
GPU_RESOURCE = "nvidia.com/gpu"
# Karpenter labels every node with its GPU's memory (MiB): convert pods ask for more than the job's model needs.
GPU_MEMORY_LABEL = "karpenter.k8s.aws/instance-gpu-memory"
# Karpenter does not consolidate, drift or expire a node while such a pod runs (a spot reclaim still can).
DO_NOT_DISRUPT = ("karpenter.sh/do-not-disrupt", "true")
# Weights fetched from s3:// are cached per node in this host folder (the GPU EC2NodeClass creates it owned by
# the pods' user), so the convert pods on one node download them once (stereo_spot/weights.py locks it).
MODEL_CACHE_HOST_PATH = "/var/cache/stereo-spot/models"
MODEL_CACHE_VOLUME = "model-cache"
MODEL_CACHE_ENV = "STEREO_SPOT_MODEL_CACHE"

# The environment contract the steps read (stereo_spot/config.py). Argo pods take the whole ConfigMap (envFrom);
# a Kubeflow task names each key, so the ConfigMap must hold every one of these (a test checks it).
ENV_KEYS = (
    "STORAGE_ADAPTER",
    "AWS_REGION",
    "INPUT_BUCKET_NAME",
    "OUTPUT_BUCKET_NAME",
    "JOBS_TABLE_NAME",
    "SEGMENT_COMPLETIONS_TABLE_NAME",
    "REASSEMBLY_TRIGGERED_TABLE_NAME",
    "EVENT_DEDUP_TABLE_NAME",
)
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def template_name(schema: str = PIPELINE_SCHEMA) -> str:
    """The WorkflowTemplate's name for a contract version, e.g. ``stereo-spot-v1``: what the compiled template is
    called, what ``stereo-spot submit`` references, and what the Sensor gets (a kustomize replacement copies the
    compiled template's name into it, manifests/base/kustomization.yaml)."""
    return f"{TEMPLATE_BASE_NAME}-{schema}"


def project_version() -> str:
    try:
        return version("stereo-spot")
    except PackageNotFoundError:  # pragma: no cover - the project is installed wherever this runs
        return "0.0.0"


@dataclass(frozen=True)
class Resources:
    cpu: str
    memory: str
    ephemeral_storage: str


@dataclass(frozen=True)
class PipelineConfig:
    registry: str = DEFAULT_REGISTRY
    tag: str = field(default_factory=project_version)
    # convert pods at once: at most the GPU NodePool's node limit, so queued pods wait instead of failing
    parallelism: int = 8
    # Kubeflow only: a PersistentVolumeClaim (ReadWriteMany, e.g. EFS) for the weight cache. kfp-kubernetes has no
    # hostPath volume; without a claim each convert pod keeps its own copy (still once per GPU worker).
    kfp_model_cache_pvc: str | None = None
    # the default of the `min-gpu-memory-mib` parameter: more than this much GPU memory. 0 takes any GPU of the pool
    # (the heuristic and Depth Anything fit a 16 GB T4); diffusion inpainting needs 24 GB: 20000 skips the T4s.
    min_gpu_memory_mib: int = 0
    # the default of the `gpu-workers` parameter: the most convert pods (shards) one job fans out to
    gpu_workers: int = 8
    convert_retries: int = 4  # spot reclaims and other lost pods; a bad input fails at once (exit code 2)
    step_retries: int = 2  # chunk, concat and the exit handler: a store that timed out, an OOM kill, a lost node
    retry_backoff_seconds: int = 30
    # Retries stop at the retry limit or at the run's deadline, never at a window of their own: both engines
    # count a backoff's max duration from the first attempt's start (pipelines/argo.py `_retry`,
    # pipelines/kfp.py `_place`), and a shard reclaimed hours in must still be retried.
    workflow_deadline_seconds: int = 12 * 3600
    # A convert pod works through a whole shard, whose length depends on the film: no per-pod deadline below
    # the workflow's. A pod that dies or is stopped loses only its current segment (its retry skips the rest).
    ttl_after_success_seconds: int = 24 * 3600
    ttl_after_failure_seconds: int = 7 * 24 * 3600
    # chunk and concat hold the whole source (and the segments) on local disk
    cpu_step: Resources = Resources(cpu="1", memory="2Gi", ephemeral_storage="40Gi")
    gpu_step: Resources = Resources(cpu="4", memory="16Gi", ephemeral_storage="10Gi")
    exit_step: Resources = Resources(cpu="100m", memory="256Mi", ephemeral_storage="100Mi")

    def image(self, name: str) -> str:
        if name not in IMAGE_NAMES:
            raise ValueError(f"unknown image {name!r}: expected one of {', '.join(IMAGE_NAMES)}")
        return f"{self.registry.rstrip('/')}/stereo-spot-{name}:{self.tag}"
