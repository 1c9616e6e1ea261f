"""The pages and the navigation between them (run through ``app.py``; AppTest runs this file directly)."""

import streamlit as st

from stereo_spot.ui import context, services

st.set_page_config(page_title="stereo-spot", page_icon=":material/3d_rotation:", layout="wide")

user = context.identity()  # every page needs a signed-in user (UI_AUTH); without one this shows how and stops
if context.settings().ui_auth != "none":
    with st.sidebar:
        st.caption(f"Signed in as {services.escape_markdown(user.user)}" + (" (admin)" if user.admin else ""))
        if context.settings().ui_auth == "oidc":
            st.button("Sign out", icon=":material/logout:", on_click=st.logout)

pages = [
    st.Page("pages/new_conversion.py", title="New conversion", icon=":material/upload:", default=True),
    st.Page("pages/jobs.py", title="Jobs", icon=":material/list:"),
    st.Page("pages/job.py", title="Job", icon=":material/movie:", url_path="job", visibility="hidden"),
    st.Page("pages/how_to_watch.py", title="How to watch", icon=":material/visibility:"),
]
st.navigation(pages, position="sidebar").run()
