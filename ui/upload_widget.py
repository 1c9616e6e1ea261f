"""The file picker: a drop zone (a dashed area that takes a dropped file or a click) that streams the chosen file
to ``PUT /api/uploads/{token}`` with a progress bar, then tells the page (a trigger value) so it reruns, picks the
file up from the staging area and checks it. The page shows the checked file (name, size, duration) in place of
the zone, so the file is described once. Files over the limit are refused in the browser before any byte is sent;
the route enforces it again."""

from __future__ import annotations

from typing import Any

import streamlit as st

from stereo_spot.ui.routes import UPLOAD_PATH
from stereo_spot.ui.uploads import format_bytes

ACCEPT = "video/*,.mp4,.m4v,.mov,.mkv,.webm,.avi,.mts,.m2ts,.ts,.wmv,.flv,.mpg,.mpeg"

# The native input stays in the page (keyboard, screen readers and file dialogs use it) but is not drawn: the
# browser's own "Choose File / No file chosen" control reads as a form field, not as a place to drop a film.
_HTML = """
<div class="ss-upload">
  <label class="ss-drop">
    <input type="file" accept="{accept}" aria-label="Choose a video file">
    <svg class="ss-icon" viewBox="0 0 24 24" width="40" height="40" aria-hidden="true">
      <path fill="currentColor" d="M19.35 10.04A7.49 7.49 0 0 0 12 4C9.11 4 6.6 5.64 5.35 8.04A5.994 5.994 0 0 0 0
      14c0 3.31 2.69 6 6 6h13c2.76 0 5-2.24 5-5 0-2.64-2.05-4.78-4.65-4.96zM14 13v4h-4v-4H7l5-5 5 5h-3z"/>
    </svg>
    <span class="ss-title">Drop a video here</span>
    <span class="ss-hint">or <span class="ss-link">choose a file</span> · <span class="ss-limit"></span></span>
    <progress max="1" value="0" hidden></progress>
    <span class="ss-msg" role="status"></span>
  </label>
</div>
""".replace("{accept}", ACCEPT)

_CSS = """
.ss-upload { font-family: inherit; }
.ss-drop { position: relative; display: flex; flex-direction: column; align-items: center; gap: .25rem;
           border: 2px dashed rgba(128,128,128,.55); border-radius: .75rem; padding: 1.6rem 1rem 1.2rem;
           background: rgba(128,128,128,.05); cursor: pointer; text-align: center;
           transition: border-color .15s, background-color .15s; }
.ss-drop:hover, .ss-drop:focus-within { border-color: #1c83e1; }
.ss-drop:focus-within { outline: 2px solid rgba(28,131,225,.35); outline-offset: 2px; }
.ss-drop input { position: absolute; width: 1px; height: 1px; opacity: 0; overflow: hidden; }
.ss-icon { color: rgba(128,128,128,.9); }
.ss-title { font-weight: 600; font-size: 1.05rem; }
.ss-hint { opacity: .75; font-size: .9rem; }
.ss-link { color: #1c83e1; text-decoration: underline; }
.ss-drop progress { width: min(28rem, 90%); height: .6rem; margin-top: .6rem; accent-color: #1c83e1; }
.ss-msg { font-size: .9rem; min-height: 1.2rem; }
.ss-msg.ss-error { color: #d33; font-weight: 600; }
.ss-drop.ss-over { border-color: #1c83e1; background: rgba(28,131,225,.10); }
.ss-drop.ss-busy { cursor: progress; }
"""

_JS = """
export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  const root = parentElement.querySelector('.ss-upload');
  const input = root.querySelector('input[type=file]');
  const bar = root.querySelector('progress');
  const msg = root.querySelector('.ss-msg');
  const drop = root.querySelector('.ss-drop');
  root.querySelector('.ss-limit').textContent = 'up to ' + data.limit_text;
  const say = (text, isError) => { msg.textContent = text; msg.classList.toggle('ss-error', !!isError); };
  const mb = (n) => n < 1024 ? n + ' bytes' : n < 1048576 ? (n / 1024).toFixed(1) + ' KB' :
    n < 1073741824 ? (n / 1048576).toFixed(1) + ' MB' : (n / 1073741824).toFixed(1) + ' GB';
  if (root.dataset.token !== data.token) {  // a new token: the page wants a fresh picker
    root.dataset.token = data.token;
    input.value = '';
    input.disabled = false;
    drop.classList.remove('ss-busy');
    bar.hidden = true;
    say('', false);
  }
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add('ss-over'); };
  drop.ondragleave = () => drop.classList.remove('ss-over');
  drop.ondrop = (e) => {
    e.preventDefault();  // otherwise the browser opens the dropped file instead of the app
    drop.classList.remove('ss-over');
    const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
    if (file && !input.disabled) start(file);
  };
  input.onchange = () => {
    const file = input.files && input.files[0];
    if (file) start(file);
  };
  function start(file) {
    const token = data.token;
    if (file.size > data.max_bytes) {
      say(file.name + ' is ' + mb(file.size) + '; the limit is ' + mb(data.max_bytes) + '.', true);
      setTriggerValue('event', { kind: 'too_large', token, name: file.name, size: file.size });
      return;
    }
    const xhr = new XMLHttpRequest();
    xhr.open('PUT', data.endpoint + encodeURIComponent(token));
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    xhr.setRequestHeader('X-File-Name', encodeURIComponent(file.name));
    xhr.upload.onprogress = (e) => {
      if (!e.lengthComputable) return;
      bar.max = e.total; bar.value = e.loaded;
      say('Uploading ' + file.name + ': ' + mb(e.loaded) + ' of ' + mb(e.total), false);
    };
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (err) { body = {}; }
      if (xhr.status === 404 && !body.error) {  // the page runs without the app's routes
        body.error = 'This server has no upload route: start the app with `stereo-spot ui` ' +
                     '(or `streamlit run ui/app.py`), not ui/streamlit_app.py.';
      }
      const ok = xhr.status >= 200 && xhr.status < 300;
      // on success the page checks the file and then shows it in place of this zone: said once, there
      say(ok ? 'Checking ' + file.name + '…' : (body.error || ('Upload failed (HTTP ' + xhr.status + ')')), !ok);
      input.disabled = false;
      drop.classList.remove('ss-busy');
      setTriggerValue('event', { kind: ok ? 'uploaded' : 'failed', token, name: file.name,
                                 error: ok ? null : (body.error || ('HTTP ' + xhr.status)) });
    };
    xhr.onerror = () => {
      const text = 'The upload of ' + file.name + ' was interrupted (connection lost). Try again.';
      say(text, true);
      input.disabled = false;
      drop.classList.remove('ss-busy');
      setTriggerValue('event', { kind: 'failed', token, name: file.name, error: text });
    };
    input.disabled = true;
    drop.classList.add('ss-busy');
    bar.hidden = false; bar.value = 0;
    say('Uploading ' + file.name + '…', false);
    xhr.send(file);  // the browser streams the file from disk
  }
}
"""

_component = st.components.v2.component("stereo_spot_upload", html=_HTML, css=_CSS, js=_JS)


def upload_widget(token: str, max_bytes: int, *, key: str = "upload") -> dict[str, Any] | None:
    """Show the picker; return the browser's last event ({kind, token, name, ...}) on the run it caused."""
    result = _component(key=key, data={"token": token, "max_bytes": int(max_bytes), "endpoint": UPLOAD_PATH,
                                       "limit_text": format_bytes(max_bytes)},
                        on_event_change=lambda: None)
    event = getattr(result, "event", None) if result is not None else None
    return event if isinstance(event, dict) else None
