"""Who is using the app, decided in one place for the pages and for the HTTP routes.

    UI_AUTH=none     one user on this machine ("local", who sees every job); ``stereo-spot ui`` refuses to bind
                     to anything but loopback in this mode unless given ``--no-auth``
    UI_AUTH=header   an authenticating proxy (oauth2-proxy, an identity-aware load balancer) signs the user in and
                     sets ``UI_AUTH_HEADER`` (default ``X-Forwarded-Email``) on every request it forwards. The
                     header is believed only from the proxy: on loopback (the proxy beside the app), or off it
                     when the request carries ``UI_AUTH_PROXY_SECRET`` in ``X-Auth-Proxy-Secret`` and/or comes
                     from ``UI_AUTH_TRUSTED_PROXIES``; ``stereo-spot ui`` refuses to bind header mode to any
                     other address without one of them
    UI_AUTH=oidc     Streamlit's own OpenID Connect sign-in (``st.login``; the provider in ``secrets.toml``); the
                     routes read the same signed ``_streamlit_user`` cookie the pages' ``st.user`` comes from

``UI_ADMINS`` (comma-separated identities) see everyone's jobs. Identities compare case-insensitively (e-mail
addresses). A job is visible to its owner and to admins; anything else is answered exactly like a job that does
not exist, so a guessed id tells nothing.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from stereo_spot.config import Settings
from stereo_spot.models import Job
from stereo_spot.ports import JobStore

log = logging.getLogger(__name__)

LOCAL_USER = "local"
# What an identity may look like: an e-mail address or a provider's subject, printable, of sane length.
_IDENTITY = re.compile(r"^[^\s\x00-\x1f\x7f]{1,320}$")


@dataclass(frozen=True)
class Identity:
    user: str
    admin: bool = False

    @property
    def owner_filter(self) -> str | None:
        """What listings filter on: None (everything) for admins, the user's own jobs for everyone else."""
        return None if self.admin else self.user


def normalise(raw: str | None) -> str | None:
    value = (raw or "").strip().lower()
    return value if value and _IDENTITY.match(value) else None


def make_identity(user: str | None, settings: Settings) -> Identity | None:
    user = normalise(user)
    if user is None:
        return None
    return Identity(user, admin=user in settings.admins)


def local_identity() -> Identity:
    return Identity(LOCAL_USER, admin=True)


PROXY_SECRET_HEADER = "X-Auth-Proxy-Secret"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def from_proxy(headers: Mapping[str, str], peer: str | None, settings: Settings) -> bool:
    """Whether a request came through the trusted proxy: it carries the shared secret (when one is set) and comes
    from a trusted address (when some are set). With neither set, any request does: the app is then bound to
    loopback (``stereo-spot ui`` refuses otherwise), where only the proxy beside it can connect."""
    import hmac

    if settings.ui_auth_proxy_secret:
        sent = _header(headers, PROXY_SECRET_HEADER) or ""
        if not hmac.compare_digest(sent.encode(), settings.ui_auth_proxy_secret.encode()):
            return False
    if settings.ui_auth_trusted_proxies:
        return peer is not None and address_in(peer, settings.ui_auth_trusted_proxies)
    return True


def address_in(address: str, networks: str) -> bool:
    """True when ``address`` is one of the comma-separated addresses or networks."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    for item in networks.split(","):
        try:
            if item.strip() and ip in ipaddress.ip_network(item.strip(), strict=False):
                return True
        except ValueError:
            continue
    return False


def header_mode_unprotected(settings: Settings) -> bool:
    """Header mode with nothing to tell the proxy's requests from anyone's: only safe on loopback."""
    return settings.ui_auth == "header" and not settings.ui_auth_proxy_secret and not settings.ui_auth_trusted_proxies


def from_headers(headers: Mapping[str, str], settings: Settings, peer: str | None = None) -> Identity | None:
    """Header mode: the proxy's identity header (header names compare case-insensitively), from the proxy only.
    ``peer``: the address the request came from."""
    if not from_proxy(headers, peer, settings):
        return None
    return make_identity(_header(headers, settings.ui_auth_header), settings)


def user_from_claims(claims: Mapping[str, object]) -> str | None:
    """The identity in an OpenID Connect user record: the e-mail address, else the subject. An address the
    provider says is not verified (``email_verified`` false) is not used: anyone can type someone else's
    address into an account at many providers, and UI_ADMINS lists addresses."""
    verified = claims.get("email_verified", True)
    if isinstance(verified, str):  # some providers send the claim as a string
        verified = verified.strip().lower() == "true"
    for name in ("email", "sub") if verified is True else ("sub",):
        value = claims.get(name)
        if isinstance(value, str) and value.strip():
            return value
    return None


def from_oidc_cookie(cookies: Mapping[str, str]) -> Identity | None:
    """OIDC mode, for the routes: the user record in Streamlit's signed ``_streamlit_user`` cookie, checked the way
    Streamlit checks it when a page connects (signature with the cookie secret, and the origin of the
    ``redirect_uri`` in secrets.toml). Streamlit keeps these helpers private; if they move, sign-in on the routes
    fails closed (no identity), never open."""
    try:
        from streamlit.auth_util import get_origin_from_redirect_uri
        from streamlit.web.server.starlette.starlette_server_config import USER_COOKIE_NAME
        from streamlit.web.server.starlette.starlette_websocket import (
            _get_signed_cookie_with_chunks,
            _parse_decoded_user_cookie,
        )

        from stereo_spot.config import get_settings

        origin = get_origin_from_redirect_uri()
        decoded = _get_signed_cookie_with_chunks(dict(cookies), USER_COOKIE_NAME)
        if not origin or decoded is None:
            return None
        claims = _parse_decoded_user_cookie(decoded, origin)
    except (ImportError, AttributeError, KeyError, ValueError, json.JSONDecodeError) as exc:
        log.warning("cannot read the sign-in cookie: %s", exc)
        return None
    if not claims.get("is_logged_in"):
        return None
    return make_identity(user_from_claims(claims), get_settings())


def request_identity(headers: Mapping[str, str], cookies: Mapping[str, str], settings: Settings,
                     peer: str | None = None) -> Identity | None:
    """The identity behind one HTTP request to the app's own routes; None: not signed in."""
    if settings.ui_auth == "none":
        return local_identity()
    if settings.ui_auth == "header":
        return from_headers(headers, settings, peer)
    return from_oidc_cookie(cookies)


def can_see(identity: Identity, job: Job) -> bool:
    return identity.admin or (job.owner is not None and job.owner == identity.user)


def visible_job(store: JobStore, job_id: str, identity: Identity) -> Job | None:
    """The job if this user may see it; None both when it does not exist and when it is someone else's."""
    job = store.get(job_id)
    if job is None or not can_see(identity, job):
        return None
    return job


def is_loopback(address: str) -> bool:
    """True for an address only this machine can reach (what UI_AUTH=none may bind to)."""
    import ipaddress

    host = address.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

