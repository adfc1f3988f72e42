"""Headless Chromium for report tests: install Debian's package where missing, then load a page."""

from __future__ import annotations

import html as html_lib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

PROBE_ID = "probe-result"
# Records every image's load state and every error or console warning into the DOM on load.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  var target = e.target && e.target.tagName ? e.target.tagName + ' ' + (e.target.alt || '') : '';
  window.__errors.push('error: ' + (e.message || target));
}, true);
['error', 'warn'].forEach(function (level) {
  var original = console[level];
  console[level] = function () {
    window.__errors.push(level + ': ' + Array.prototype.join.call(arguments, ' '));
    original.apply(console, arguments);
  };
});
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images).map(function (img) {
    return {alt: img.alt, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight};
  });
  var out = document.createElement('pre');
  out.id = '__PROBE_ID__';
  out.textContent = JSON.stringify({images: images, errors: window.__errors});
  document.body.appendChild(out);
});
</script>""".replace("__PROBE_ID__", PROBE_ID)


@dataclass(frozen=True)
class PageState:
    images: list[dict[str, object]]
    errors: list[str]
    console: list[str]


def chromium() -> str:
    """Path of Debian's chromium; installed with apt-get (as root) when missing, else skip."""
    found = shutil.which("chromium")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("chromium is not installed and cannot be installed here (needs apt-get as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, check=False)
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    found = shutil.which("chromium")
    if result.returncode != 0 or not found:
        pytest.skip(f"apt-get could not install chromium: {result.stderr[-500:]}")
    return found


def _run(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    base = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    return subprocess.run(
        [*base, *args], capture_output=True, text=True, timeout=180, check=False
    )


def screenshot(html: Path, out_png: Path, *, width: int = 1280, height: int = 2400) -> None:
    """A screenshot of ``html`` at ``width`` × ``height`` CSS pixels."""
    result = _run(
        chromium(), f"--window-size={width},{height}", f"--screenshot={out_png}", html.as_uri()
    )
    assert out_png.exists(), result.stderr[-2000:]


def load_state(html: Path, work: Path) -> PageState:
    """Load a copy of ``html`` with the probe injected; image states, errors and console lines."""
    probed = work / f"{html.stem}.probe.html"
    text = html.read_text(encoding="utf-8")
    probed.write_text(text.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    result = _run(
        chromium(),
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=15000",
        "--dump-dom",
        probed.as_uri(),
    )
    match = re.search(rf'<pre id="{PROBE_ID}">(.*?)</pre>', result.stdout, flags=re.S)
    assert match is not None, f"the probe did not run: {result.stderr[-2000:]}"
    state = json.loads(html_lib.unescape(match.group(1)))
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    return PageState(images=state["images"], errors=state["errors"], console=console)
