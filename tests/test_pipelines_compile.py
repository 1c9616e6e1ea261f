"""The compiled pipelines: golden files, and the properties the cluster relies on (read from the YAML that is
deployed, not from the Python that builds it)."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stereo_spot.cli.main import app
from stereo_spot.pipelines.compile import (
    GENERATED_FILES,
    KFP_PIPELINE_FILE,
    WORKFLOW_TEMPLATE_FILE,
    compile_all,
    render_all,
)
from stereo_spot.pipelines.config import (
    ENV_KEYS,
    GPU_POOL_LABEL,
    PIPELINE_SCHEMA,
    SCHEMA_LABEL,
    PipelineConfig,
    template_name,
)

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "manifests" / "generated"


@pytest.fixture(scope="module")
def workflow_template() -> dict:
    return yaml.safe_load((GENERATED / WORKFLOW_TEMPLATE_FILE).read_text())


@pytest.fixture(scope="module")
def kfp_docs() -> list[dict]:
    return list(yaml.safe_load_all((GENERATED / KFP_PIPELINE_FILE).read_text()))


def test_generated_files_match_a_fresh_compile():
    fresh = render_all()
    for name in GENERATED_FILES:
        committed = (GENERATED / name).read_text()
        assert committed == fresh[name], f"manifests/generated/{name} is stale: run `stereo-spot compile`"


def test_compile_command_writes_and_checks(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["compile", "--out", str(tmp_path), "--registry", "example.com/team", "--tag", "9"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / WORKFLOW_TEMPLATE_FILE).read_text()
    assert "image: example.com/team/stereo-spot-gpu:9" in text
    assert "example.com/team/stereo-spot-cpu:9" in (tmp_path / KFP_PIPELINE_FILE).read_text()
    assert runner.invoke(app, ["compile", "--out", str(tmp_path), "--registry", "example.com/team", "--tag", "9",
                               "--check"]).exit_code == 0
    (tmp_path / KFP_PIPELINE_FILE).write_text("stale")
    stale = runner.invoke(app, ["compile", "--out", str(tmp_path), "--registry", "example.com/team", "--tag", "9",
                                "--check"])
    assert stale.exit_code == 1 and "out of date" in stale.output
    assert (tmp_path / KFP_PIPELINE_FILE).read_text() == "stale"  # --check writes nothing
    assert [r.changed for r in compile_all(tmp_path, PipelineConfig(registry="example.com/team", tag="9"))] == \
        [False, True]


def test_kubeflow_convert_tasks_can_share_a_weight_cache_claim(tmp_path):
    result = CliRunner().invoke(app, ["compile", "--out", str(tmp_path), "--kfp-model-cache-pvc", "models-efs"])
    assert result.exit_code == 0, result.output
    spec, platform = yaml.safe_load_all((tmp_path / KFP_PIPELINE_FILE).read_text())
    convert = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-convert"]
    assert convert["pvcMount"] == [{"constant": "models-efs", "mountPath": "/var/cache/stereo-spot/models",
                                    "pvcNameParameter": {"runtimeValue": {"constant": "models-efs"}}}]
    env = spec["deploymentSpec"]["executors"]["exec-convert"]["container"]["env"]
    assert {"name": "STEREO_SPOT_MODEL_CACHE", "value": "/var/cache/stereo-spot/models"} in env


def _templates(wt: dict) -> dict[str, dict]:
    return {t["name"]: t for t in wt["spec"]["templates"]}


def test_workflow_template_contract(workflow_template):
    spec = workflow_template["spec"]
    assert workflow_template["metadata"]["name"] == template_name()
    params = {p["name"]: p for p in spec["arguments"]["parameters"]}
    assert set(params) == {"bucket", "key", "format", "divergence", "convergence", "baseline-mm", "hfov",
                           "gpu-workers", "min-gpu-memory-mib", "title", "app-url", "depth-video"}
    assert params["min-gpu-memory-mib"]["value"] == "0"  # any GPU of the pool unless a run needs more
    assert "value" not in params["bucket"] and "value" not in params["key"]  # required
    assert params["gpu-workers"]["value"] == str(PipelineConfig().gpu_workers)
    assert all(params[p]["value"] == "" for p in ("format", "divergence", "convergence", "baseline-mm", "hfov"))
    assert spec["onExit"] == "exit-handler" and spec["serviceAccountName"] == "stereo-spot-workflow"
    assert spec["podGC"]["strategy"] and spec["ttlStrategy"]["secondsAfterSuccess"] > 0
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["securityContext"]["runAsNonRoot"] is True
    mutex = spec["synchronization"]["mutexes"][0]["name"]
    assert "workflow.parameters.key" in mutex and "regexFind" in mutex  # keyed by the job id in the key


def test_dag_fans_out_over_chunk_and_places_convert_on_gpus(workflow_template):
    templates = _templates(workflow_template)
    tasks = {t["name"]: t for t in templates["main"]["dag"]["tasks"]}
    assert templates["main"]["parallelism"] == PipelineConfig().parallelism
    assert tasks["convert"]["withParam"] == "{{tasks.chunk.outputs.parameters.shards}}"  # a named output
    # chunk plans the shards and every convert pod finds its shard from the same maximum
    gpu_workers = "{{workflow.parameters.gpu-workers}}"
    assert {p["name"]: p["value"] for p in tasks["chunk"]["arguments"]["parameters"]}["gpu_workers"] == gpu_workers
    assert {p["name"]: p["value"] for p in tasks["convert"]["arguments"]["parameters"]} == {
        "key": "{{workflow.parameters.key}}", "shard_index": "{{item}}", "gpu_workers": gpu_workers}
    assert tasks["convert"]["depends"] == "chunk" and tasks["concat"]["depends"] == "convert"
    convert = templates["convert"]
    assert convert["script"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert convert["nodeSelector"] == dict([GPU_POOL_LABEL])
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in convert["tolerations"]
    # Karpenter never consolidates a node under a running shard; the run chooses how much GPU memory it needs
    assert convert["metadata"]["annotations"] == {"karpenter.sh/do-not-disrupt": "true"}
    [term] = convert["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "karpenter.k8s.aws/instance-gpu-memory", "operator": "Gt",
                                         "values": ["{{workflow.parameters.min-gpu-memory-mib}}"]}]
    # the node-local weight cache: one host folder per node, named by the environment the weights code reads
    [volume] = convert["volumes"]
    assert volume["hostPath"] == {"path": "/var/cache/stereo-spot/models", "type": "DirectoryOrCreate"}
    assert convert["script"]["volumeMounts"] == [{"name": volume["name"], "mountPath": volume["hostPath"]["path"]}]
    assert {"name": "STEREO_SPOT_MODEL_CACHE", "value": volume["hostPath"]["path"]} in convert["script"]["env"]
    assert convert["retryStrategy"]["limit"] >= PipelineConfig().step_retries
    exit_task = templates["exit-handler"]["dag"]["tasks"][0]
    assert exit_task["template"] == "fail" and exit_task["when"] == "{{workflow.status}} != Succeeded"
    assert {p["name"]: p["value"] for p in exit_task["arguments"]["parameters"]}["failures"] == \
        "{{workflow.failures}}"


def _split_top(text: str, sep: str) -> list[str]:
    """Split an expression at `sep` outside quotes and parentheses."""
    parts, depth, quoted, start = [], 0, False, 0
    i = 0
    while i < len(text):
        c = text[i]
        if c == "'":
            quoted = not quoted
        elif not quoted and c in "([":
            depth += 1
        elif not quoted and c in ")]":
            depth -= 1
        elif not quoted and depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            start = i + len(sep)
            i += len(sep)
            continue
        i += 1
    return [*parts, text[start:]]


def _evaluate_argo_expression(tag: str, parameters: dict[str, str]) -> str:
    """Evaluate an Argo `{{=...}}` tag of the shapes the template uses (one `cond ? a : b`, `+`, `!=`, `==`,
    sprig.regexFind and sprig.trimSuffix, `workflow.parameters.x` and `workflow.parameters['x']`) as Argo's
    expr-lang would (github.com/expr-lang/expr: ternary, string concatenation; sprig's argument order)."""
    assert tag.startswith("{{=") and tag.endswith("}}"), tag
    expr = tag[3:-2]
    ternary = _split_top(expr, " ? ")
    if len(ternary) == 2:
        cond, branches = ternary
        yes, no = _split_top(branches, " : ")
        expr = f"(({yes}) if ({cond}) else ({no}))"
    namespace = {
        "workflow": type("W", (), {"parameters": type("P", (dict,), {"__getattr__": dict.__getitem__})(parameters)}),
        "sprig": type("S", (), {"regexFind": staticmethod(lambda rx, s: (re.search(rx, s) or [""])[0]),
                                "trimSuffix": staticmethod(lambda suffix, s: s.removesuffix(suffix))}),
    }
    return str(eval(expr, {"__builtins__": {}}, namespace))  # noqa: S307 - the template's own expressions


def test_the_argo_ui_shows_the_job_and_links_to_its_page(workflow_template):
    """The run's title is the job's title (or its id), its description a Markdown link to the job's page in the
    app, and `stereo-spot.io/job-url` that page alone, for a `links` entry of the Argo UI. The app's base URL
    comes from the environment ConfigMap's APP_URL (a workflow parameter valueFrom configMapKeyRef), and without
    it there is no link. Catches a wrong page path, a doubled slash, or a link without the app's URL."""
    from stereo_spot.pipelines.argo import DESCRIPTION_ANNOTATION, JOB_URL_ANNOTATION, TITLE_ANNOTATION
    from stereo_spot.pipelines.config import APP_URL_KEY, ENV_CONFIG_MAP

    spec = workflow_template["spec"]
    params = {p["name"]: p for p in spec["arguments"]["parameters"]}
    assert params["app-url"]["valueFrom"] == {"default": "", "configMapKeyRef": {"name": ENV_CONFIG_MAP,
                                                                                 "key": APP_URL_KEY}}
    assert params["title"]["value"] == ""
    annotations = spec["workflowMetadata"]["annotations"]
    job = "0b9f3c4e-6f1a-4c6e-9a51-2f7d8e3b1c55"

    def shown(**values):
        parameters = {"key": f"input/{job}/source.mp4", "title": "", "app-url": "", **values}
        return {name: _evaluate_argo_expression(annotations[name], parameters)
                for name in (TITLE_ANNOTATION, DESCRIPTION_ANNOTATION, JOB_URL_ANNOTATION)}

    page = f"https://stereo-spot.example.com/job?job={job}"
    assert shown(**{"app-url": "https://stereo-spot.example.com/", "title": "Holiday 2024"}) == {
        TITLE_ANNOTATION: "Holiday 2024", DESCRIPTION_ANNOTATION: f"[Open the job in stereo-spot]({page})",
        JOB_URL_ANNOTATION: page}
    assert shown(**{"app-url": "https://stereo-spot.example.com"})[JOB_URL_ANNOTATION] == page
    assert shown() == {TITLE_ANNOTATION: f"stereo-spot job {job}",
                       DESCRIPTION_ANNOTATION: f"source: input/{job}/source.mp4", JOB_URL_ANNOTATION: ""}


def test_the_job_page_is_the_apps():
    """APP_JOB_PAGE is the page the app registers: url_path "job" for pages/job.py, which reads the id from the
    query parameter "job". Catches either side renamed alone."""
    from stereo_spot.pipelines.config import APP_JOB_PAGE

    app = (ROOT / "ui" / "streamlit_app.py").read_text()
    page = (ROOT / "ui" / "pages" / "job.py").read_text()
    path, query = APP_JOB_PAGE.split("?")
    name, placeholder = query.split("=")
    assert placeholder == "{job_id}"
    assert re.search(rf'st\.Page\("pages/job\.py",[^)]*url_path="{path}"', app)
    assert f'st.query_params.get("{name}"' in page


def test_every_step_retries_everything_but_a_user_error(workflow_template):
    """`OnError` would not retry a main container that exits non-zero, `OnFailure` not a deleted pod: `Always`,
    and the expression keeps a bad input (exit code 2) from being retried. The exit handler too."""
    scripts = {t["name"]: t for t in workflow_template["spec"]["templates"] if "script" in t}
    assert set(scripts) == {"chunk", "convert", "concat", "fail"}
    for name, template in scripts.items():
        retry = template["retryStrategy"]
        assert retry["retryPolicy"] == "Always" and retry["limit"] >= 2, name
        assert retry["expression"] == "lastRetry.exitCode != '2'", name
        assert retry["backoff"]["factor"] == 2 and retry["backoff"]["duration"], name


def _duration_seconds(text: str) -> int:
    from kfp.dsl.structures import convert_duration_to_seconds

    return convert_duration_to_seconds(text)


def test_a_shard_reclaimed_hours_in_is_still_retried(workflow_template, kfp_docs):
    """Argo counts `backoff.maxDuration` from the first attempt's start and gives up once now is past it
    (workflow/controller/operator.go, processNodeRetries: `maxDurationDeadline =
    firstChildNode.StartedAt.Add(maxDuration)`, "Max duration limit exceeded"); kfp's `backoffMaxDuration` becomes
    that same field (backend/src/v2/compiler/argocompiler/container.go). A convert pod lost to a spot reclaim
    after hours of work must be retried, so no step's retry window may end before the run's deadline: no
    maxDuration on Argo (the workflow's activeDeadlineSeconds bounds it), and kfp's (always written, 3600s by
    default) at least the deadline. Catches the former 600s window on either engine."""
    deadline = PipelineConfig().workflow_deadline_seconds
    assert workflow_template["spec"]["activeDeadlineSeconds"] == deadline
    for template in workflow_template["spec"]["templates"]:
        if "retryStrategy" in template:
            assert "maxDuration" not in template["retryStrategy"].get("backoff", {}), template["name"]
    spec, _ = kfp_docs
    policies = {name: task["retryPolicy"] for name, task in _all_tasks(spec).items() if "retryPolicy" in task}
    assert set(policies) == {"chunk", "convert", "concat", "fail"}
    for name, policy in policies.items():
        assert _duration_seconds(policy["backoffMaxDuration"]) >= deadline, name
    hours_in = 3 * 3600  # a reclaim three hours into a film's shard
    assert _duration_seconds(policies["convert"]["backoffMaxDuration"]) > hours_in


def _archive_settings(document) -> list[str]:
    """Paths of every `archiveLocation` or `archiveLogs` in a manifest."""
    found = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("archiveLocation", "archiveLogs"):
                    found.append(f"{path}.{key}")
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(document, "")
    return found


def test_no_step_depends_on_an_artifact_repository(workflow_template):
    """On a stock Argo install there is no artifact repository. Argo archives a pod's log when the repository
    says so, or else when the template (or workflow) says so: "controller(on) > template > workflow >
    controller(off)" (workflow/controller/operator.go, IsArchiveLogs). A template's `archiveLogs: true` without a
    repository gets an empty archive location (workflowpod.go, addArchiveLocation) and the log upload errors
    the node. So the template names none: where a repository archives logs (the aws overlay's), every pod is
    archived anyway. Catches `archive_location` back in the step defaults."""
    assert _archive_settings(workflow_template) == []


def test_every_step_emits_metrics(workflow_template):
    """Each step reports its duration and failures (phase, exit code) to the controller's Prometheus endpoint;
    convert its segments."""
    scripts = {t["name"]: t for t in workflow_template["spec"]["templates"] if "script" in t}
    for name, template in scripts.items():
        metrics = {m["name"]: m for m in template["metrics"]["prometheus"]}
        duration = metrics["stereo_spot_step_duration_seconds"]
        assert duration["histogram"]["value"] == "{{duration}}"
        assert {"key": "status", "value": "{{status}}"} in duration["labels"]
        failures = metrics["stereo_spot_step_failures_total"]
        assert failures["when"] == "{{status}} != Succeeded" and failures["counter"]["value"] == "1"
        assert {"key": "exit_code", "value": "{{exitCode}}"} in failures["labels"]
        assert ("stereo_spot_segments_converted_total" in metrics) is (name == "convert")
        helps = {m["name"]: m["help"] for m in template["metrics"]["prometheus"]}
        first = {m["name"]: m["help"] for m in scripts["chunk"]["metrics"]["prometheus"]}
        assert all(first[k] == v for k, v in helps.items() if k in first)  # one help text per metric name
    converted = {m["name"]: m for m in scripts["convert"]["metrics"]["prometheus"]}
    assert converted["stereo_spot_segments_converted_total"]["counter"]["value"] == "{{outputs.result}}"


def test_every_step_runs_the_hera_runner_with_requests(workflow_template):
    scripts = [t for t in workflow_template["spec"]["templates"] if "script" in t]
    assert {t["name"] for t in scripts} == {"chunk", "convert", "concat", "fail"}
    for template in scripts:
        script = template["script"]
        assert script["command"] == ["python"]
        assert script["args"][:4] == ["-m", "hera.workflows.runner", "-e", f"stereo_spot.components.{template['name']}:"
                                      f"{template['name']}"]
        assert script["source"] == "{{inputs.parameters}}"
        requests = script["resources"]["requests"]
        assert requests["cpu"] and requests["memory"], template["name"]
        assert script["envFrom"][0] == {"configMapRef": {"name": "stereo-spot-env"}}


def test_kfp_pipeline_installs_nothing_and_caches_nothing(kfp_docs):
    spec, platform = kfp_docs
    assert spec["pipelineInfo"]["name"] == "stereo-spot"
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"bucket", "key", "format", "divergence",
                                                                    "convergence", "baseline_mm", "hfov",
                                                                    "gpu_workers", "depth_video"}
    assert spec["root"]["inputDefinitions"]["parameters"]["gpu_workers"]["defaultValue"] == \
        PipelineConfig().gpu_workers
    for name, executor in spec["deploymentSpec"]["executors"].items():
        container = executor["container"]
        command = " ".join(container["command"])
        assert "pip install" not in command, name
        assert re.match(r"ghcr\.io/stereo-spot/stereo-spot-(cpu|gpu):", container["image"]), name
        assert container["resources"]["resourceCpuRequest"], name
    tasks = _all_tasks(spec)
    steps = {name: t for name, t in tasks.items() if "componentRef" in t and t["componentRef"]["name"] in
             ("comp-chunk", "comp-convert", "comp-concat", "comp-fail")}
    assert len(steps) == 4
    # caching decided per step (stereo_spot.pipelines.kfp.CACHING: off for all four); kfp writes `cachingOptions: {}`
    # for off (enableCache false is the proto default) and `{enableCache: true}` for on
    from stereo_spot.pipelines.kfp import CACHING

    assert set(CACHING) == {"chunk", "convert", "concat", "fail"}
    assert not any(CACHING.values()), "a cache hit would skip a step whose effect is on the stores"
    for name, task in steps.items():
        assert task["cachingOptions"] == ({"enableCache": True} if CACHING[name] else {}), name
    convert_exec = spec["deploymentSpec"]["executors"]["exec-convert"]["container"]
    assert convert_exec["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert convert_exec["resources"]["accelerator"]["resourceCount"] == "1"
    assert tasks["convert"]["retryPolicy"]["maxRetryCount"] == PipelineConfig().convert_retries
    for name in ("chunk", "concat", "fail"):  # the exit task too
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == PipelineConfig().step_retries, name
    loop = next(t for t in tasks.values() if "parameterIterator" in t)
    assert loop["iteratorPolicy"]["parallelismLimit"] == PipelineConfig().parallelism
    exit_task = tasks["fail"]
    assert exit_task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    convert = executors["exec-convert"]
    assert convert["nodeSelector"]["labels"] == dict([GPU_POOL_LABEL])
    assert convert["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert convert["podMetadata"]["annotations"] == {"karpenter.sh/do-not-disrupt": "true"}
    for name, config in executors.items():
        mapped = {m["envVar"] for m in config["configMapAsEnv"][0]["keyToEnv"]}
        assert mapped == set(ENV_KEYS), name
        assert config["secretAsEnv"][0]["optional"] is True, name


def _all_tasks(spec: dict) -> dict[str, dict]:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def test_a_three_hour_film_fans_out_to_the_gpu_workers(backend, workflow_template):
    """A 3-hour film at the default segment length fans out to one convert pod per GPU worker (the compiled
    default of `gpu-workers`), as the real chunk step prints it: a few bytes, far under Argo's 256 kB cap, and
    one model load per pod instead of one per segment."""
    import subprocess
    import sys

    from stereo_spot import keys, steps
    from stereo_spot.models import ConversionSettings, JobStatus

    settings = ConversionSettings()
    total = math.ceil(3 * 3600 / settings.segment_seconds)
    job = steps.create_job(backend, settings, "a long film")
    backend.jobs.update(job.job_id, status=JobStatus.CHUNKING_COMPLETE, total_segments=total)
    params = {p["name"]: p.get("value") for p in workflow_template["spec"]["arguments"]["parameters"]}
    gpu_workers = int(params["gpu-workers"])
    inputs = [{"name": "bucket", "value": backend.input_bucket}, {"name": "key", "value": keys.input_key(job.job_id)},
              {"name": "output_format", "value": ""}, {"name": "divergence", "value": ""},
              {"name": "convergence", "value": ""}, {"name": "baseline_mm", "value": ""}, {"name": "hfov", "value": ""},
              {"name": "gpu_workers", "value": params["gpu-workers"]},
              {"name": "depth_video", "value": params["depth-video"]}]
    path = backend.objects.local_path(backend.input_bucket, "inputs.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(inputs))
    chunk_template = _templates(workflow_template)["chunk"]
    [output] = chunk_template["outputs"]["parameters"]
    outputs_dir = path.parent / "hera-outputs"  # the pod's /tmp/hera-outputs
    env = {**os.environ, **{e["name"]: e["value"] for e in chunk_template["script"]["env"]},
           "hera__outputs_directory": str(outputs_dir)}
    proc = subprocess.run([sys.executable, "-m", "hera.workflows.runner", "-e", "stereo_spot.components.chunk:chunk",
                           str(path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    written = outputs_dir / Path(output["valueFrom"]["path"]).relative_to("/tmp/hera-outputs")
    shards = json.loads(written.read_text())
    assert total == 1080 and shards == list(range(gpu_workers)), shards
    assert written.stat().st_size < 1024  # 256 kB is Argo's limit
    # every segment belongs to exactly one shard, in order
    covered = [i for shard in shards for i in steps.shard_segments(total, shard, len(shards))]
    assert covered == list(range(total))


def test_the_template_name_carries_the_contract_version(workflow_template):
    """One name, from `template_name()`: the compiled template, its schema label, `stereo-spot submit` (see
    test_pipelines_submit) and the Sensor (a kustomize replacement, see test_manifests_validate)."""
    name = workflow_template["metadata"]["name"]
    assert name == template_name() == f"stereo-spot-{PIPELINE_SCHEMA}"
    labels = workflow_template["metadata"]["labels"]
    assert labels[SCHEMA_LABEL] == PIPELINE_SCHEMA
    assert labels["app.kubernetes.io/version"] == PipelineConfig().tag  # the images' tag: the same release
    assert template_name("v2") != name  # a new contract is a new template, side by side with the old one


def test_step_defaults_are_set_once_and_stay_in_the_build(workflow_template):
    """What every step shares is stereo_spot.pipelines.argo.step_defaults, set once; a template differs from
    chunk's (which sets none of them) only where it says so, and nothing leaks out of the build into Hera's
    process-wide defaults: a Script made after a build is bare."""
    from hera.workflows import Script

    from stereo_spot.components import chunk, concat, convert, fail
    from stereo_spot.pipelines.argo import build_workflow_template, step_defaults

    # the components set none of the shared choices themselves: outside the build they are Hera's bare Script
    for module in (chunk, concat, convert, fail):
        template = module.argo_template()
        bare = Script(name=template.name, source=template.source)
        for name in step_defaults(PipelineConfig()):
            assert getattr(template, name) == getattr(bare, name), (module.__name__, name)
    build_workflow_template()
    after = Script(name="after", source="print(1)")
    assert after.image != PipelineConfig().image("cpu") and after.retry_strategy is None and after.env_from is None

    scripts = {t["name"]: t for t in workflow_template["spec"]["templates"] if "script" in t}
    shared = {"image": "script", "resources": "script", "envFrom": "script", "securityContext": "script",
              "terminationMessagePolicy": "script", "command": "script", "retryStrategy": None}

    def field(template: dict, name: str, where: str | None):
        return (template[where] if where else template).get(name)

    differs = {name: {f for f, where in shared.items() if field(t, f, where) != field(scripts["chunk"], f, where)}
               for name, t in scripts.items()}
    assert differs == {"chunk": set(), "concat": set(), "convert": {"image", "resources", "retryStrategy"},
                       "fail": {"resources"}}
    assert set(step_defaults(PipelineConfig())) >= {"constructor", "image", "resources", "retry_strategy",
                                                   "env_from"}
    assert all(field(scripts["chunk"], f, where) for f, where in shared.items())  # all are set


def test_the_argo_builder_reads_nothing_private_of_hera():
    """Hera's `global_config._get_class_defaults` (or any `_name`) may change in any release; the builder uses
    only Hera's public API. Catches a private attribute read anywhere in pipelines/argo.py."""
    import ast

    import stereo_spot.pipelines.argo as argo

    tree = ast.parse(Path(argo.__file__).read_text(encoding="utf-8"))
    private = sorted({node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                      and node.attr.startswith("_") and not node.attr.startswith("__")})
    assert private == []
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("hera") for alias in node.names}
    assert not {name for name in imported if name.startswith("_")} and "global_config" not in imported


def test_kfp_steps_are_container_components_running_the_image_entry_point(kfp_docs):
    """Each executor runs `stereo-spot step <name>` (the image's console script) with its inputs as options and
    its outputs as files the KFP launcher reads; no kfp executor, no inline Python source, nothing installed."""
    import tomllib

    from stereo_spot.components.cli import app as step_app

    spec, _ = kfp_docs
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "stereo-spot" in scripts
    commands = {c.name for c in step_app.registered_commands}
    steps = {"exec-chunk": "chunk", "exec-convert": "convert", "exec-concat": "concat", "exec-fail": "fail"}
    executors = spec["deploymentSpec"]["executors"]
    assert set(executors) == set(steps)
    for name, executor in executors.items():
        container = executor["container"]
        assert container["command"] == ["stereo-spot", "step", steps[name]], name
        assert steps[name] in commands, name
        text = json.dumps(container)
        assert "kfp" not in text and "executor_input" not in text and "python" not in text, name
        component = spec["components"][f"comp-{name.removeprefix('exec-')}"]
        outputs = component.get("outputDefinitions", {}).get("parameters", {})
        args = container["args"]
        for output in outputs:  # each output is a file the step writes
            assert f"{{{{$.outputs.parameters['{output}'].output_file}}}}" in args, (name, output)
        for value in component["inputDefinitions"]["parameters"]:
            assert f"{{{{$.inputs.parameters['{value}']}}}}" in args, (name, value)
    assert set(spec["components"]["comp-chunk"]["outputDefinitions"]["parameters"]) == {"shards"}


def test_the_step_commands_start_without_kfp(kfp_docs, tmp_path):
    """Each compiled executor's command starts where kfp cannot be imported, as in a step image without it (the
    kfp run test executes them whole the same way)."""
    import subprocess
    import sys

    blocker = tmp_path / "kfp"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('kfp is not installed in the step image')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    spec, _ = kfp_docs
    for name, executor in spec["deploymentSpec"]["executors"].items():
        command = executor["container"]["command"]
        proc = subprocess.run([*command, "--help"], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0 and "Usage" in proc.stdout, (name, proc.stderr[-2000:])
