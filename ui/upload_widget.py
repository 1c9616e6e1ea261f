"""The file picker: a small browser component that streams the chosen file to ``PUT /api/uploads/{token}``
with a progress bar, then tells the page (a trigger value) so it reruns and picks the file up from the staging
area. Files over the limit are refused in the browser before any byte is sent; the route enforces it again."""

from __future__ import annotations

from typing import Any

import streamlit as st

from stereo_spot.ui.routes import UPLOAD_PATH

ACCEPT = "video/*,.mp4,.m4v,.mov,.mkv,.webm,.avi,.mts,.m2ts,.ts,.wmv,.flv,.mpg,.mpeg"

_HTML = """
<div class="ss-upload">
  <label class="ss-drop">
    <input type="file" accept="{accept}">
    <span class="ss-hint">Choose a video file (or drop it here)</span>
  </label>
  <progress max="1" value="0" hidden></progress>
  <div class="ss-msg" role="status"></div>
</div>
""".replace("{accept}", ACCEPT)

_CSS = """
.ss-upload { font-family: inherit; }
.ss-drop { display: block; border: 1px dashed rgba(128,128,128,.6); border-radius: .5rem; padding: 1rem;
           cursor: pointer; }
.ss-drop input { display: block; margin-bottom: .4rem; }
.ss-hint { opacity: .7; font-size: .9rem; }
.ss-upload progress { width: 100%; height: .8rem; margin-top: .6rem; }
.ss-msg { margin-top: .3rem; font-size: .9rem; min-height: 1.2rem; }
.ss-msg.ss-error { color: #d33; }
.ss-drop.ss-over { border-color: #1c83e1; background: rgba(28,131,225,.06); }
"""

_JS = """
export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  const root = parentElement.querySelector('.ss-upload');
  const input = root.querySelector('input[type=file]');
  const bar = root.querySelector('progress');
  const msg = root.querySelector('.ss-msg');
  const say = (text, isError) => { msg.textContent = text; msg.classList.toggle('ss-error', !!isError); };
  const mb = (n) => n < 1024 ? n + ' bytes' : n < 1048576 ? (n / 1024).toFixed(1) + ' KB' :
    n < 1073741824 ? (n / 1048576).toFixed(1) + ' MB' : (n / 1073741824).toFixed(1) + ' GB';
  if (root.dataset.token !== data.token) {  // a new token: the page wants a fresh picker
    root.dataset.token = data.token;
    input.value = '';
    input.disabled = false;
    bar.hidden = true;
    say('', false);
  }
  const drop = root.querySelector('.ss-drop');
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
      say(ok ? 'Uploaded ' + file.name + ' (' + mb(file.size) + ')' :
               (body.error || ('Upload failed (HTTP ' + xhr.status + ')')), !ok);
      input.disabled = false;
      setTriggerValue('event', { kind: ok ? 'uploaded' : 'failed', token, name: file.name,
                                 error: ok ? null : (body.error || ('HTTP ' + xhr.status)) });
    };
    xhr.onerror = () => {
      const text = 'The upload of ' + file.name + ' was interrupted (connection lost). Try again.';
      say(text, true);
      input.disabled = false;
      setTriggerValue('event', { kind: 'failed', token, name: file.name, error: text });
    };
    input.disabled = true;
    bar.hidden = false; bar.value = 0;
    say('Uploading ' + file.name + '…', false);
    xhr.send(file);  // the browser streams the file from disk
  }
}
"""

_component = st.components.v2.component("stereo_spot_upload", html=_HTML, css=_CSS, js=_JS)


def upload_widget(token: str, max_bytes: int, *, key: str = "upload") -> dict[str, Any] | None:
    """Show the picker; return the browser's last event ({kind, token, name, ...}) on the run it caused."""
    result = _component(key=key, data={"token": token, "max_bytes": int(max_bytes), "endpoint": UPLOAD_PATH},
                        on_event_change=lambda: None)
    event = getattr(result, "event", None) if result is not None else None
    return event if isinstance(event, dict) else None
