"""The new-conversion form's depth video choices: make the depth video instead of a 3D video, or render from an
edited one uploaded beside the video (its own drop zone and staging slot, shown only when asked for, so the page
keeps one drop zone otherwise)."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from stereo_spot.ui import services
from stereo_spot.ui.upload_widget import upload_widget
from stereo_spot.ui.uploads import StagedUpload, StagingArea, too_large_message

TOKEN_KEY = "depth_upload_token"


@dataclass(frozen=True)
class DepthChoice:
    depth_output: bool  # the job writes the depth video
    depth_video: StagedUpload | None  # the checked-in depth video to render from (None: estimate the depth)


def _fresh_slot(area: StagingArea, owner: str, error: str | None = None) -> None:
    old = st.session_state.get(TOKEN_KEY)
    if old:
        area.discard(old)
    st.session_state[TOKEN_KEY] = area.new_token(owner)
    if error:
        st.session_state["depth_upload_error"] = error


def discard(area: StagingArea) -> None:
    """Forget the staged depth video (after a job took it, or with the video it belonged to)."""
    token = st.session_state.pop(TOKEN_KEY, None)
    if token:
        area.discard(token)


def depth_choices(area: StagingArea, owner: str, max_bytes: int) -> DepthChoice:
    with st.expander("Depth video", icon=":material/gradient:"):
        depth_output = st.toggle("Make the depth video instead of a 3D video", key="depth_output",
                                 help=services.DEPTH_OUTPUT_HELP)
        if depth_output:
            return DepthChoice(True, None)
        if not st.toggle("Render from an edited depth video", key="use_depth_video", help=services.DEPTH_VIDEO_HELP):
            discard(area)
            return DepthChoice(False, None)
        if TOKEN_KEY not in st.session_state:
            _fresh_slot(area, owner)
        token = st.session_state[TOKEN_KEY]
        if message := st.session_state.pop("depth_upload_error", None):
            st.error(services.escape_markdown(message), icon=":material/error:")
        staged = area.get(token)
        if staged is None:
            event = upload_widget(token, max_bytes, key="depth-upload")
            if event and event.get("token") == token and event.get("kind") in ("too_large", "failed"):
                name = str(event.get("name") or "the file")
                _fresh_slot(area, owner, too_large_message(name, event.get("size"), max_bytes)
                            if event.get("kind") == "too_large" else str(event.get("error") or "the upload failed"))
                st.rerun()
            return DepthChoice(False, None)
        area.touch(token)
        if not staged.ok:
            _fresh_slot(area, owner, staged.error)
            st.rerun()
        with st.container(border=True, key="checked-depth-video"):
            left, right = st.columns([5, 2], vertical_alignment="center")
            left.markdown(f":material/gradient: **{services.escape_markdown(staged.name)}**  \n"
                          "the depth to render from (checked against the video when the job starts)")
            if right.button("Choose another depth video", icon=":material/swap_horiz:"):
                _fresh_slot(area, owner)
                st.rerun()
        return DepthChoice(False, staged)
