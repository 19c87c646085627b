#!/usr/bin/python3
"""Opens every page of the built site in headless Chromium, served on localhost and from file://,
and fails on anything a reader would see broken:

  mathjax   MathJax missing on a page with math, or typesetting nothing
  math      a MathJax error (TeX that does not parse, an undefined macro, a processing error)
  raw-tex   TeX left as text: $$, \\( \\), \\[ \\], a macro such as \\frac outside code blocks
  console   a console message of level SEVERE (script errors, failed loads)
  network   a request to any host but the local one, or a local request that failed (>= 400)
  link      an internal link to a missing page or file, or to an anchor the page does not have

and, at 1280 px and at 700 px wide:

  eq-overlap   an equation number that overlaps its formula, or comes closer than MIN_GAP px
               (bounding boxes of the number's text and of the typeset formula, as clipped)
  math-scroll  a numbered formula wider than its column at 1280 px (cut off, to be scrolled)
  code-scroll  a code block that scrolls sideways at 1280 px (scrollWidth > clientWidth)
  code-font    code whose combining mark (the hat of x̂) is drawn by another font than its base
               letter, or by a font that is not one of the site's web fonts, or takes its own
               advance (a detached hat); the fonts are the browser's own account (CDP)
  dup-id       an HTML id that appears twice on a page
  graph-alt    a graph (Graphviz figure) without alt text, or with its dot source as alt text
  graph-label  a graph label smaller than LABEL_PX (SUP_PX for super-/subscripts) as rendered,
               or a fake superscript (^, or Unicode superscript characters)
  graph-theme  a graph whose strokes and labels are not legible against what is behind them, in
               the light or in the dark theme (prefers-color-scheme emulated; Furo follows it):
               the contrast of its ink with its background, from a screenshot of the graph

Each page is checked from file:// with all of these, after MathJax has typeset it, and then
served with those whose outcome can differ between the two: mathjax (MathJax.js loaded and
started), console, network and link. The served page is not typeset: the TeX, MathJax and the
styles are the same files either way, so what MathJax makes of them and the layout do not depend
on where they come from; only the loading can differ. What the page loaded from file:// while
typesetting (MathJax's fonts and extensions, requested only then) and did not load served is
then requested from the server by the served page, and must come back below 400.

It first runs the same checks over the pages in tests/site/fixtures/, each broken in one known
way (and one that is not broken at all), and fails unless it finds exactly those problems: a
check that cannot fail is no check. It saves a screenshot of the batch-norm page in each theme.

Speed (the aim: the whole site in both modes within 20 s on two cores): one browser per core for
the whole run, each taking the next unchecked page, the largest first; the fixture pages share
the same queue; a browser starts only for pages not in the cache (--no-cache: all). Each page is
loaded once per mode and typeset once. A page is measured at the width it was loaded at and then
at the other one, and its graphs are shot in the theme it was loaded in and then in the other
one; the browser keeps the width and theme it was left in for its next page, so each page costs
one change of width and, if it has graphs, one of theme. Graphs are shot within the viewport
(scrolled to), not beyond it: a capture beyond the viewport lays out the whole page again. It
prints where the time went (phases summed over pages, the slowest pages, the CPU time of the
browsers).

    browser_test.py SITE_HTML_DIR --artifacts DIR [--screenshot derivations/batchnorm.html]

Debian packages: chromium, chromium-driver, python3-selenium, python3-pil (run with
/usr/bin/python3).
"""
from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import functools
import hashlib
import io
import http.server
import json
import os
import re
import resource
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WIDE, NARROW = 1280, 700  # the widths at which the layout is checked
HEIGHT = 1000             # of the viewport
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--hide-scrollbars", f"--window-size={WIDE},{HEIGHT}"]
MIN_GAP = 8        # px between an equation number and its formula
LABEL_PX = 11.0    # smallest graph label, as rendered (CSS px)
SUP_PX = 8.0       # smallest super- or subscript in a graph label
MIN_CONTRAST = 4.5  # WCAG AA for text: a graph's ink against its background, in either theme
FAKE_SUPERSCRIPT = re.compile("[\\^\u00b2\u00b3\u00b9\u2070-\u207f]")
# The checks of the served pages: what can differ from file:// (see the module's docstring).
SERVED = {"mathjax", "console", "network", "link"}
# Requests that a page makes late (fonts) reach the log a moment after typesetting: the log is
# read no sooner than this after the page probe.
LATE_LOG = 0.05
GRAPHS = ("img.graphviz, object.graphviz, .graphviz > img, .graphviz > object, "
          ".graphviz > svg")

# Runs in the page once it has loaded. With arguments[0] true (from file://): waits for MathJax to
# finish typesetting (if the page has math) and reports what the reader would see. With false
# (served): reports only whether MathJax is there to typeset, and the links and ids.
PAGE_PROBE = r"""
const typeset = arguments[0], done = arguments[arguments.length - 1];
function links() {
  return {links: Array.from(document.querySelectorAll('a[href]'), a => a.href),
          ids: Array.from(document.querySelectorAll('[id]'), e => e.id)
               .concat(Array.from(document.querySelectorAll('a[name]'),
                                  e => e.getAttribute('name'))),
          title: document.title};
}
function report(mathjax) {
  if (!typeset) {
    done(Object.assign({mathjax, errors: [], raw: []}, links()));
    return;
  }
  const errors = [];
  for (const e of document.querySelectorAll('.mjx-merror, .MathJax_Error, merror, .mjx-noError'))
    errors.push((e.getAttribute('data-mjx-error') || e.textContent || '').trim().slice(0, 200));
  if (document.body.textContent.includes('Math Processing Error'))
    errors.push('Math Processing Error');
  // The text a reader sees outside code: drop code, scripts and MathJax's rendered output, and
  // the fallback inside <object> (Graphviz figures carry their dot source there; it shows only
  // if the SVG fails to load, which the request checks report).
  const clone = document.body.cloneNode(true);
  for (const e of clone.querySelectorAll(
      'script, style, pre, code, .highlight, .mjx-chtml, .MathJax_CHTML, .MathJax_SVG, .MathJax, ' +
      '.MJX_Assistive_MathML, .MathJax_Preview, noscript, template, object > *'))
    e.remove();
  const text = clone.textContent;
  const raw = [];
  const pattern = /\$\$|\\\(|\\\)|\\\[|\\\]|\\[a-zA-Z]{2,}|\$[^$\n]*[\\^_][^$\n]*\$/g;
  let m;
  while ((m = pattern.exec(text)) !== null && raw.length < 5)
    raw.push(text.slice(Math.max(0, m.index - 40), m.index + 40).replace(/\s+/g, ' '));
  const mathNodes = document.querySelectorAll('.math, script[type^="math/tex"]').length;
  const rendered = document.querySelectorAll('.mjx-chtml, .MathJax_SVG, .MathJax_CHTML').length;
  done(Object.assign({mathjax, errors, raw, mathNodes, rendered}, links()));
}
if (!document.querySelector('.math, script[type^="math/tex"]')) {
  report('no math on page');
  return;
}
// The probe runs once the load event has fired (WebDriver's page load), and the load event waits
// for the async MathJax.js of the page: MathJax is there by now, or it failed to load. The
// grace of 0.5 s is for a page that starts MathJax from a script of its own.
let tries = 0;
// Typeset: after any typesetting still queued. Not: once MathJax has started (its files loaded).
const ready = () => typeset ? MathJax.Hub.Queue(() => report('typeset')) : report('loaded');
(function wait() {
  if (window.MathJax && MathJax.isReady) {
    ready();
  } else if (window.MathJax && MathJax.Hub && MathJax.Hub.Register) {
    MathJax.Hub.Register.StartupHook('End', ready);
  } else if (++tries > 10) {
    report('MathJax did not load');
  } else {
    setTimeout(wait, 50);
  }
})();
"""


# Runs after PAGE_PROBE on a served page, at the current width; see the module's docstring.
# arguments: MIN_GAP, and whether to measure everything (at 1280 px) or only the equations.
LAYOUT_PROBE = r"""
const MIN_GAP = arguments[0], full = arguments[1];
const out = {eqs: [], clipped: [], code: [], graphs: [], comb: 0, dupIds: [],
             width: window.innerWidth};
function visible(r, el) {  // r clipped by every scrolling/clipping ancestor of el
  let x0 = r.left, x1 = r.right, y0 = r.top, y1 = r.bottom;
  for (let a = el.parentElement; a; a = a.parentElement) {
    const s = getComputedStyle(a);
    if (s.overflowX !== 'visible' || s.overflowY !== 'visible') {
      const c = a.getBoundingClientRect();
      x0 = Math.max(x0, c.left); x1 = Math.min(x1, c.right);
      y0 = Math.max(y0, c.top); y1 = Math.min(y1, c.bottom);
    }
  }
  return {left: x0, right: x1, top: y0, bottom: y1};
}
const blockId = b => b.id || (b.parentElement && b.parentElement.id) || '?';
// A numbered formula cut off by its wrapper: the room kept for its number must not cost the
// formula its fit at 1280 px.
if (full) {
  for (const block of document.querySelectorAll('div.math')) {
    if (!block.querySelector('.eqno')) continue;
    for (const m of block.querySelectorAll('.mjx-math')) {
      const r = m.getBoundingClientRect(), v = visible(r, m);
      if (v.right < r.right - 1 || v.left > r.left + 1)
        out.clipped.push({id: blockId(block), hidden: Math.round(r.width - (v.right - v.left))});
    }
  }
}
const numbers = document.querySelectorAll('.math .eqno, .math-wrapper .eqno');
out.numbered = numbers.length;
for (const num of numbers) {
  const block = num.closest('.math');
  const text = Array.from(num.childNodes).find(n => n.nodeType === 3 && n.textContent.trim());
  if (!block || !text) continue;
  const range = document.createRange(); range.selectNodeContents(text);
  const n = range.getBoundingClientRect();
  let f = null;
  for (const m of block.querySelectorAll('.mjx-math, .MathJax_SVG > svg, .MathJax_CHTML')) {
    const r = visible(m.getBoundingClientRect(), m);
    if (r.right <= r.left || r.bottom <= r.top) continue;
    f = f ? {left: Math.min(f.left, r.left), right: Math.max(f.right, r.right),
             top: Math.min(f.top, r.top), bottom: Math.max(f.bottom, r.bottom)} : r;
  }
  if (!f || n.width === 0) continue;  // not typeset
  const nv = visible(n, num);
  const number = text.textContent.trim();
  if (nv.right < n.right - 1 || nv.left > n.left + 1) {  // cut off by a scrolling wrapper
    out.eqs.push({id: block.id || '?', number, gap: 0, overlaps: true, cut: true});
    continue;
  }
  const vertical = Math.min(n.bottom, f.bottom) - Math.max(n.top, f.top);
  const gap = Math.max(n.left - f.right, f.left - n.right);
  out.eqs.push({id: blockId(block), number, gap: Math.round(gap),
                overlaps: vertical > 0 && gap < MIN_GAP});
}
if (!full) return out;
for (const pre of document.querySelectorAll('pre')) {
  if (pre.scrollWidth > pre.clientWidth + 1) {
    const lines = pre.textContent.split('\n');
    const longest = lines.reduce((a, b) => (b.length > a.length ? b : a), '');
    out.code.push({over: pre.scrollWidth - pre.clientWidth, columns: longest.length,
                   line: longest.trim().slice(0, 80)});
  }
}
for (const g of document.querySelectorAll('%GRAPHS%')) {
  const r = g.getBoundingClientRect();
  const alt = g.tagName === 'IMG' ? g.getAttribute('alt') : (g.getAttribute('aria-label') || '');
  out.graphs.push({tag: g.tagName.toLowerCase(),
                   src: g.currentSrc || g.getAttribute('src') || g.getAttribute('data') || '',
                   alt: (alt || '').trim(), width: r.width,
                   complete: g.tagName !== 'IMG' || (g.complete && g.naturalWidth > 0)});
}
// Code text with a combining mark (x̂): marked for the font check, which asks the browser (CDP)
// which fonts rendered it; and the advance of base + mark, which must equal the base's alone.
let k = 0;
for (const el of document.querySelectorAll('pre span, pre, code')) {
  const t = Array.from(el.childNodes).filter(n => n.nodeType === 3);
  for (const node of t) {
    const m = /[^\s\u0300-\u036f][\u0300-\u036f]/.exec(node.textContent);
    if (!m) continue;
    el.setAttribute('data-gp-comb', String(k));
    const range = document.createRange();
    range.setStart(node, m.index); range.setEnd(node, m.index + 2);
    const both = range.getBoundingClientRect().width;
    range.setEnd(node, m.index + 1);
    const base = range.getBoundingClientRect().width;
    out['comb' + k] = {text: node.textContent.slice(Math.max(0, m.index - 10), m.index + 12),
                       both, base};
    k++;
    break;
  }
}
out.comb = k;
const seen = new Map();
for (const e of document.querySelectorAll('[id]')) seen.set(e.id, (seen.get(e.id) || 0) + 1);
out.dupIds = Array.from(seen).filter(([id, n]) => n > 1).map(([id, n]) => `${id} (${n}x)`);
return out;
""".replace("%GRAPHS%", GRAPHS)

# Runs before the scripts of a page that is not to be typeset (a served page): MathJax 2 takes a
# window.MathJax object that exists before MathJax.js as its first configuration. MathJax starts
# (loads its configuration, input and output processors) but does not look for math.
SKIP_TYPESET = "window.MathJax = {skipStartupTypeset: true};"

# Scrolls the k-th graph into view and returns where it is on the page (CSS px, page
# coordinates, as Page.captureScreenshot's clip takes them) and whether it fits the viewport.
GRAPH_BOX = r"""
const g = document.querySelectorAll('%GRAPHS%')[arguments[0]];
const top = g.getBoundingClientRect().top + window.scrollY;
window.scrollTo({left: 0, top: Math.max(0, top - 16), behavior: 'instant'});
const r = g.getBoundingClientRect();
return {x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width, height: r.height,
        fits: r.top >= 0 && r.left >= 0 && r.bottom <= window.innerHeight &&
              r.right <= window.innerWidth};
""".replace("%GRAPHS%", GRAPHS)


@dataclass
class PageResult:
    page: str
    mode: str
    problems: list[tuple[str, str]] = field(default_factory=list)  # (category, detail)
    links: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    loaded: list[str] = field(default_factory=list)  # local URLs loaded, as requested
    cached: bool = False

    @contextlib.contextmanager
    def phase(self, name: str):
        t = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.monotonic() - t


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # requests are checked through the browser, not the log
        pass


class Server:
    """A tree of pages on http://127.0.0.1:<free port>/, in a thread."""

    def __init__(self, root: Path):
        handler = functools.partial(QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


# Chromium sees the system's fonts except MathJax's. Debian's libjs-mathjax pulls in fonts-mathjax,
# and with those installed the browser never asks the site for its own copies; a reader's machine
# has no such fonts, so the test hides them and the site's web fonts must load.
HIDDEN_FONTS = "/usr/share/fonts/opentype/mathjax/*"


def fontconfig(profile: str) -> str:
    path = Path(profile) / "fonts.conf"
    path.write_text('<?xml version="1.0"?>\n<fontconfig>\n'
                    '  <include ignore_missing="yes">/etc/fonts/fonts.conf</include>\n'
                    f"  <selectfont><rejectfont><glob>{HIDDEN_FONTS}</glob></rejectfont>"
                    "</selectfont>\n"
                    f"  <cachedir>{profile}/fontcache</cachedir>\n</fontconfig>\n",
                    encoding="utf-8")
    return str(path)


def other(value, pair):
    return pair[1] if value == pair[0] else pair[0]


class Browser:
    """One Chromium with one tab for the whole run. Its width and theme stay as the last page left
    them (see the module's docstring): self.width and self.theme say which they are."""

    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="gradproof-chromium-")
        env = dict(os.environ, FONTCONFIG_FILE=fontconfig(self.profile))
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS + [f"--user-data-dir={self.profile}"]:
            opts.add_argument(flag)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        # The performance log: network events only (the checks read nothing else).
        opts.add_experimental_option("perfLoggingPrefs", {"enableNetwork": True,
                                                          "enablePage": False})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER, env=env), options=opts)
        self.driver.set_script_timeout(60)
        self.driver.set_page_load_timeout(60)
        self.driver.get("about:blank")  # leave the new-tab page and what it loads behind
        self.set_width(WIDE)
        self.set_theme("light")
        self.probed = 0.0  # when the last page probe returned
        self.skip_typeset = None  # while pages are loaded without typesetting: the CDP script id
        time.sleep(0.5)
        self.drain_logs()

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of ChromeDriver and every process of its Chromium so far,
        with the processes that ended (renderers of pages left behind) counted by their
        parents."""
        tick = os.sysconf("SC_CLK_TCK")
        stats = {}
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(p.name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
        tree = {self.driver.service.process.pid}
        while True:  # children of the tree, until none is new
            more = {pid for pid, (ppid, _) in stats.items() if ppid in tree} - tree
            if not more:
                break
            tree |= more
        total = sum(stats[pid][1] for pid in tree if pid in stats)
        return total / tick

    def close(self):
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def set_width(self, width: int) -> None:
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": width, "height": HEIGHT, "deviceScaleFactor": 1,
                                     "mobile": False})
        self.width = width

    def set_theme(self, scheme: str) -> None:
        self.driver.execute_cdp_cmd("Emulation.setEmulatedMedia",
                                    {"features": [{"name": "prefers-color-scheme",
                                                   "value": scheme}]})
        self.theme = scheme

    def drain_logs(self):
        self.driver.get_log("browser")
        self.driver.get_log("performance")

    def load(self, url: str, res: PageResult, typeset: bool) -> dict:
        """Loads url and, if typeset, waits for MathJax to typeset it; if not, MathJax starts
        but is told not to typeset (SKIP_TYPESET). Returns the page probe's report."""
        if typeset != (self.skip_typeset is None):
            if typeset:
                self.driver.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument",
                                            {"identifier": self.skip_typeset})
                self.skip_typeset = None
            else:
                self.skip_typeset = self.driver.execute_cdp_cmd(
                    "Page.addScriptToEvaluateOnNewDocument", {"source": SKIP_TYPESET})["identifier"]
        with res.phase("drain"):
            self.drain_logs()
        with res.phase("load"):
            self.driver.get(url)
        try:
            with res.phase("mathjax"):
                probe = self.driver.execute_async_script(PAGE_PROBE, typeset)
        except TimeoutException:
            probe = {"mathjax": "timed out waiting for MathJax", "errors": [], "raw": [],
                     "links": [], "ids": []}
        self.probed = time.monotonic()
        return probe

    def log_problems(self, local: callable, res: PageResult) -> list[tuple[str, str]]:
        """The console and network problems of the page loaded last, as logged so far; the local
        requests that got a response below 400 go into res.loaded."""
        with res.phase("logs"):
            time.sleep(max(0.0, LATE_LOG - (time.monotonic() - self.probed)))
            return self._log_problems(local, res.loaded)

    def _log_problems(self, local: callable, loaded: list[str]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        for entry in self.driver.get_log("browser"):
            if entry.get("level") == "SEVERE":
                problems.append(("console", entry.get("message", "")[:300]))
        pending: dict[str, str] = {}
        for entry in self.driver.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            method, params = msg.get("method"), msg.get("params", {})
            if method == "Network.requestWillBeSent":
                if params.get("documentURL", "").startswith(("chrome://", "chrome-untrusted://")):
                    continue  # the browser's own pages, not ours
                req_url = params["request"]["url"]
                pending[params["requestId"]] = req_url
                if not local(req_url):
                    problems.append(("network", f"request to another host: {req_url[:200]}"))
            elif method == "Network.responseReceived":
                status, got = params["response"].get("status", 0), params["response"]["url"]
                if status >= 400:
                    problems.append(("network", f"HTTP {status} for {got[:200]}"))
                elif local(got):
                    loaded.append(got)
            elif method == "Network.loadingFailed":
                failed = pending.get(params["requestId"], "?")
                if local(failed):  # a failed request elsewhere is already reported above
                    problems.append(("network", f"failed to load {failed[:200]}: "
                                                f"{params.get('errorText')}"))
        return problems


# ---- Layout: equation numbers, code blocks, fonts, graphs -------------------------------------

def luminance(rgb: tuple[int, int, int]) -> float:
    def lin(c):
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (lin(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def ink_contrast(png: bytes) -> float:
    """The contrast of a graph's ink with its background, from a screenshot of it: the background is
    its most common colour; the ink, the pixels that differ from it, of which the 90th percentile of
    contrast counts (strokes are anti-aliased at their edges). 21 for black on white; a graph with
    no ink at all has nothing to read, and counts as legible."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    # At most one colour per pixel (a larger bound costs PIL a table of that size: 0.15 s a shot)
    colours = image.getcolors(maxcolors=image.width * image.height)
    bg_count, bg = max(colours)
    lbg = luminance(bg)
    ink = sorted(((max(lum, lbg) + 0.05) / (min(lum, lbg) + 0.05), n)
                 for n, c in colours if c != bg for lum in [luminance(c)])
    total = sum(n for _, n in ink)
    if total == 0:
        return 21.0
    seen = 0
    for ratio, n in ink:
        seen += n
        if seen >= 0.9 * total:
            return ratio
    return ink[-1][0]


def svg_label_problems(svg: Path, rendered_width: float) -> list[str]:
    """Labels of a Graphviz SVG as rendered at rendered_width CSS px: size and fake superscripts."""
    import xml.etree.ElementTree as ET
    try:
        tree = ET.parse(svg)
    except (OSError, ET.ParseError) as e:
        return [f"cannot read {svg.name}: {e}"]
    root = tree.getroot()
    view = (root.get("viewBox") or "").split()
    width = (float(view[2]) if len(view) == 4
             else float(re.sub(r"[a-z]+$", "", root.get("width", "0")) or 0))
    if width <= 0:
        return [f"{svg.name} has neither a viewBox nor a width"]
    scale = rendered_width / width
    out = []
    for t in root.iter("{http://www.w3.org/2000/svg}text"):
        text = "".join(t.itertext()).strip()
        if not text:
            continue
        size = float(t.get("font-size", "14")) * scale
        script = t.get("baseline-shift") in ("super", "sub") or t.get("class") in ("sup", "sub")
        least = SUP_PX if script else LABEL_PX
        if size < least:
            out.append(f"label {text!r} renders at {size:.1f} px (at least {least:g})")
        if FAKE_SUPERSCRIPT.search(text):
            out.append(f"label {text!r} fakes a superscript (^ or a Unicode superscript "
                       "character)")
    return out


def code_font_problems(browser: Browser, probe: dict) -> list[str]:
    """For each code element with a combining mark: the fonts the browser used for its text."""
    if not probe["comb"]:
        return []
    d = browser.driver
    d.execute_cdp_cmd("DOM.enable", {})
    d.execute_cdp_cmd("CSS.enable", {})
    doc = d.execute_cdp_cmd("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
    out = []
    for k in range(probe["comb"]):
        info = probe[f"comb{k}"]
        found = d.execute_cdp_cmd("DOM.querySelector",
                                  {"nodeId": doc, "selector": f'[data-gp-comb="{k}"]'})
        fonts = d.execute_cdp_cmd("CSS.getPlatformFontsForNode",
                                  {"nodeId": found["nodeId"]})["fonts"]
        names = [f"{f['familyName']}{'' if f.get('isCustomFont') else ' (a system font)'}"
                 for f in fonts]
        where = info["text"].strip()
        if len(fonts) != 1 or not fonts[0].get("isCustomFont"):
            out.append(f"{where!r} is drawn with {', '.join(names) or 'no font'}: not one web "
                       "font of the site")
        if abs(info["both"] - info["base"]) > 0.5:
            out.append(f"{where!r}: the combining mark takes its own advance "
                       f"({info['both'] - info['base']:.1f} px): a detached hat")
    d.execute_cdp_cmd("CSS.disable", {})
    d.execute_cdp_cmd("DOM.disable", {})
    return out


def eq_problems(probe: dict) -> list[tuple[str, str]]:
    out = []
    for e in probe["eqs"]:
        if e["overlaps"]:
            out.append(("eq-overlap",
                        f"{probe['width']} px: equation number {e['number']} ({e['id']}) is cut "
                        "off by its wrapper" if e.get("cut") else
                        f"{probe['width']} px: equation {e['number']} ({e['id']}) is {e['gap']} "
                        f"px from its formula (at least {MIN_GAP})"))
    return out


def wide_problems(browser: Browser, root: Path, res: PageResult, wide: dict,
                  shots: dict | None) -> list[tuple[str, str]]:
    """The checks at 1280 px beyond the equations': scrolling, fonts, ids, graphs in both
    themes (the one the page is in first), and the full-page screenshots if asked for."""
    d = browser.driver
    problems: list[tuple[str, str]] = []
    for c in wide["clipped"]:
        problems.append(("math-scroll", f"{WIDE} px: numbered formula {c['id']} does not fit its "
                                        f"column: {c['hidden']} px of it are scrolled out of "
                                        "view"))
    for c in wide["code"]:
        problems.append(("code-scroll", f"{WIDE} px: a code block scrolls sideways by "
                                        f"{c['over']} px; its longest line has {c['columns']} "
                                        f"columns: {c['line']!r}"))
    with res.phase("code-font"):
        problems += [("code-font", p) for p in code_font_problems(browser, wide)]
    problems += [("dup-id", f"id {i} appears more than once") for i in wide["dupIds"]]
    for g in wide["graphs"]:
        name = urllib.parse.unquote(urllib.parse.urlsplit(g["src"]).path).rsplit("/", 1)[-1]
        g["name"] = name or "?"
        alt = g["alt"]
        if len(alt) < 10 or alt.startswith(("digraph", "graph ", "strict ")):
            problems.append(("graph-alt", f"graph {g['name']} has "
                                          f"{'its dot source as' if alt else 'no'} alt text"))
        if g["src"] and g["width"] > 0:
            src = urllib.parse.urlsplit(g["src"])
            path = urllib.parse.unquote(src.path)
            svg = Path(path) if src.scheme == "file" else root / path.lstrip("/")
            if svg.suffix == ".svg" and svg.is_file():
                problems += [("graph-label", f"graph {g['name']}: {p}")
                             for p in svg_label_problems(svg, g["width"])]
    shown = [(k, g) for k, g in enumerate(wide["graphs"]) if g["width"] > 0]
    if not shown and shots is None:
        return problems  # nothing depends on the theme: it is not switched
    for scheme in (browser.theme, other(browser.theme, ("light", "dark"))):
        if scheme != browser.theme:
            with res.phase("theme"):
                browser.set_theme(scheme)
        with res.phase("graph-shots"):
            for k, g in shown:
                # Where the graph is now (in this theme), scrolled into view and shot with what
                # is behind it; beyond the viewport only if it does not fit in it.
                box = d.execute_script(GRAPH_BOX, k)
                clip = {key: box[key] for key in ("x", "y", "width", "height")}
                ratio = ink_contrast(base64.b64decode(d.execute_cdp_cmd(
                    "Page.captureScreenshot", {"format": "png", "clip": dict(clip, scale=1),
                                               "captureBeyondViewport": not box["fits"]})["data"]))
                if ratio < MIN_CONTRAST:
                    problems.append(("graph-theme", f"{scheme} theme: graph {g['name']} has ink at "
                                                    f"contrast {ratio:.2f}:1 with its background "
                                                    f"(at least {MIN_CONTRAST}:1)"))
        if shots is not None:
            with res.phase("screenshot"):
                d.execute_script("window.scrollTo({left: 0, top: 0, behavior: 'instant'})")
                shots[scheme] = d.execute_cdp_cmd(
                    "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                               "optimizeForSpeed": True})["data"]
    return problems


def layout_problems(browser: Browser, root: Path, res: PageResult,
                    shots: dict | None = None) -> list[tuple[str, str]]:
    """The layout checks of a loaded, typeset page (see the module's docstring): at the width
    the page was loaded at, then at the other one, which the browser keeps for its next page.
    A page without equation numbers, loaded at 1280 px, has nothing to check at 700 px."""
    problems: list[tuple[str, str]] = []
    probe: dict | None = None
    for width in (browser.width, other(browser.width, (WIDE, NARROW))):
        if probe is not None and width == NARROW and not probe["numbered"]:
            break
        if width != browser.width:
            with res.phase("resize"):
                browser.set_width(width)
        with res.phase("layout-probe"):
            probe = browser.driver.execute_script(LAYOUT_PROBE, MIN_GAP, width == WIDE)
        problems += eq_problems(probe)
        if width == WIDE:
            problems += wide_problems(browser, root, res, probe, shots)
    return problems


def page_url(mode: str, base: str, root: Path, page: str) -> tuple[str, callable]:
    """The page's address in this mode, and the test of whether a request stays local."""
    if mode == "http":
        prefix, url = base, base + urllib.parse.quote(page)
    else:
        prefix, url = root.as_uri() + "/", (root / page).as_uri()

    def local(u):
        return u.startswith(prefix) or u.split(":", 1)[0] in ("data", "blob", "about")
    return url, local


def relative(url: str, prefix: str) -> str | None:
    """The path of url under prefix (no query, no fragment, unquoted), or None if not under it."""
    if not url.startswith(prefix):
        return None
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path)[
        len(urllib.parse.unquote(urllib.parse.urlsplit(prefix).path)):]


# Requests each URL from the (served) page, as the page would; returns [url, status or error].
FETCH = r"""
const done = arguments[arguments.length - 1];
Promise.all(arguments[0].map(u => fetch(u, {method: 'HEAD', cache: 'no-store'})
    .then(r => [u, r.status], e => [u, String(e)]))).then(done);
"""


def served_fetch_problems(browser: Browser, base: str, paths: list[str]) -> list[tuple[str, str]]:
    """Asks the server, from the served page, for each of paths (relative to the root)."""
    if not paths:
        return []
    got = browser.driver.execute_async_script(FETCH, [base + urllib.parse.quote(p)
                                                      for p in sorted(paths)])
    return [("network", f"{status if isinstance(status, str) else f'HTTP {status}'} for {url} "
                        "(loaded from file:// while typesetting; the served page did not load it)")
            for url, status in got if not (isinstance(status, int) and status < 400)]


def check_page(browser: Browser, base: str, page: str, mode: str, root: Path,
               shots: dict | None = None, from_file: PageResult | None = None) -> PageResult:
    """From file:// (first): every check, MathJax typesetting included. Served: what can differ
    from file:// (see the module's docstring), with from_file the page's visit from file://."""
    url, local = page_url(mode, base, root, page)
    res = PageResult(page, mode)
    full = mode == "file"
    probe = browser.load(url, res, typeset=full)
    problems: list[tuple[str, str]] = []
    if probe["mathjax"] not in ("typeset", "loaded", "no math on page"):
        problems.append(("mathjax", probe["mathjax"]))
    elif probe["mathjax"] == "typeset" and probe.get("rendered", 0) == 0:
        problems.append(("mathjax", f"{probe.get('mathNodes')} math elements but nothing "
                                    "typeset"))
    problems += [("math", f"MathJax error: {e}") for e in probe["errors"]]
    problems += [("raw-tex", f"...{t}...") for t in probe["raw"]]
    if full and probe["mathjax"] in ("typeset", "no math on page"):
        problems += layout_problems(browser, root, res, shots)
    # Console and network last: what the layout checks made the page load counts too.
    res.problems = browser.log_problems(local, res) + problems
    if from_file is not None:
        # What the page loaded from file:// (typesetting: MathJax's fonts and extensions) but
        # not served, as MathJax was not waited for: the server must serve it too.
        served = {relative(u, base) for u in res.loaded}
        wanted = {relative(u, root.as_uri() + "/") for u in from_file.loaded} - served - {None}
        with res.phase("fetch"):
            res.problems += served_fetch_problems(browser, base, sorted(wanted))
    res.problems = list(dict.fromkeys(res.problems))  # each once (a failed image retried...)
    res.links = probe["links"]
    res.ids = set(probe["ids"])
    return res


def url_to_page(link: str, base: str, root: Path) -> tuple[str, str] | None:
    """(page path relative to root, fragment) for a link into the site; None for other links."""
    parsed = urllib.parse.urlsplit(link)
    if link.startswith(base):
        rel = urllib.parse.unquote(parsed.path)[len(urllib.parse.urlsplit(base).path):]
    elif parsed.scheme == "file":
        path = Path(urllib.parse.unquote(parsed.path))
        try:
            rel = str(path.relative_to(root))
        except ValueError:
            return ("\0outside", str(path))
    else:
        return None
    if rel == "" or rel.endswith("/"):
        rel += "index.html"
    return rel, urllib.parse.unquote(parsed.fragment)


def check_links(results: list[PageResult], base: str, root: Path) -> None:
    ids = {(r.page, r.mode): r.ids for r in results}
    for r in results:
        seen = set()
        for link in r.links:
            target = url_to_page(link, base, root)
            if target is None or link in seen:
                continue
            seen.add(link)
            page, fragment = target
            if page == "\0outside":
                r.problems.append(("link", f"link outside the site: {fragment}"))
            elif not (root / page).is_file():
                r.problems.append(("link", f"broken link to {page}"))
            elif fragment and page.endswith(".html"):
                target_ids = ids.get((page, r.mode))
                if target_ids is not None and fragment not in target_ids:
                    r.problems.append(("link", f"link to {page}#{fragment}: no such anchor"))


@dataclass
class Tree:
    """A tree of pages to check in both modes: the site, or the fixture pages."""
    name: str
    root: Path
    pages: list[str]
    cache: Cache | None = None
    screenshot_page: str | None = None  # shot full height, served, in each theme, into shots
    shots: dict[str, str] = field(default_factory=dict)
    served: list[str] | None = None  # the pages to check served too (None: all)
    results: list[PageResult] = field(default_factory=list)  # in (mode, page) order
    wall: float = 0.0  # from the start of the run until its last page was checked


MODES = ("http", "file")


class StartError(Exception):
    pass


def check_trees(jobs: int, trees: list[Tree], browsers: list[Browser]) -> None:
    """Checks every (tree, mode, page) with up to jobs browsers (started into browsers, for the
    caller to close; none if every page is in the cache), each taking the next unchecked page as
    it gets free: the pages from file:// before the served ones (a page of the other mode costs
    the browser a new renderer process; a served page needs its visit from file://), and in each
    mode the largest first (a large page left to the end keeps one browser busy while the others
    idle), the screenshot page before all. Fills each tree's results in (mode, page) order,
    whatever browser checked which, then checks the links of each tree."""
    work = [(t, mode, page) for t in trees for mode in MODES for page in t.pages
            if mode == "file" or t.served is None or page in t.served]

    def cost(item):
        t, mode, page = item
        return (mode == "file", page == t.screenshot_page, (t.root / page).stat().st_size)

    order = sorted(range(len(work)), key=lambda k: cost(work[k]), reverse=True)
    slots: dict[int, PageResult] = {}
    from_file: dict[tuple[int, str], PageResult] = {}
    file_done = {(id(t), page): threading.Event() for t, _, page in work}
    lock = threading.Lock()
    queue = collections.deque(order)
    errors: list[BaseException] = []
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        servers = {id(t): stack.enter_context(Server(t.root)) for t in trees}

        def start() -> Browser:
            try:
                browser = Browser()
            except WebDriverException as e:
                raise StartError(e.msg) from e
            with lock:
                browsers.append(browser)
                print(f"browser test: browser {len(browsers)} started "
                      f"{time.monotonic() - t0:.1f} s into the run", file=sys.stderr)
            return browser

        def run() -> None:
            browser = None  # started for the first page not in the cache
            try:
                while True:
                    with lock:
                        k = queue.popleft() if queue else None
                    if k is None or errors:
                        return
                    tree, mode, page = work[k]
                    done = file_done[id(tree), page]
                    if mode == "http" and browser is None and not done.is_set():
                        # Not worth a browser of its own (a run of few pages): put back for the
                        # browser that checks it from file:// to take next.
                        with lock:
                            queue.appendleft(k)
                        done.wait()
                        time.sleep(0.2)
                        continue
                    base = servers[id(tree)].base
                    t = time.monotonic()
                    res = tree.cache.get(page, mode, base) if tree.cache else None
                    if res is None:
                        shots = (tree.shots if mode == "file" and page == tree.screenshot_page
                                 else None)
                        if mode == "http":
                            done.wait()
                        browser = browser or start()
                        res = check_page(browser, base, page, mode, tree.root, shots,
                                         from_file.get((id(tree), page)))
                    with lock:
                        if mode == "file":
                            from_file[id(tree), page] = res
                            file_done[id(tree), page].set()
                        if tree.cache and not res.cached:
                            tree.cache.put(res, base)
                        slots[k] = res
                        took = ("unchanged since a clean check" if res.cached
                                else f"{time.monotonic() - t:.1f} s")
                        print(f"browser test: {len(slots)}/{len(work)} ({len(work) - len(slots)} "
                              f"left) {tree.name} {mode} {page}: {took}",
                              file=sys.stderr, flush=True)
                        if all(j in slots for j, w in enumerate(work) if w[0] is tree):
                            tree.wall = time.monotonic() - t0
            except BaseException as e:  # noqa: BLE001 -- re-raised in the main thread
                with lock:
                    errors.append(e)
                    for event in file_done.values():
                        event.set()  # no browser waits for a page that will not come

        threads = [threading.Thread(target=run) for _ in range(max(1, jobs))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
        for tree in trees:
            tree.results = [slots[k] for k, w in enumerate(work) if w[0] is tree]
            check_links(tree.results, servers[id(tree)].base, tree.root)  # cached or not


def print_profile(tree: Tree) -> None:
    """Where the time went: each phase summed over the tree's pages (browser time: the browsers
    work side by side), and the slowest pages."""
    total: dict[str, float] = {}
    for r in tree.results:
        for k, v in r.timings.items():
            total[k] = total.get(k, 0.0) + v

    def phases(timings):
        return ", ".join(f"{k} {v:.2f}" for k, v in sorted(timings.items(), key=lambda kv: -kv[1]))
    checked = [r for r in tree.results if not r.cached]
    print(f"browser test: {tree.name}: {len(checked)} page visits, done {tree.wall:.1f} s into "
          f"the run, {sum(total.values()):.1f} s of browser time: {phases(total)}",
          file=sys.stderr)
    for mode in MODES:
        part: dict[str, float] = {}
        for r in checked:
            if r.mode == mode:
                for k, v in r.timings.items():
                    part[k] = part.get(k, 0.0) + v
        print(f"  {mode}: {sum(part.values()):.1f} s: {phases(part)}", file=sys.stderr)
    for r in sorted(checked, key=lambda r: -sum(r.timings.values()))[:5]:
        print(f"  {r.mode} {r.page}: {sum(r.timings.values()):.1f} s: {phases(r.timings)}",
              file=sys.stderr)


class Cache:
    """Results of pages that passed, keyed by a hash of the page, of everything it can load
    (_static, _images) and of this checker with its fixtures: a page whose bytes and surroundings
    did not change is not visited again (a rebuilt site rewrites only the pages that changed).
    Pages with problems are always checked again. The links are checked over all pages each run."""

    def __init__(self, path: Path, site: Path):
        self.path, self.site = path, site
        h = hashlib.sha1()
        for f in sorted([Path(__file__).resolve()] + list((HERE / "fixtures").glob("*"))
                        + [p for d in ("_static", "_images") for p in (site / d).rglob("*")
                           if p.is_file()]):
            h.update(str(f).encode() + b"\0" + f.read_bytes())
        self.common = h.hexdigest()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        self.data = (data if data.get("common") == self.common
                     else {"common": self.common, "pages": {}})
        self.data.setdefault("pages", {})

    def key(self, page: str) -> str:
        return hashlib.sha1((self.site / page).read_bytes()).hexdigest()

    # The server's port changes from run to run: links are kept relative to it.
    def get(self, page: str, mode: str, base: str) -> PageResult | None:
        e = self.data["pages"].get(f"{mode}:{page}")
        if not e or e["key"] != self.key(page):
            return None
        links = [base + link[len("{base}"):] if link.startswith("{base}") else link
                 for link in e["links"]]
        return PageResult(page, mode, [], links, set(e["ids"]), cached=True,
                          loaded=e.get("loaded", []))

    def put(self, res: PageResult, base: str) -> None:
        if not res.problems:
            links = ["{base}" + link[len(base):] if link.startswith(base) else link
                     for link in res.links]
            self.data["pages"][f"{res.mode}:{res.page}"] = {"key": self.key(res.page),
                                                             "links": links,
                                                             "ids": sorted(res.ids),
                                                             "loaded": res.loaded}

    def self_test_passed(self) -> bool:
        return self.data.get("self_test") == "passed"

    def save(self, self_test_ok: bool) -> None:
        self.data["self_test"] = "passed" if self_test_ok else "failed"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data), encoding="utf-8")


def site_pages(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.html")
                  if not p.relative_to(root).parts[0].startswith("_"))


# ---- Negative controls --------------------------------------------------------------------------

# Fixture page -> the problem categories the checker must report for it, and nothing else.
EXPECTED = {
    "good.html": set(),
    "bad_tex.html": {"math"},
    "undefined_macro.html": {"math"},
    "raw_tex.html": {"raw-tex"},
    "no_mathjax.html": {"mathjax", "raw-tex"},
    "external.html": {"network", "console"},
    "console_error.html": {"console"},
    "broken_link.html": {"link"},
    "figure_ok.html": set(),
    "figure_missing.html": {"network", "graph-alt"},
    # The layout checks (from file:// only). site_ok.html uses the site's own styles and fonts
    # (_static is copied next to the fixtures): a numbered equation as wide as batch norm's (1),
    # x̂ᵢ in code, a graph as the extension writes it. The others break one thing each.
    "site_ok.html": set(),
    "eq_overlap.html": {"eq-overlap"},
    "math_scroll.html": {"math-scroll"},
    "code_scroll.html": {"code-scroll"},
    "code_font.html": {"code-font"},
    "dup_id.html": {"dup-id"},
    "graph_no_alt.html": {"graph-alt"},
    "graph_label.html": {"graph-label"},
    "graph_dark.html": {"graph-theme"},
}


def fixture_tree(site: Path, root: Path) -> Tree | str:
    """The fixture pages in root, with the site's _static and MathJax configuration; or what
    is missing to make them."""
    config = re.search(r'<script type="text/x-mathjax-config">.*?</script>',
                       (site / "derivations" / "batchnorm.html").read_text(encoding="utf-8"),
                       re.S)
    if not config:
        return "the batch-norm page has no MathJax configuration to test with"
    shutil.copytree(site / "_static", root / "_static")
    for asset in (HERE / "fixtures").glob("*.svg"):
        shutil.copy(asset, root / asset.name)
    for page in EXPECTED:
        text = (HERE / "fixtures" / page).read_text(encoding="utf-8")
        (root / page).write_text(text.replace("<!--MATHJAX-CONFIG-->", config.group(0)),
                                 encoding="utf-8")
    # Served: the pages that break a check of the served pages, and the clean ones; the others
    # break what is checked only from file:// and have nothing to show served.
    served = [p for p, expected in EXPECTED.items() if expected & SERVED or not expected]
    return Tree("fixture", root, sorted(EXPECTED), served=sorted(served))


def judge_fixtures(tree: Tree) -> list[str]:
    """What the checker got wrong about the fixture pages."""
    wrong = []
    for r in tree.results:
        got = {c for c, _ in r.problems}
        expected = EXPECTED[r.page] if r.mode == "file" else EXPECTED[r.page] & SERVED
        if got != expected:
            wrong.append(f"fixture {r.page} ({r.mode}): expected "
                         f"{sorted(expected) or 'no problems'}, found {sorted(got) or 'none'}: "
                         f"{r.problems}")
    return wrong


def fetch_control(browser: Browser, tree: Tree) -> list[str]:
    """The served pages' request for what they did not load themselves must catch a file the
    server does not have (no fixture page can make the server lack a file that file:// loads:
    it serves the same tree). Returns what went wrong."""
    with Server(tree.root) as server:
        res = PageResult("good.html", "http")
        browser.load(server.base + "good.html", res, typeset=False)
        got = served_fetch_problems(browser, server.base, ["good.html", "no-such-font.woff"])
    if len(got) != 1 or "no-such-font.woff" not in got[0][1] or "HTTP 404" not in got[0][1]:
        return [f"the served request for a missing file reported {got or 'nothing'}, "
                "expected one HTTP 404 for no-such-font.woff"]
    return []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("site", type=Path, help="the built HTML site (build/site/html)")
    ap.add_argument("--artifacts", type=Path, required=True, help="where to save screenshots")
    ap.add_argument("--screenshot", default="derivations/batchnorm.html")
    ap.add_argument("--self-test-only", action="store_true",
                    help="only the fixture pages (to work on the checks)")
    ap.add_argument("--no-cache", action="store_true",
                    help="check every page, even those unchanged since a clean check")
    ap.add_argument("--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)),
                    help="browsers checking pages at once (default: 2, or 1 on a single core)")
    args = ap.parse_args(argv)
    site = args.site.resolve()
    pages = site_pages(site)
    if args.screenshot not in pages:
        print(f"browser test: {args.screenshot} is not a page of {site}", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    # Selenium and ChromeDriver reach each other by the name "localhost"; a root without
    # /etc/hosts (a minimal container or chroot) cannot resolve it unless libnss-myhostname is
    # installed, and Selenium then reports only "Can not connect to the Service".
    try:
        socket.getaddrinfo("localhost", None)
    except socket.gaierror as e:
        print(f"browser test: the name localhost does not resolve ({e.strerror}); ChromeDriver "
              "needs it. Install libnss-myhostname (packages.txt, group site) or give the "
              "machine an /etc/hosts", file=sys.stderr)
        return 1
    # Each page is typeset by MathJax in its browser's renderer, one core each: on two cores two
    # browsers check the pages in about half the time of one.
    browsers: list[Browser] = []
    tmp = tempfile.TemporaryDirectory(prefix="gradproof-fixtures-")
    try:
        cache = (None if args.no_cache or args.self_test_only
                 else Cache(args.artifacts / "browser-cache.json", site))
        trees = []
        if cache and cache.self_test_passed():
            print("browser test: negative controls not rerun: the checker and its fixtures are "
                  "unchanged since they passed", file=sys.stderr)
            fixtures = None
        else:
            fixtures = fixture_tree(site, Path(tmp.name))
            if isinstance(fixtures, str):
                print(f"NEGATIVE CONTROL FAILED: {fixtures}", file=sys.stderr)
                return 1
            trees.append(fixtures)
        if not args.self_test_only:
            trees.append(Tree("site", site, pages, cache, args.screenshot))
        try:
            check_trees(args.jobs, trees, browsers)
        except StartError as e:
            print(f"browser test: cannot start Chromium: {e}", file=sys.stderr)
            return 1
        wrong = fetch_control(browsers[0], fixtures) if fixtures else []
        cpu = sum(b.cpu_seconds() for b in browsers)
    finally:
        for b in browsers:
            b.close()
        tmp.cleanup()
    for tree in trees:
        print_profile(tree)
    own = resource.getrusage(resource.RUSAGE_SELF)
    print(f"browser test: CPU time: Chromium and ChromeDriver {cpu:.1f} s, this script "
          f"{own.ru_utime + own.ru_stime:.1f} s; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores", file=sys.stderr)
    wrong += judge_fixtures(fixtures) if fixtures else []
    if fixtures:
        for w in wrong:
            print(f"NEGATIVE CONTROL FAILED: {w}", file=sys.stderr)
        broken = sum(1 for expected in EXPECTED.values() if expected)
        print(f"browser test: negative controls: {broken} broken fixture pages caught as "
              f"expected, {len(EXPECTED) - broken} clean pages passed, a file the server lacks "
              "caught" if not wrong
              else "browser test: the checker missed or invented problems", file=sys.stderr)
    if args.self_test_only:
        return 1 if wrong else 0
    site_tree = trees[-1]
    if cache:
        cache.save(not wrong)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    saved = []
    for scheme, data in site_tree.shots.items():
        saved.append(args.artifacts / f"{Path(args.screenshot).stem}-{scheme}.png")
        saved[-1].write_bytes(base64.b64decode(data))
    failures = [(r, c, d) for r in site_tree.results for c, d in r.problems]
    for r, c, d in failures:
        print(f"FAIL [{c}] {r.page} ({r.mode}): {d}", file=sys.stderr)
    n_links = sum(len(r.links) for r in site_tree.results)
    print(f"browser test: {len(pages)} pages x 2 modes (http, file), {len(browsers)} browsers, "
          f"{n_links} links followed, {len(failures)} problems, {time.monotonic() - t0:.1f} s; "
          f"screenshots {', '.join(map(str, saved))}")
    return 1 if failures or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
