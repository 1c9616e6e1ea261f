"""Streamlit-side helpers the pages share: the backend with a readable error when the store is unreachable,
the app's own URL (for links to the video route), and cached figures."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from urllib.parse import urlsplit

import streamlit as st
from pydantic import ValidationError

from stereo_spot.config import Settings
from stereo_spot.errors import one_line
from stereo_spot.ports import Backend, StoreError
from stereo_spot.ui import auth, services
from stereo_spot.ui.backend import backend_for, current_settings

# When the page cannot tell its own address (no browser attached, as in AppTest).
FALLBACK_ORIGIN = "http://127.0.0.1:8501"
# Completed jobs the ETA averages over.
RECENT_JOBS = 20


def store_error_message(exc: BaseException) -> str:
    return (f"The job store cannot be reached: {one_line(exc)}. Check STORAGE_ADAPTER and the storage settings "
            "(or that the AWS endpoint is up), then reload the page.")


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Turn a store failure inside the block into a message on the page instead of a traceback."""
    try:
        yield
    except (StoreError, OSError) as exc:
        st.error(store_error_message(exc), icon=":material/cloud_off:")
        st.stop()


def settings() -> Settings:
    try:
        return current_settings()
    except ValidationError as exc:
        st.error(f"The app's settings are invalid: {one_line(exc)}", icon=":material/settings:")
        st.stop()


def page_identity(config: Settings) -> auth.Identity | None:
    """The signed-in user as the page sees it (the routes use ``auth.request_identity`` on the same data)."""
    if config.ui_auth == "none":
        return auth.local_identity()
    if config.ui_auth == "header":
        # Streamlit reports a loopback peer as None
        return auth.from_headers(dict(st.context.headers), config, st.context.ip_address or "127.0.0.1")
    if not st.user.get("is_logged_in"):
        return None
    return auth.make_identity(auth.user_from_claims(dict(st.user)), config)


def identity() -> auth.Identity:
    """The signed-in user; a page without one shows how to sign in and stops."""
    config = settings()
    who = page_identity(config)
    if who is not None:
        return who
    st.title("Sign in")
    if config.ui_auth == "oidc":
        st.info("Sign in to convert videos and see your jobs.", icon=":material/login:")
        st.button("Sign in", type="primary", icon=":material/login:", on_click=st.login)
    else:
        st.error(f"No signed-in user: the app expects the {config.ui_auth_header} header from the "
                 "authenticating proxy in front of it. Open the app through that proxy.", icon=":material/lock:")
    st.stop()


def backend() -> Backend:
    with store_errors():
        return backend_for(settings())


def origin() -> str:
    """scheme://host:port the browser uses for this app (the video route lives there too)."""
    url = st.context.url
    if not url:
        return FALLBACK_ORIGIN
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else FALLBACK_ORIGIN


@st.cache_data(ttl=60, show_spinner=False)
def _recent_seconds_per_mb(settings_key: str) -> float | None:
    store = backend_for(settings()).jobs
    return services.average_seconds_per_mb(store.list_completed(limit=RECENT_JOBS).items)


def recent_seconds_per_mb() -> float | None:
    """Average seconds per MB of the last completed jobs (refreshed every minute)."""
    with store_errors():
        return _recent_seconds_per_mb(settings().model_dump_json())
