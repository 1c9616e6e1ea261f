"""JSON over HTTP with the standard library, for the operator commands that talk to cluster APIs (the Kubeflow
Pipelines API, the Argo server, the Kubernetes API). No client library: these commands run in the CPU image and
on an operator's laptop, and each needs a handful of GET/POST calls."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any


class ApiError(Exception):
    """The server answered with an error status; ``status`` is the HTTP code, the message is the server's."""

    def __init__(self, status: int, message: str, url: str):
        super().__init__(f"HTTP {status} from {url}: {message}")
        self.status, self.message, self.url = status, message, url


class ApiUnreachable(Exception):
    """No answer at all (connection refused, DNS, TLS, timeout)."""


@dataclass(frozen=True)
class Endpoint:
    """A base URL and how to authenticate to it. ``token`` is sent as ``Authorization: Bearer``; a TLS
    ``ca_file`` or ``ca_data`` (PEM) overrides the system roots; ``verify=False`` skips verification."""

    base_url: str
    token: str | None = None
    verify: bool = True
    ca_file: str | None = None
    ca_data: str | None = None
    client_cert: tuple[str, str] | None = None  # (certificate file, key file)
    timeout: float = 30.0

    def _context(self) -> ssl.SSLContext | None:
        if not self.base_url.startswith("https://"):
            return None
        if not self.verify:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = ssl.create_default_context(cafile=self.ca_file, cadata=self.ca_data)
        if self.client_cert:
            context.load_cert_chain(*self.client_cert)
        return context

    def url(self, path: str, params: dict[str, Any] | None = None) -> str:
        url = self.base_url.rstrip("/") + "/" + path.lstrip("/")
        query = {k: v for k, v in (params or {}).items() if v is not None}
        return f"{url}?{urllib.parse.urlencode(query)}" if query else url

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                body: Any = None) -> Any:
        """The decoded JSON answer ({} for an empty body). Raises ApiError or ApiUnreachable."""
        url = self.url(path, params)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._context()) as response:
                text = response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, _error_message(exc.read().decode("utf-8", "replace")) or exc.reason,
                           url) from exc
        except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiUnreachable(f"cannot reach {url}: {reason}") from exc
        if not text.strip():
            return {}
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ApiError(200, f"the answer is not JSON: {text[:200]!r}", url) from exc

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any, **params: Any) -> Any:
        return self.request("POST", path, params=params, body=body)


def _error_message(text: str) -> str:
    """KFP, Argo and Kubernetes put the reason under "message" (KFP also "error")."""
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        return " ".join(text.split())[:300]
    if isinstance(payload, dict):
        return str(payload.get("message") or payload.get("error") or payload)[:300]
    return str(payload)[:300]
