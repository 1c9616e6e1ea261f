"""``stereo-spot doctor``: check a cluster before (and after) deploying the manifests, and say what is missing.

Run before ``kubectl apply -k``: an unsupported cluster fails later in ways that are hard to read. The one that
matters most: Argo Workflows before 3.6 has no ``synchronization.mutexes`` and silently drops the per-job mutex,
so a manual resubmit could run beside a running workflow of the same job.

It reads, over plain HTTP (no Kubernetes client library):

* the Argo Workflows version: from the Argo server (``/api/v1/version``) when ``ARGO_SERVER_URL`` is set,
  otherwise from the image tag of the ``workflow-controller`` Deployment;
* the CRDs the manifests use (Argo Workflows, Argo Events; Karpenter and the Prometheus Operator's
  ServiceMonitor for the aws overlay);
* the service accounts in the namespace and their IRSA role annotation, once the namespace exists.

The Kubernetes API and credentials come from ``--kube-api``/``--kube-token``, from inside a pod (the mounted
service-account token), or from the kubeconfig (``KUBECONFIG`` or ``~/.kube/config``: a token, client
certificates, or an exec plugin such as ``aws eks get-token``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from stereo_spot.adapters.httpjson import ApiError, ApiUnreachable, Endpoint
from stereo_spot.aws.iam import KUBERNETES_IDENTITIES, ROLE_ANNOTATION
from stereo_spot.errors import UserError

MIN_ARGO = (3, 6)  # synchronization.mutexes (the per-job mutex)
IN_CLUSTER = Path("/var/run/secrets/kubernetes.io/serviceaccount")

REQUIRED_CRDS = {
    "workflows.argoproj.io": "Argo Workflows",
    "workflowtemplates.argoproj.io": "Argo Workflows",
    "cronworkflows.argoproj.io": "Argo Workflows (the reconcile CronWorkflow)",
    "workflowtaskresults.argoproj.io": "Argo Workflows 3.5+ (the executor reports outputs through it)",
    "eventsources.argoproj.io": "Argo Events",
    "sensors.argoproj.io": "Argo Events",
    "eventbus.argoproj.io": "Argo Events",
}
OPTIONAL_CRDS = {
    "nodepools.karpenter.sh": "Karpenter v1 (the GPU NodePool of the aws overlay)",
    "ec2nodeclasses.karpenter.k8s.aws": "Karpenter's AWS provider (the EC2NodeClass)",
    "servicemonitors.monitoring.coreos.com": "the Prometheus Operator (manifests/components/monitoring)",
}
SERVICE_ACCOUNTS = ("stereo-spot-workflow", "stereo-spot-events", "stereo-spot-sensor", "stereo-spot-ui",
                    "stereo-spot-reconcile")
NEEDS_AWS_ROLE = frozenset(i.service_account for i in KUBERNETES_IDENTITIES)  # the generated IAM identities
IRSA_ANNOTATION = ROLE_ANNOTATION


@dataclass(frozen=True)
class Check:
    name: str
    state: str  # ok | missing | warn
    detail: str

    @property
    def failed(self) -> bool:
        return self.state == "missing"

    def line(self) -> str:
        return f"{self.state:8} {self.name}: {self.detail}"


def parse_version(text: str) -> tuple[int, ...] | None:
    """'v3.6.2' -> (3, 6, 2); 'latest' or a digest -> None."""
    match = re.search(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(p) for p in match.groups() if p is not None) if match else None


# --- credentials --------------------------------------------------------------------------------------


def _write_temp(data: str, suffix: str) -> str:
    handle = tempfile.NamedTemporaryFile("w", suffix=suffix, delete=False)
    with handle:
        handle.write(data)
    return handle.name


def _b64(value: str) -> str:
    return base64.b64decode(value).decode()


def kube_endpoint(api: str | None = None, token: str | None = None, kubeconfig: str | None = None,
                  context: str | None = None, verify: bool = True) -> Endpoint:
    """The Kubernetes API to talk to, with credentials, by the rules in the module docstring."""
    if api:
        return Endpoint(api, token=token, verify=verify)
    from stereo_spot.config import get_settings

    config = get_settings()
    host = config.kubernetes_service_host
    if host and (IN_CLUSTER / "token").is_file() and kubeconfig is None:
        port = config.kubernetes_service_port
        ca = IN_CLUSTER / "ca.crt"
        return Endpoint(f"https://{host}:{port}", token=token or (IN_CLUSTER / "token").read_text().strip(),
                        ca_file=str(ca) if ca.is_file() else None, verify=verify)
    path = Path(kubeconfig or (config.kubeconfig or "").split(os.pathsep)[0] or Path.home() / ".kube/config")
    if not path.is_file():
        raise UserError(f"no Kubernetes API: {path} does not exist; pass --kube-api and --kube-token, or set "
                        "KUBECONFIG")
    import yaml

    config = yaml.safe_load(path.read_text()) or {}
    name = context or config.get("current-context")
    by_name = {kind: {item["name"]: item.get(kind[:-1], {}) for item in config.get(kind) or []}
               for kind in ("contexts", "clusters", "users")}
    if name not in by_name["contexts"]:
        raise UserError(f"the kubeconfig {path} has no context {name!r}")
    ctx = by_name["contexts"][name]
    cluster, user = by_name["clusters"].get(ctx.get("cluster"), {}), by_name["users"].get(ctx.get("user"), {})
    if not cluster.get("server"):
        raise UserError(f"the kubeconfig's cluster {ctx.get('cluster')!r} has no server")
    ca_file = cluster.get("certificate-authority")
    ca_data = _b64(cluster["certificate-authority-data"]) if cluster.get("certificate-authority-data") else None
    verify = verify and not cluster.get("insecure-skip-tls-verify", False)
    cert = None
    if user.get("client-certificate") or user.get("client-certificate-data"):
        cert_file = user.get("client-certificate") or _write_temp(_b64(user["client-certificate-data"]), ".crt")
        key_file = user.get("client-key") or _write_temp(_b64(user["client-key-data"]), ".key")
        cert = (cert_file, key_file)
    token = token or user.get("token") or (_exec_token(user["exec"]) if user.get("exec") else None)
    return Endpoint(cluster["server"], token=token, verify=verify, ca_file=ca_file, ca_data=ca_data,
                    client_cert=cert)


def _exec_token(spec: dict) -> str:
    """A kubeconfig exec plugin (``aws eks get-token`` and the like) prints an ExecCredential."""
    # the plugin runs with this process's whole environment plus its own, as kubectl runs it
    env = {**os.environ, **{e["name"]: e["value"] for e in spec.get("env") or []}}
    try:
        proc = subprocess.run([spec["command"], *(spec.get("args") or [])], capture_output=True, text=True,
                              env=env, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"the kubeconfig's credential command {spec['command']} failed: {exc}") from exc
    if proc.returncode != 0:
        raise UserError(f"the kubeconfig's credential command {spec['command']} failed: "
                        f"{proc.stderr.strip()[:300]}")
    return json.loads(proc.stdout)["status"]["token"]


# --- the checks ---------------------------------------------------------------------------------------


def _get(endpoint: Endpoint, path: str) -> dict | None:
    """The object, or None for 404."""
    try:
        return endpoint.get(path)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def argo_version(kube: Endpoint, argo: Endpoint | None, argo_namespace: str) -> tuple[str, str]:
    """(version text, where it came from)."""
    if argo is not None:
        return str(argo.get("/api/v1/version").get("version", "")), f"the Argo server at {argo.base_url}"
    deployment = _get(kube, f"/apis/apps/v1/namespaces/{argo_namespace}/deployments/workflow-controller")
    if deployment is None:
        return "", f"no workflow-controller Deployment in namespace {argo_namespace}"
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    return image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else "", f"the controller image {image}"


def run_checks(kube: Endpoint, *, argo: Endpoint | None = None, namespace: str = "stereo-spot",
               argo_namespace: str = "argo", kubeflow: bool = False) -> list[Check]:
    checks: list[Check] = []
    try:
        server = kube.get("/version")
    except ApiError as exc:
        hint = " (the token was refused)" if exc.status in (401, 403) else ""
        return [Check("kubernetes", "missing", f"the API answered {exc}{hint}")]
    except ApiUnreachable as exc:
        return [Check("kubernetes", "missing", str(exc))]
    checks.append(Check("kubernetes", "ok", f"{server.get('gitVersion', '?')} at {kube.base_url}"))

    try:
        text, source = argo_version(kube, argo, argo_namespace)
    except (ApiError, ApiUnreachable) as exc:
        text, source = "", f"could not read it: {exc}"
    version = parse_version(text)
    wanted = ".".join(map(str, MIN_ARGO))
    if version is None:
        checks.append(Check("argo-workflows", "missing" if not text else "warn",
                            f"version unknown ({text or 'not found'}; {source}): stereo-spot needs {wanted} or "
                            "later; set ARGO_SERVER_URL to read it from the Argo server"))
    elif version[:2] < MIN_ARGO:
        checks.append(Check("argo-workflows", "missing",
                            f"v{'.'.join(map(str, version))} ({source}) is older than {wanted}: it silently drops "
                            "the per-job mutex (synchronization.mutexes); upgrade Argo Workflows"))
    else:
        checks.append(Check("argo-workflows", "ok", f"v{'.'.join(map(str, version))} ({source})"))

    for crds, required in ((REQUIRED_CRDS, True), (OPTIONAL_CRDS, False)):
        for name, what in crds.items():
            crd = _get(kube, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            if crd is not None:
                served = [v["name"] for v in crd["spec"].get("versions", []) if v.get("served")]
                checks.append(Check(f"crd {name}", "ok", f"served {', '.join(served)}"))
            else:
                checks.append(Check(f"crd {name}", "missing" if required else "warn", f"not installed: {what}"))

    if _get(kube, f"/api/v1/namespaces/{namespace}") is None:
        checks.append(Check(f"namespace {namespace}", "warn", "not there yet: kubectl apply -k "
                                                              "manifests/overlays/aws creates it"))
        return checks
    accounts = SERVICE_ACCOUNTS + (("stereo-spot-kfp-trigger",) if kubeflow else ())
    for name in accounts:
        account = _get(kube, f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}")
        if account is None:
            checks.append(Check(f"serviceaccount {name}", "missing", f"not in {namespace}: apply the overlay"))
            continue
        role = (account["metadata"].get("annotations") or {}).get(IRSA_ANNOTATION)
        if name in NEEDS_AWS_ROLE and not role:
            checks.append(Check(f"serviceaccount {name}", "warn",
                                f"no {IRSA_ANNOTATION} annotation: its pods get no AWS access (IRSA)"))
        else:
            checks.append(Check(f"serviceaccount {name}", "ok", role or "no AWS access needed"))
    return checks
