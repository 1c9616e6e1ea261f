"""Links for engineers: a job's run in the Argo or Kubeflow UI, and its logs. Built from the environment;
every link is absent (None) when its setting is unset.

    ARGO_UI_URL        https://argo.example.com  -> the job's workflows in the Argo UI, listed by their label:
                       {ARGO_UI_URL}/workflows/{ARGO_NAMESPACE}?label=stereo-spot.io/job-id%3D{job_id} (a job may
                       have several runs: stereo_spot.adapters.argo_runs), or a template with {job_id} / {namespace} /
                       {workflow} ({workflow}: stereo-spot-{job_id}, how each of its runs' names starts)
    KFP_UI_URL         https://kubeflow.example.com/pipeline -> {KFP_UI_URL}/#/runs (KFP run ids are not derivable
                       from the job id), or a template with {job_id}
    LOGS_URL_TEMPLATE  any URL with {job_id} (and optionally {workflow}, {namespace}), e.g. a Grafana/Loki or
                       CloudWatch Logs Insights query

When both ARGO_UI_URL and KFP_UI_URL are set the run link points at Argo.
"""

from __future__ import annotations

from typing import Any

from stereo_spot.adapters.argo_runs import job_run_prefix, ui_link
from stereo_spot.keys import validate_job_id
from stereo_spot.ports import OperatorLinks

_PLACEHOLDERS = {"job_id", "namespace", "workflow"}


def fill(template: str, values: dict[str, str]) -> str:
    """Replace the known placeholders only: URLs such as Grafana's carry JSON braces of their own."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


def _has_placeholder(template: str) -> bool:
    return any("{" + name + "}" in template for name in _PLACEHOLDERS)


class EnvOperatorLinks(OperatorLinks):
    def __init__(self, argo_ui_url: str | None = None, argo_namespace: str = "stereo-spot",
                 kfp_ui_url: str | None = None,
                 logs_url_template: str | None = None):
        self.argo_ui_url = (argo_ui_url or "").strip() or None
        self.argo_namespace = argo_namespace or "stereo-spot"
        self.kfp_ui_url = (kfp_ui_url or "").strip() or None
        self.logs_url_template = (logs_url_template or "").strip() or None

    @classmethod
    def from_settings(cls, settings: Any) -> EnvOperatorLinks:
        return cls(settings.argo_ui_url, settings.argo_namespace, settings.kfp_ui_url, settings.logs_url_template)

    @property
    def configured(self) -> bool:
        return bool(self.argo_ui_url or self.kfp_ui_url or self.logs_url_template)

    def _values(self, job_id: str) -> dict[str, str]:
        return {"job_id": validate_job_id(job_id), "namespace": self.argo_namespace,
                "workflow": job_run_prefix(job_id)}

    def run_link(self, job_id: str) -> str | None:
        values = self._values(job_id)
        if self.argo_ui_url:
            if _has_placeholder(self.argo_ui_url):
                return fill(self.argo_ui_url, values)
            return ui_link(self.argo_ui_url, values["namespace"], job_id)
        if self.kfp_ui_url:
            if _has_placeholder(self.kfp_ui_url):
                return fill(self.kfp_ui_url, values)
            return f"{self.kfp_ui_url.rstrip('/')}/#/runs"
        return None

    def logs_link(self, job_id: str) -> str | None:
        if not self.logs_url_template:
            return None
        return fill(self.logs_url_template, self._values(job_id))


def links_from_settings(settings: Any) -> EnvOperatorLinks | None:
    """The links configured in the environment, or None when none is."""
    links = EnvOperatorLinks.from_settings(settings)
    return links if links.configured else None
