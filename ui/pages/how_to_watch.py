"""How to watch: which players and headsets take which format, and a playlist of the finished videos."""

import pandas as pd
import streamlit as st

from stereo_spot.models import OutputFormat
from stereo_spot.naming import LAYOUT_SUFFIX
from stereo_spot.ui import context, services
from stereo_spot.ui.routes import video_path

# Playlist length: the newest finished videos, read a page at a time.
PLAYLIST_JOBS = 200

st.title("How to watch")
st.markdown(
    "Side-by-side and top-bottom files carry both eyes in one picture: a **VR headset** or a **3D TV** splits "
    "them. **Anaglyph** files play anywhere and need red-cyan glasses. Downloads are named with the suffix "
    "players look for, so most detect the layout on their own.")

st.subheader("Players and headsets")
# st.table wraps long cells (a dataframe would cut them off)
st.table(pd.DataFrame(services.PLAYERS, columns=["Device / player", "Format", "Notes"]), hide_index=True,
         border="horizontal")

st.subheader("Formats")
st.table(pd.DataFrame([(f.label, f"…{LAYOUT_SUFFIX[f]}.mp4", services.FORMAT_HELP[f]) for f in OutputFormat],
                      columns=["Format", "File name ends", "What it is for"]), hide_index=True, border="horizontal")
st.caption("Full formats keep each eye's full resolution (the file is twice as wide or tall); half formats "
           "fit both eyes in the original frame size, which every 3D TV accepts.")

st.subheader("Playlist")
backend = context.backend()
with context.store_errors():
    finished = services.iter_completed(backend.jobs, PLAYLIST_JOBS, owner=context.identity().owner_filter)
finished = [job for job in finished if not job.settings.depth_output]  # depth videos are not for watching
jobs = [job for job in finished if services.delivered_outside_store(job) is None]
if len(jobs) < len(finished):
    elsewhere = len(finished) - len(jobs)
    st.caption(f"{elsewhere} finished video{'s were' if elsewhere != 1 else ' was'} written outside the app by "
               "the command line (each job's page says where) and not in the playlist.")
if not finished:
    st.caption("No finished videos yet.")
if jobs:
    base = context.origin()
    playlist = services.playlist_m3u(
        services.PlaylistEntry(job.title, base + video_path(job.job_id), job.source_duration_seconds)
        for job in jobs)
    count = f"{len(jobs)} video" + ("s" if len(jobs) != 1 else "")
    st.download_button(f"Download playlist ({count}, M3U)", playlist, file_name="stereo-spot.m3u",
                       mime="audio/x-mpegurl", icon=":material/playlist_play:", type="primary")
    st.caption("Open it in VLC, Kodi, DeoVR or Skybox on a device that can reach this app; the links go "
               "through the app, so they do not expire.")
