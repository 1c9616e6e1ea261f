"""Every manifest passes ../shared/tools/validate-manifests (strict: unknown fields are errors): each overlay as
`kubectl kustomize` renders it, manifests/generated and the Argo CD Application. Plus the properties the
deployment relies on: least-privilege RBAC, no keys in YAML, IRSA, the environment contract, and the Sensor's
filters applied to real S3 event shapes."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import yaml

from stereo_spot.pipelines.config import ENV_KEYS, template_name

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
VALIDATOR = ROOT.parent / "shared" / "tools" / "validate-manifests"
OVERLAYS = sorted(p.parent for p in (MANIFESTS / "overlays").glob("*/kustomization.yaml"))
JOB = "0b9f3c4e-6f1a-4c6e-9a51-2f7d8e3b1c55"


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is needed to render the overlays (scripts/setup --dev installs it)")
        pytest.skip("kubectl is not installed")
    return path


def _validator() -> Path:
    if not VALIDATOR.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{VALIDATOR} is missing: CI runs with shared/ beside the checkout")
        pytest.skip("shared/tools/validate-manifests is not beside this checkout")
    return VALIDATOR


@pytest.fixture(scope="module")
def validation(tmp_path_factory) -> str:
    """One run of the validator (it loads the large upstream schemas once) over every overlay as kubectl
    kustomize renders it, manifests/generated and the Argo CD Application."""
    folder = tmp_path_factory.mktemp("rendered")
    for overlay in OVERLAYS:
        (folder / f"overlay-{overlay.name}.yaml").write_text(yaml.safe_dump_all(render(overlay), sort_keys=False))
    proc = subprocess.run([sys.executable, str(_validator()), str(folder), str(MANIFESTS / "generated"),
                           str(MANIFESTS / "argocd")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and " 0 invalid" in proc.stdout, proc.stdout + proc.stderr
    return proc.stdout


def render(overlay: Path) -> list[dict]:
    """A fresh copy of the overlay as kubectl kustomize renders it (rendered once per test session)."""
    return json.loads(_rendered(str(overlay), _kubectl()))


@functools.cache
def _rendered(overlay: str, kubectl: str) -> str:
    proc = subprocess.run([kubectl, "kustomize", overlay], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.dumps([d for d in yaml.safe_load_all(proc.stdout) if d])


@pytest.fixture(scope="module", params=OVERLAYS, ids=[p.name for p in OVERLAYS])
def overlay(request) -> tuple[Path, list[dict]]:
    return request.param, render(request.param)


def _find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert matches, f"no {kind} {name or ''}"
    return matches[0]


def test_there_are_overlays():
    assert {p.name for p in OVERLAYS} >= {"aws", "aws-kubeflow"}


@pytest.mark.slow  # over 10 s
def test_each_overlay_validates(overlay, validation):
    path, docs = overlay
    lines = [line for line in validation.splitlines() if f"overlay-{path.name}.yaml:" in line]
    assert len(lines) == len(docs) and not [line for line in lines if line.startswith("INVALID")], validation
    for kind in ("WorkflowTemplate", "EventSource", "Sensor", "EventBus", "CronWorkflow"):
        assert [line for line in lines if line.startswith("ok ") and f": {kind}/" in line], f"{path.name}: {kind}"


@pytest.mark.slow  # over 10 s
def test_generated_and_argocd_validate(validation):
    for label in (f"generated/workflowtemplate.yaml: WorkflowTemplate/{template_name()}",
                  "generated/kfp-pipeline.yaml: kfp/stereo-spot", "generated/kfp-pipeline.yaml: kfp-platform"):
        assert re.search(rf"^ok \S*{re.escape(label)}$", validation, re.M), validation
    assert "argocd/stereo-spot.yaml: Application/stereo-spot" in validation


def test_rbac_is_least_privilege(overlay):
    _, docs = overlay
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Role", "ClusterRole")}
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    for role in roles.values():
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], role["metadata"]["name"]
    sensor = {r: set(rule["verbs"]) for rule in roles["stereo-spot-sensor"]["rules"] for r in rule["resources"]}
    if any(d["kind"] == "Sensor" and d["metadata"]["name"] == "stereo-spot-kubeflow" for d in docs):
        assert sensor == {"jobs": {"create"}}  # it only creates the trigger Job
    else:
        assert sensor == {"workflows": {"create", "get", "list"}, "workflowtemplates": {"get", "list"}}
    ui = {r: set(rule["verbs"]) for rule in roles["stereo-spot-ui"]["rules"] for r in rule["resources"]}
    assert ui == {"workflows": {"get", "list", "patch"}}  # finding and stopping a deleted job's runs, nothing more
    workflow = roles["stereo-spot-workflow"]["rules"]
    assert workflow == [{"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"],
                         "verbs": ["create", "patch"]}]


def test_aws_access_is_irsa_and_no_keys_are_in_yaml(overlay):
    _, docs = overlay
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    for name in ("stereo-spot-workflow", "stereo-spot-events", "stereo-spot-ui"):
        arn = accounts[name]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", arn), arn
    sqs = _find(docs, "EventSource", "stereo-spot-uploads")["spec"]["sqs"]["uploads"]
    assert sqs["jsonBody"] is True and not {"accessKey", "secretKey", "sessionToken"} & set(sqs)
    assert _find(docs, "EventSource")["spec"]["template"]["serviceAccountName"] == "stereo-spot-events"
    assert not [d for d in docs if d["kind"] == "Secret"]
    text = yaml.safe_dump_all(docs)
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|AWS_SECRET_ACCESS_KEY:", text)


def test_the_config_map_holds_the_environment_contract(overlay):
    _, docs = overlay
    data = _find(docs, "ConfigMap", "stereo-spot-env")["data"]
    assert set(ENV_KEYS) <= set(data)  # every key the Kubeflow tasks map must exist
    assert data["STORAGE_ADAPTER"] == "aws"
    workflow_template = _find(docs, "WorkflowTemplate", template_name())
    assert all(t["script"]["envFrom"][0]["configMapRef"]["name"] == "stereo-spot-env"
               for t in workflow_template["spec"]["templates"] if "script" in t)


def test_the_gpu_pool_is_spot_with_on_demand_fallback_and_a_limit():
    docs = render(MANIFESTS / "overlays" / "aws")
    pool = _find(docs, "NodePool", "stereo-spot-gpu")
    assert "namespace" not in pool["metadata"]  # cluster-scoped
    requirements = {r["key"]: r["values"] for r in pool["spec"]["template"]["spec"]["requirements"]}
    assert requirements["karpenter.sh/capacity-type"] == ["spot", "on-demand"]
    assert pool["spec"]["limits"]["nvidia.com/gpu"] >= 1
    assert pool["spec"]["template"]["metadata"]["labels"] == {"stereo-spot.io/pool": "gpu"}
    assert pool["spec"]["template"]["spec"]["taints"][0]["key"] == "nvidia.com/gpu"
    node_class = _find(docs, "EC2NodeClass", pool["spec"]["template"]["spec"]["nodeClassRef"]["name"])
    assert node_class["apiVersion"] == "karpenter.k8s.aws/v1"
    # the pipeline never runs more convert pods than the pool can hold
    from stereo_spot.pipelines.config import PipelineConfig

    assert PipelineConfig().parallelism <= pool["spec"]["limits"]["nvidia.com/gpu"]


def test_images_point_at_the_overlay_registry():
    docs = render(MANIFESTS / "overlays" / "aws")
    images = [t["script"]["image"] for t in _find(docs, "WorkflowTemplate")["spec"]["templates"] if "script" in t]
    images.append(_find(docs, "Deployment", "stereo-spot-ui")["spec"]["template"]["spec"]["containers"][0]["image"])
    assert images and all(i.startswith("123456789012.dkr.ecr.") for i in images), images


def _kubeflow_trigger() -> tuple[dict, dict]:
    docs = render(MANIFESTS / "overlays" / "aws-kubeflow")
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Sensor"] == ["stereo-spot-kubeflow"]
    return _find(docs, "Sensor")["spec"]["triggers"][0]["template"]["k8s"], docs


def test_kubeflow_overlay_swaps_the_sensor_for_a_trigger_job():
    trigger, docs = _kubeflow_trigger()
    assert trigger["operation"] == "create"
    job = trigger["source"]["resource"]
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job") and job["metadata"]["generateName"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["stereo-spot", "kfp-trigger"]
    assert container["image"].startswith("123456789012.dkr.ecr.")  # the overlay's registry, like the steps
    assert pod["serviceAccountName"] == "stereo-spot-kfp-trigger" and pod["restartPolicy"] == "Never"
    # exit 2 (set up wrong) fails the Job at once; exit 1 (KFP or DynamoDB away) is retried
    (rule,) = job["spec"]["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [2]
    assert job["spec"]["backoffLimit"] >= 3
    configs = {ref["configMapRef"]["name"] for ref in container["envFrom"]}
    assert configs == {"stereo-spot-env", "stereo-spot-kfp"}
    kfp = _find(docs, "ConfigMap", "stereo-spot-kfp")["data"]
    assert {"KFP_HOST", "KFP_PIPELINE_ID", "KFP_EXPERIMENT", "KFP_NAMESPACE"} <= set(kfp)
    assert kfp["KFP_PIPELINE_ID"] != "set-the-pipeline-id"  # the overlay sets it


def test_kubeflow_trigger_uses_a_projected_token_and_no_secret():
    """Standalone KFP has no token Secret: nothing may require one. Multi-user KFP reviews a token for the
    audience pipelines.kubeflow.org, which the kubelet rotates in the projected volume."""
    trigger, docs = _kubeflow_trigger()
    pod = trigger["source"]["resource"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for text in (json.dumps(pod), json.dumps(_find(docs, "Sensor"))):
        assert not re.search(r'"(secret|secretKeyRef|secretRef|secureHeaders)"', text), text
    (volume,) = [v for v in pod["volumes"] if "projected" in v]
    (source,) = volume["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    assert source["serviceAccountToken"]["expirationSeconds"] <= 86400
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KF_PIPELINES_SA_TOKEN_PATH"] == f"{mount['mountPath']}/{source['serviceAccountToken']['path']}"
    account = _find(docs, "ServiceAccount", "stereo-spot-kfp-trigger")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


def test_kubeflow_trigger_parameters_hand_the_event_to_the_command():
    """Apply the Sensor's parameters to a real S3 event shape the way Argo Events does and check the command
    reads what it gets: the notification (parsed as the worker parses it) and a per-delivery id."""
    from stereo_spot.cluster.worker import parse_event
    from tests.go_template import sensor_template_value

    trigger, _ = _kubeflow_trigger()
    container = trigger["source"]["resource"]["spec"]["template"]["spec"]["containers"][0]
    event = _s3_event(f"input/{JOB}/source.mp4")
    context = {"id": "7f3c1e0a-delivery", "source": "stereo-spot-uploads", "type": "sqs"}
    env_names = [e["name"] for e in container["env"]]
    values = {}
    for parameter in trigger["parameters"]:
        src, dest = parameter["src"], parameter["dest"]
        if "dataKey" in src:
            value = json.dumps(_get(event, src["dataKey"]))  # gjson hands an object over as its JSON text
        elif "contextKey" in src:
            value = context[src["contextKey"]]
        else:
            value = sensor_template_value(src["dataTemplate"], event)
        match = re.fullmatch(r"spec\.template\.spec\.containers\.0\.env\.(\d+)\.value", dest)
        values[env_names[int(match[1])] if match else dest] = value
    (record,) = parse_event(values["STEREO_SPOT_EVENT"])
    assert record.key == f"input/{JOB}/source.mp4" and record.bucket == "stereo-spot-input"
    assert values["STEREO_SPOT_DELIVERY_ID"] == context["id"]
    assert values["metadata.labels.stereo-spot\\.io/job-id"] == JOB
    from typer.testing import CliRunner

    from stereo_spot.cli.main import app

    assert CliRunner().invoke(app, ["kfp-trigger", "--help"]).exit_code == 0


def test_argo_can_read_the_app_url_from_the_environment_config_map(overlay):
    """The WorkflowTemplate's `app-url` parameter comes from the environment ConfigMap; Argo's controller only
    sees ConfigMaps with the configmap-type label (workflow/controller/controller.go newTypedConfigMapInformer:
    LabelSelector = workflows.argoproj.io/configmap-type), `Parameter` for parameters. Catches the label dropped:
    every run would then fail to resolve the parameter's ConfigMap and fall back to no link."""
    from stereo_spot.pipelines.config import APP_URL_KEY, ENV_CONFIG_MAP, PARAMETER_CONFIG_MAP_LABEL

    _, docs = overlay
    env = _find(docs, "ConfigMap", ENV_CONFIG_MAP)
    assert env["metadata"]["labels"][PARAMETER_CONFIG_MAP_LABEL[0]] == PARAMETER_CONFIG_MAP_LABEL[1]
    template = _find(docs, "WorkflowTemplate")
    (app_url,) = [p for p in template["spec"]["arguments"]["parameters"] if p["name"] == "app-url"]
    assert app_url["valueFrom"]["configMapKeyRef"] == {"name": ENV_CONFIG_MAP, "key": APP_URL_KEY}


def test_the_reconcile_cron_workflow_runs_the_command(overlay):
    """The backstop for lost uploads runs in every overlay, one pass at a time, with options the command has."""
    import typer.main

    from stereo_spot.cli.main import app

    _, docs = overlay
    cron = _find(docs, "CronWorkflow", "stereo-spot-reconcile")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["schedules"]
    spec = cron["spec"]["workflowSpec"]
    (template,) = spec["templates"]
    container = template["container"]
    assert container["image"].startswith("123456789012.dkr.ecr.") and container["args"][:2] == ["stereo-spot",
                                                                                                "reconcile"]
    command = typer.main.get_command(app).commands["reconcile"]
    known = {opt for param in command.params for opt in param.opts}
    assert {a for a in container["args"][2:] if a.startswith("--")} <= known
    assert "exitCode != '2'" in template["retryStrategy"]["expression"]
    assert container["envFrom"][0]["configMapRef"]["name"] == "stereo-spot-env"
    account = _find(docs, "ServiceAccount", spec["serviceAccountName"])
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    binding = _find(docs, "RoleBinding", "stereo-spot-reconcile")
    assert binding["subjects"][0]["name"] == spec["serviceAccountName"]


def test_the_base_runs_on_a_stock_argo_install():
    """A stock Argo install has no artifact repository. A template's (or workflow's) `archiveLogs: true` then
    errors every node: the controller gives the pod an empty archive location (Argo
    workflow/controller/workflowpod.go, addArchiveLocation) and the log upload fails. Whether logs are archived is
    the repository's `archiveLogs` ("controller(on) > template > workflow > controller(off)", operator.go
    IsArchiveLogs), so neither the WorkflowTemplate nor the reconcile CronWorkflow in the base may ask for it, and
    the base brings no repository. Catches `archiveLogs: true` back on a step or on the reconcile template."""
    from tests.test_pipelines_compile import _archive_settings

    docs = render(MANIFESTS / "base")
    for kind in ("WorkflowTemplate", "CronWorkflow"):
        for doc in (d for d in docs if d["kind"] == kind):
            assert _archive_settings(doc) == [], (kind, doc["metadata"]["name"])
    assert not [d for d in docs if d["kind"] == "ConfigMap" and "workflows.argoproj.io/default-artifact-repository"
                in (d["metadata"].get("annotations") or {})]


def _output_artifacts(template_doc: dict) -> dict[str, list[dict]]:
    return {t["name"]: t["outputs"]["artifacts"] for t in template_doc["spec"]["templates"]
            if (t.get("outputs") or {}).get("artifacts")}


def test_run_outputs_are_artifacts_only_where_there_is_a_repository(overlay):
    """concat writes the comfort report, a still and the page to ARGO_OUTPUTS_DIR. An output artifact with no
    repository fails the step in the executor (it has no location to put the file), `optional` or not, so the
    base declares none and the overlay that brings a repository declares them, each a file concat writes,
    optional (a run whose outputs could not be made succeeds) and unarchived (the UI shows it as it is). Catches
    the artifacts moved into the base, or a name/path that concat does not write."""
    from stereo_spot.components.run_outputs import ARGO_OUTPUTS_DIR, PREVIEW_STILL, REPORT_HTML, REPORT_MARKDOWN

    base_template = _find(render(MANIFESTS / "base"), "WorkflowTemplate")
    assert _output_artifacts(base_template) == {}
    _, docs = overlay
    (artifacts,) = _output_artifacts(_find(docs, "WorkflowTemplate")).items()
    step, declared = artifacts
    assert step == "concat"
    assert {a["path"] for a in declared} == {f"{ARGO_OUTPUTS_DIR}/{name}" for name in
                                             (REPORT_MARKDOWN, PREVIEW_STILL, REPORT_HTML)}
    assert all(a["optional"] is True and a["archive"] == {"none": {}} and "s3" not in a for a in declared)
    _find(docs, "ConfigMap", "artifact-repositories")  # where they go


def test_logs_are_archived_to_the_output_bucket(overlay):
    """podGC deletes the pods of successful steps: without an artifact repository with archiveLogs their logs
    are gone. The repository's archiveLogs covers every pod of the namespace (the reconcile pass too), under
    the prefix the workflow role may write (stereo_spot.keys.ARGO_ARTIFACTS_PREFIX)."""
    from stereo_spot.keys import ARGO_ARTIFACTS_PREFIX

    _, docs = overlay
    repositories = _find(docs, "ConfigMap", "artifact-repositories")
    assert repositories["metadata"]["namespace"] == "stereo-spot"
    default = repositories["metadata"]["annotations"]["workflows.argoproj.io/default-artifact-repository"]
    repository = yaml.safe_load(repositories["data"][default])
    assert repository["archiveLogs"] is True
    s3 = repository["s3"]
    env = _find(docs, "ConfigMap", "stereo-spot-env")["data"]
    assert s3["bucket"] == env["OUTPUT_BUCKET_NAME"] and s3["region"] == env["AWS_REGION"]
    assert s3["useSDKCreds"] is True and not {"accessKeySecret", "secretKeySecret"} & set(s3)  # IRSA
    assert "{{workflow.name}}" in s3["keyFormat"] and "{{pod.name}}" in s3["keyFormat"]
    assert s3["keyFormat"].startswith(ARGO_ARTIFACTS_PREFIX)


# --- the Sensor's filters and parameters on S3 event shapes -------------------------------------------------

def _s3_event(key: str, event_name: str = "ObjectCreated:Put", bucket: str = "stereo-spot-input") -> dict:
    """What the SQS EventSource (jsonBody: true) puts on the bus for an S3 notification."""
    return {"messageId": "m-1", "messageAttributes": {}, "body": {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "eventName": event_name,
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 1234, "sequencer": "0055AED6DCD90281E5"}}}]}}


TEST_EVENT = {"messageId": "m-0", "body": {"Service": "Amazon S3", "Event": "s3:TestEvent",
                                           "Bucket": "stereo-spot-input"}}


def _get(data, path: str):
    """gjson's dotted paths (numbers index arrays), as Argo Events resolves `path` and `dataKey`."""
    for part in path.split("."):
        if isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            raise KeyError(path)
    return data


def _passes(dependency: dict, event: dict) -> bool:
    """Argo Events' data filters with the default `and`: a missing path drops the event; a string filter passes
    when one of its regular expressions matches (Go regexp, unanchored: the patterns anchor themselves)."""
    for data_filter in dependency["filters"]["data"]:
        assert data_filter["type"] == "string"
        try:
            value = _get(event, data_filter["path"])
        except KeyError:
            return False
        if not any(re.search(pattern, str(value)) for pattern in data_filter["value"]):
            return False
    return True


def _sensors() -> list[dict]:
    docs = render(MANIFESTS / "overlays" / "aws") + render(MANIFESTS / "overlays" / "aws-kubeflow")
    return [d for d in docs if d["kind"] == "Sensor"]


@pytest.mark.parametrize("key,event_name,kept", [
    (f"input/{JOB}/source.mp4", "ObjectCreated:Put", True),
    (f"input/{JOB}/source.mp4", "ObjectCreated:CompleteMultipartUpload", True),
    ("input/my+holiday+film.mp4", "ObjectCreated:Put", False),  # names no job: nothing to run
    (f"input/{JOB}/source.mov", "ObjectCreated:Put", False),
    (f"jobs/{JOB}/final.mp4", "ObjectCreated:Put", False),
    (f"segments/{JOB}/00000_00002_sbs.mp4", "ObjectCreated:Put", False),
    (f"input/{JOB}/source.mp4", "ObjectRemoved:Delete", False),
])
def test_sensor_filters(key, event_name, kept):
    for sensor in _sensors():
        assert _passes(sensor["spec"]["dependencies"][0], _s3_event(key, event_name)) is kept, sensor["metadata"]


def test_sensor_drops_the_s3_test_event():
    for sensor in _sensors():
        assert not _passes(sensor["spec"]["dependencies"][0], TEST_EVENT)


def test_argo_sensor_names_the_workflow_after_the_job_and_the_upload():
    sensor = next(s for s in _sensors() if s["metadata"]["name"] == "stereo-spot-argo")
    trigger = sensor["spec"]["triggers"][0]["template"]["argoWorkflow"]
    assert trigger["operation"] == "submit"
    workflow = trigger["source"]["resource"]
    assert workflow["spec"]["workflowTemplateRef"] == {"name": template_name()}  # copied by kustomize
    event = _s3_event(urllib.parse.quote_plus(f"input/{JOB}/source.mp4", safe="/"))
    params = {p["dest"]: p["src"] for p in trigger["parameters"]}
    assert _get(event, params["spec.arguments.parameters.1.value"]["dataKey"]) == f"input/{JOB}/source.mp4"
    assert [p["name"] for p in workflow["spec"]["arguments"]["parameters"]] == ["bucket", "key"]
    assert _get(event, params["spec.arguments.parameters.0.value"]["dataKey"]) == "stereo-spot-input"
    from stereo_spot.adapters.argo_runs import run_name
    from tests.go_template import sensor_template_value

    name = sensor_template_value(params["metadata.name"]["dataTemplate"], event)
    assert name == run_name(JOB, "0055AED6DCD90281E5")  # the job and the upload (tests/test_sensor_events.py)
    # a duplicate delivery computes the same name: Kubernetes answers AlreadyExists
    assert sensor_template_value(params["metadata.name"]["dataTemplate"], json.loads(json.dumps(event))) == name


def test_gpu_nodes_make_the_weight_cache_folder_the_convert_pods_mount():
    """A hostPath folder the kubelet creates belongs to root: the node's user data makes it for the pods' user."""
    from stereo_spot.pipelines.config import MODEL_CACHE_HOST_PATH

    docs = render(MANIFESTS / "overlays" / "aws")
    workflow_template = _find(docs, "WorkflowTemplate", template_name())
    convert = next(t for t in workflow_template["spec"]["templates"] if t["name"] == "convert")
    assert convert["volumes"][0]["hostPath"]["path"] == MODEL_CACHE_HOST_PATH
    user = workflow_template["spec"]["securityContext"]["runAsUser"]
    node_class = _find(docs, "EC2NodeClass", "stereo-spot-gpu")
    assert f"install -d -m 0755 -o {user} -g {user} {MODEL_CACHE_HOST_PATH}" in node_class["spec"]["userData"]


def _gibibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi|Ti)", quantity).groups()
    return float(number) * {"Mi": 1 / 1024, "Gi": 1, "Ti": 1024}[unit]


def test_chunk_and_concat_have_an_untainted_pool_with_room_for_their_disk():
    """The GPU pool is tainted and its pods would not fit a default 20 GiB root volume anyway: the CPU pool
    takes any pod (no taint, no selector the steps must carry) on nodes whose disk holds what they request."""
    docs = render(MANIFESTS / "overlays" / "aws")
    pool = _find(docs, "NodePool", "stereo-spot-cpu")
    spec = pool["spec"]["template"]["spec"]
    assert not spec.get("taints") and not spec.get("startupTaints")
    node_class = _find(docs, "EC2NodeClass", spec["nodeClassRef"]["name"])
    [root] = node_class["spec"]["blockDeviceMappings"]
    disk = _gibibytes(root["ebs"]["volumeSize"])
    workflow_template = _find(docs, "WorkflowTemplate", template_name())
    for template in workflow_template["spec"]["templates"]:
        if "script" not in template or template["name"] == "convert":
            continue
        assert "nodeSelector" not in template and "tolerations" not in template, template["name"]
        requested = _gibibytes(template["script"]["resources"]["requests"]["ephemeral-storage"])
        assert requested > 20 or template["name"] == "fail"
        assert 2 * requested + 20 <= disk, template["name"]  # two at once, plus images and the system


def test_convert_pods_are_not_disrupted_and_diffusion_can_skip_small_gpus():
    docs = render(MANIFESTS / "overlays" / "aws")
    convert = next(t for t in _find(docs, "WorkflowTemplate", template_name())["spec"]["templates"]
                   if t["name"] == "convert")
    assert convert["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    pool = _find(docs, "NodePool", "stereo-spot-gpu")
    requirements = {r["key"]: r["values"] for r in pool["spec"]["template"]["spec"]["requirements"]}
    assert "g4dn" in requirements["karpenter.k8s.aws/instance-family"]  # T4s for the heuristic and Depth Anything
    assert {"g5", "g6"} <= set(requirements["karpenter.k8s.aws/instance-family"])  # 24 GB for diffusion
    expression = convert["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"][0]
    assert expression["key"] == "karpenter.k8s.aws/instance-gpu-memory" and expression["operator"] == "Gt"
