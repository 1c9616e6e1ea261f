"""The pipeline on Kubeflow Pipelines v2, built with kfp: the same steps and the same shape as the Argo one.

    ExitHandler(fail) { chunk ──ParallelFor(parallelism)──▶ convert × shards (GPU, retried) ──Collected──▶ concat }

chunk's output is one index per GPU worker (at most ``gpu_workers``); each convert task converts a contiguous
shard of segments with its models loaded once.

Every step is a container component that runs the image's own entry point, ``stereo-spot step <name>``
(components/cli.py), and hands its result on through an ``OutputPath`` file: the step images need no kfp, and
the compiled spec installs nothing. kfp compiles to its own pipeline spec (not an Argo Workflow), so the Sensor
reaches Kubeflow through the KFP API (manifests/overlays/aws-kubeflow) and ``stereo-spot submit --engine kfp``
through ``kfp.Client``.
"""

# No `from __future__ import annotations` here: kfp reads the pipeline function's annotations as types.

from stereo_spot.pipelines.config import (
    CREDENTIAL_KEYS,
    CREDENTIALS_SECRET,
    DO_NOT_DISRUPT,
    ENV_CONFIG_MAP,
    ENV_KEYS,
    GPU_POOL_LABEL,
    GPU_RESOURCE,
    MODEL_CACHE_ENV,
    MODEL_CACHE_HOST_PATH,
    PIPELINE_NAME,
    PipelineConfig,
    Resources,
)

DESCRIPTION = "2D video to stereoscopic 3D: chunk, convert segments in parallel on GPUs, concat with the audio."

# Caching, decided per step. KFP reuses a cached task when its component and inputs are the same, without running
# it. None of ours may be skipped that way: their inputs name the job's S3 objects and records, not their
# content, so equal inputs do not mean equal work, and each step's effect is on the stores, not in its outputs.
#   chunk    no: the same bucket/key is read again after a job was deleted and its key uploaded anew, and chunk
#            creates the job's record and segments, which a cache hit would leave missing;
#   convert  no: a cached shard would skip converting segments a previous run lost (a deleted job, a collected
#            segment); the step already skips, from the completion records, the segments really done;
#   concat   no: the final video must be joined from this run's segments, and its lock and status change are
#            the point of the step;
#   fail     no: the exit task records this run's outcome.
# Reuse that is safe happens inside the steps instead: completion records, conditional status changes.
CACHING = {"chunk": False, "convert": False, "concat": False, "fail": False}


def _place(task, step: str, resources: Resources, display_name: str, config: PipelineConfig, retries: int):
    from kfp import kubernetes

    task.set_display_name(display_name)
    # kfp retries every failure (it has no exit-code condition): a transient one succeeds on a retry, a bad
    # input fails again quickly with the same recorded reason.
    # The retry window is the run's deadline. kfp always writes a backoffMaxDuration (3600s when none is given:
    # kfp/dsl/structures.py, RetryPolicy.to_proto), the backend hands it to Argo's retryStrategy.backoff.maxDuration
    # (backend/src/v2/compiler/argocompiler/container.go, getTaskRetryParametersWithValues), and Argo counts that
    # from the first attempt's start (workflow/controller/operator.go, processNodeRetries): a shorter window would
    # leave a convert shard reclaimed hours in without a retry.
    task.set_retry(num_retries=retries, backoff_duration=f"{config.retry_backoff_seconds}s", backoff_factor=2,
                   backoff_max_duration=f"{config.workflow_deadline_seconds}s")
    task.set_caching_options(CACHING[step])
    task.set_cpu_request(resources.cpu).set_memory_request(resources.memory).set_memory_limit(resources.memory)
    kubernetes.use_config_map_as_env(task, ENV_CONFIG_MAP, {key: key for key in ENV_KEYS})
    # static keys only where the cluster has no IRSA; without the Secret the pod starts all the same
    kubernetes.use_secret_as_env(task, CREDENTIALS_SECRET, {key: key for key in CREDENTIAL_KEYS}, optional=True)
    return task


def build_pipeline(config: PipelineConfig | None = None):
    """The pipeline function (a kfp GraphComponent) for ``config``'s images and limits."""
    from kfp import dsl, kubernetes

    from stereo_spot.components import chunk, concat, convert, fail
    from stereo_spot.components.chunk import SHARDS_OUTPUT

    config = config or PipelineConfig()
    cpu_image, gpu_image = config.image("cpu"), config.image("gpu")
    chunk_op, convert_op = chunk.kfp_component(cpu_image), convert.kfp_component(gpu_image)
    concat_op, fail_op = concat.kfp_component(cpu_image), fail.kfp_component(cpu_image)

    @dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)
    def stereo_spot(bucket: str, key: str, format: str = "", divergence: str = "", convergence: str = "",
                    baseline_mm: str = "", hfov: str = "", gpu_workers: int = config.gpu_workers,
                    depth_video: str = ""):
        marked = _place(fail_op(key=key), "fail", config.exit_step, "mark failed", config, config.step_retries)
        with dsl.ExitHandler(marked, name="convert-video"):
            chunked = _place(chunk_op(bucket=bucket, key=key, output_format=format, divergence=divergence,
                                      convergence=convergence, baseline_mm=baseline_mm, hfov=hfov,
                                      gpu_workers=gpu_workers, depth_video=depth_video), "chunk", config.cpu_step,
                             "chunk", config, config.step_retries)
            with dsl.ParallelFor(chunked.outputs[SHARDS_OUTPUT], parallelism=config.parallelism) as shard_index:
                # spot reclaims and other lost pods: more retries; each one resumes the shard
                converted = _place(convert_op(key=key, shard_index=shard_index, gpu_workers=gpu_workers), "convert",
                                   config.gpu_step, "convert", config, config.convert_retries)
                converted.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
                if config.kfp_model_cache_pvc:
                    kubernetes.mount_pvc(converted, pvc_name=config.kfp_model_cache_pvc,
                                         mount_path=MODEL_CACHE_HOST_PATH)
                    converted.set_env_variable(MODEL_CACHE_ENV, MODEL_CACHE_HOST_PATH)
                kubernetes.add_node_selector(converted, *GPU_POOL_LABEL)
                kubernetes.add_pod_annotation(converted, *DO_NOT_DISRUPT)  # keep the shard's node while it runs
                kubernetes.add_toleration(converted, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
            _place(concat_op(key=key, converted=dsl.Collected(converted.outputs["segments"])), "concat",
                   config.cpu_step, "concat", config, config.step_retries)

    return stereo_spot


def compile_pipeline(path, config: PipelineConfig | None = None) -> None:
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(config), str(path))
