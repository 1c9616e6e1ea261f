#!/usr/bin/env python3
"""Fit the rendered manifests (stdin) to a one-node kind cluster with a local AWS stand-in (stdout):

- every step schedules on the node: no GPU pool selector, toleration or affinity, no GPU request, small CPU and memory
  requests (the CPU image converts with heuristic depth);
- the SQS EventSource reads the stand-in's queue (its endpoint, and keys from the stereo-spot-credentials Secret
  the job creates: there is no IRSA in kind);
- the artifact repository writes to the output bucket `stereo-spot aws bootstrap` named (the stereo-spot-env
  ConfigMap's OUTPUT_BUCKET_NAME);
- the UI is left out (the job talks to the storage directly).

    kubectl kustomize .github/e2e | python3 .github/e2e/fit-kind.py | kubectl apply -f -
"""

from __future__ import annotations

import os
import sys

import yaml

ENDPOINT = os.environ.get("E2E_AWS_ENDPOINT_URL", "http://moto.stereo-spot.svc:5000")
SMALL = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "3Gi"}}


REPOSITORIES = "artifact-repositories"  # Argo's name for a namespace's artifact repositories ConfigMap


def fit(doc: dict, env: dict[str, str]) -> dict | None:
    kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
    if kind == "ConfigMap" and name == REPOSITORIES:
        for key, text in doc["data"].items():
            repository = yaml.safe_load(text)
            repository["s3"]["bucket"] = env["OUTPUT_BUCKET_NAME"]
            doc["data"][key] = yaml.safe_dump(repository, sort_keys=False)
    if kind in ("Deployment", "Service") and name == "stereo-spot-ui":
        return None
    if kind == "WorkflowTemplate":
        for template in doc["spec"]["templates"]:
            template.pop("nodeSelector", None)
            template.pop("tolerations", None)
            template.pop("affinity", None)  # the GPU-memory floor on the convert pods
            step = template.get("script") or template.get("container")
            if step is not None and "resources" in step:
                step["resources"] = SMALL
    if kind == "EventSource":
        for source in doc["spec"].get("sqs", {}).values():
            source["endpoint"] = ENDPOINT
            source["accessKey"] = {"name": "stereo-spot-credentials", "key": "AWS_ACCESS_KEY_ID"}
            source["secretKey"] = {"name": "stereo-spot-credentials", "key": "AWS_SECRET_ACCESS_KEY"}
    return doc


def main() -> int:
    docs = [doc for doc in yaml.safe_load_all(sys.stdin) if doc]
    env = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "stereo-spot-env")["data"]
    docs = [fit(doc, env) for doc in docs]
    yaml.safe_dump_all([d for d in docs if d is not None], sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
