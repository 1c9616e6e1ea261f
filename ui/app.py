"""Entry point: ``stereo-spot ui`` or ``streamlit run ui/app.py``.

``st.App`` serves the Streamlit pages (``streamlit_app.py``) and the app's own routes (``routes.py``: streamed
uploads and the video) from one server, so a multi-GB upload or download never passes through Streamlit's
in-memory file handling.
"""

import streamlit as st

from stereo_spot.ui.routes import api_routes

app = st.App("streamlit_app.py", routes=api_routes())
