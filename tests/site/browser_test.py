#!/usr/bin/python3
"""Opens every page of the built site in headless Chromium, served on localhost and from file://,
and fails on anything a reader would see broken:

  math      a MathJax error (TeX that does not parse, an undefined macro, a processing error),
            or MathJax missing on a page with math
  raw-tex   TeX left as text: $$, \\( \\), \\[ \\], a macro such as \\frac outside code blocks
  console   a console message of level SEVERE (script errors, failed loads)
  network   a request to any host but the local one, or a local request that failed (>= 400)
  link      an internal link to a missing page or file, or to an anchor the page does not have

and, on the served pages (the layout is the same from file://), at 1280 px and at 700 px wide:

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

It first runs the same checks over the pages in tests/site/fixtures/, each broken in one known
way (and one that is not broken at all), and fails unless it finds exactly those problems: a
check that cannot fail is no check. It saves a screenshot of the batch-norm page in each theme.

    browser_test.py SITE_HTML_DIR --artifacts DIR [--screenshot derivations/batchnorm.html]

Debian packages: chromium, chromium-driver, python3-selenium, python3-pil (run with
/usr/bin/python3).
"""
from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import io
import http.server
import json
import os
import re
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
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", f"--window-size={WIDE},1000"]
MIN_GAP = 8        # px between an equation number and its formula
LABEL_PX = 11.0    # smallest graph label, as rendered (CSS px)
SUP_PX = 8.0       # smallest super- or subscript in a graph label
MIN_CONTRAST = 4.5  # WCAG AA for text: a graph's ink against its background, in either theme
FAKE_SUPERSCRIPT = re.compile("[\\^\u00b2\u00b3\u00b9\u2070-\u207f]")
LAYOUT = {"eq-overlap", "math-scroll", "code-scroll", "code-font", "dup-id", "graph-alt", "graph-label", "graph-theme"}

# Runs in the page once it has loaded: waits for MathJax to finish typesetting (if the page has
# math) and reports what the reader would see.
PAGE_PROBE = r"""
const done = arguments[arguments.length - 1];
function report(mathjax) {
  const errors = [];
  for (const e of document.querySelectorAll('.mjx-merror, .MathJax_Error, merror, .mjx-noError'))
    errors.push((e.getAttribute('data-mjx-error') || e.textContent || '').trim().slice(0, 200));
  if (document.body.textContent.includes('Math Processing Error')) errors.push('Math Processing Error');
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
  const links = Array.from(document.querySelectorAll('a[href]'), a => a.href);
  const ids = Array.from(document.querySelectorAll('[id]'), e => e.id)
      .concat(Array.from(document.querySelectorAll('a[name]'), e => e.getAttribute('name')));
  const mathNodes = document.querySelectorAll('.math, script[type^="math/tex"]').length;
  const rendered = document.querySelectorAll('.mjx-chtml, .MathJax_SVG, .MathJax_CHTML').length;
  done({mathjax, errors, raw, links, ids, mathNodes, rendered, title: document.title});
}
if (!document.querySelector('.math, script[type^="math/tex"]')) { report('no math on page'); return; }
let tries = 0;
(function wait() {
  if (window.MathJax && MathJax.isReady) {
    MathJax.Hub.Queue(() => report('typeset'));  // after any typesetting still queued
  } else if (window.MathJax && MathJax.Hub && MathJax.Hub.Register) {
    MathJax.Hub.Register.StartupHook('End', () => MathJax.Hub.Queue(() => report('typeset')));
  } else if (++tries > 40) {  // 2 s: MathJax.js is a local script that loads before the load event
    report('MathJax did not load');
  } else {
    setTimeout(wait, 50);
  }
})();
"""


# Runs after PAGE_PROBE on a served page, at the current width; see the module's docstring.
LAYOUT_PROBE = r"""
// LAYOUT_PROBE: runs after PAGE_PROBE on a served page; measures what a reader sees.
const MIN_GAP = arguments[0];
const out = {eqs: [], clipped: [], code: [], graphs: [], comb: 0, dupIds: [], width: window.innerWidth};
function visible(r, el) {  // r clipped by every scrolling/clipping ancestor of el
  let x0 = r.left, x1 = r.right, y0 = r.top, y1 = r.bottom;
  for (let a = el.parentElement; a; a = a.parentElement) {
    const s = getComputedStyle(a);
    if (s.overflowX !== 'visible' || s.overflowY !== 'visible') {
      const c = a.getBoundingClientRect();
      x0 = Math.max(x0, c.left); x1 = Math.min(x1, c.right); y0 = Math.max(y0, c.top); y1 = Math.min(y1, c.bottom);
    }
  }
  return {left: x0, right: x1, top: y0, bottom: y1};
}
// A numbered formula cut off by its wrapper: the room kept for its number must not cost the
// formula its fit at 1280 px.
for (const block of Array.from(document.querySelectorAll('div.math')).filter(b => b.querySelector('.eqno'))) {
  for (const m of block.querySelectorAll('.mjx-math')) {
    const r = m.getBoundingClientRect(), v = visible(r, m);
    if (v.right < r.right - 1 || v.left > r.left + 1)
      out.clipped.push({id: block.id || (block.parentElement && block.parentElement.id) || '?',
                        hidden: Math.round(r.width - (v.right - v.left))});
  }
}
for (const num of document.querySelectorAll('.math .eqno, .math-wrapper .eqno')) {
  const block = num.closest('.math');
  const text = Array.from(num.childNodes).find(n => n.nodeType === 3 && n.textContent.trim());
  if (!block || !text) continue;
  const range = document.createRange(); range.selectNodeContents(text);
  const n = range.getBoundingClientRect();
  let f = null;
  for (const m of block.querySelectorAll('.mjx-math, .MathJax_SVG > svg, .MathJax_CHTML')) {
    const r = visible(m.getBoundingClientRect(), m);
    if (r.right <= r.left || r.bottom <= r.top) continue;
    f = f ? {left: Math.min(f.left, r.left), right: Math.max(f.right, r.right), top: Math.min(f.top, r.top),
             bottom: Math.max(f.bottom, r.bottom)} : r;
  }
  if (!f || n.width === 0) continue;  // not typeset
  const nv = visible(n, num);
  if (nv.right < n.right - 1 || nv.left > n.left + 1) {  // the number cut off by a scrolling wrapper
    out.eqs.push({id: block.id || '?', number: text.textContent.trim(), gap: 0, overlaps: true, cut: true});
    continue;
  }
  const vertical = Math.min(n.bottom, f.bottom) - Math.max(n.top, f.top);
  const gap = Math.max(n.left - f.right, f.left - n.right);
  out.eqs.push({id: block.id || (block.parentElement && block.parentElement.id) || '?',
                number: text.textContent.trim(), gap: Math.round(gap), overlaps: vertical > 0 && gap < MIN_GAP});
}
for (const pre of document.querySelectorAll('pre')) {
  if (pre.scrollWidth > pre.clientWidth + 1) {
    const lines = pre.textContent.split('\n');
    const longest = lines.reduce((a, b) => (b.length > a.length ? b : a), '');
    out.code.push({over: pre.scrollWidth - pre.clientWidth, columns: longest.length, line: longest.trim().slice(0, 80)});
  }
}
for (const g of document.querySelectorAll('img.graphviz, object.graphviz, .graphviz > img, .graphviz > object, .graphviz > svg')) {
  const r = g.getBoundingClientRect();
  let alt = g.tagName === 'IMG' ? g.getAttribute('alt') : (g.getAttribute('aria-label') || '');
  out.graphs.push({tag: g.tagName.toLowerCase(), src: g.currentSrc || g.getAttribute('src') || g.getAttribute('data') || '',
                   box: {x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width, height: r.height},
                   alt: (alt || '').trim(), width: r.width, complete: g.tagName !== 'IMG' || (g.complete && g.naturalWidth > 0)});
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
    out['comb' + k] = {text: node.textContent.slice(Math.max(0, m.index - 10), m.index + 12), both, base};
    k++;
    break;
  }
}
out.comb = k;
const seen = new Map();
for (const e of document.querySelectorAll('[id]')) seen.set(e.id, (seen.get(e.id) || 0) + 1);
out.dupIds = Array.from(seen).filter(([id, n]) => n > 1).map(([id, n]) => `${id} (${n}x)`);
return out;
"""


@dataclass
class PageResult:
    page: str
    mode: str
    problems: list[tuple[str, str]] = field(default_factory=list)  # (category, detail)
    links: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # requests are checked through the browser, not the log
        pass


class Server:
    """The site on http://127.0.0.1:<free port>/, in a thread."""

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
                    f"  <selectfont><rejectfont><glob>{HIDDEN_FONTS}</glob></rejectfont></selectfont>\n"
                    f"  <cachedir>{profile}/fontcache</cachedir>\n</fontconfig>\n", encoding="utf-8")
    return str(path)


class Browser:
    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="gradproof-chromium-")
        env = dict(os.environ, FONTCONFIG_FILE=fontconfig(self.profile))
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS + [f"--user-data-dir={self.profile}"]:
            opts.add_argument(flag)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER, env=env), options=opts)
        self.driver.set_script_timeout(60)
        self.driver.set_page_load_timeout(60)
        self.driver.get("about:blank")  # leave the new-tab page and what it loads behind
        time.sleep(0.5)
        self.drain_logs()

    def close(self):
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def drain_logs(self):
        self.driver.get_log("browser")
        self.driver.get_log("performance")

    def visit(self, url: str, local: callable) -> tuple[dict, list[tuple[str, str]]]:
        """Loads url; returns the probe's report and the console/network problems."""
        self.drain_logs()
        problems: list[tuple[str, str]] = []
        self.driver.get(url)
        try:
            probe = self.driver.execute_async_script(PAGE_PROBE)
        except TimeoutException:
            probe = {"mathjax": "timed out waiting for MathJax", "errors": [], "raw": [], "links": [], "ids": []}
        time.sleep(0.05)  # late requests (fonts) show up in the log after typesetting
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
                status = params["response"].get("status", 0)
                if status >= 400:
                    problems.append(("network", f"HTTP {status} for {params['response']['url'][:200]}"))
            elif method == "Network.loadingFailed":
                failed = pending.get(params["requestId"], "?")
                if local(failed):  # a failed request elsewhere is already reported above
                    problems.append(("network", f"failed to load {failed[:200]}: {params.get('errorText')}"))
        return probe, problems


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
    colours = Image.open(io.BytesIO(png)).convert("RGB").getcolors(maxcolors=1 << 24)
    bg_count, bg = max(colours)
    lbg = luminance(bg)
    ink = sorted(((max(l, lbg) + 0.05) / (min(l, lbg) + 0.05), n)
                 for n, c in colours if c != bg for l in [luminance(c)])
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
    width = float(view[2]) if len(view) == 4 else float(re.sub(r"[a-z]+$", "", root.get("width", "0")) or 0)
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
        if size < (SUP_PX if script else LABEL_PX):
            out.append(f"label {text!r} renders at {size:.1f} px (at least {SUP_PX if script else LABEL_PX:g})")
        if FAKE_SUPERSCRIPT.search(text):
            out.append(f"label {text!r} fakes a superscript (^ or a Unicode superscript character)")
    return out


def set_width(browser: "Browser", width: int) -> None:
    browser.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": width, "height": 1000, "deviceScaleFactor": 1, "mobile": False})


def set_theme(browser: "Browser", scheme: str) -> None:
    browser.driver.execute_cdp_cmd("Emulation.setEmulatedMedia",
                                   {"features": [{"name": "prefers-color-scheme", "value": scheme}]})


def code_font_problems(browser: "Browser", probe: dict) -> list[str]:
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
        found = d.execute_cdp_cmd("DOM.querySelector", {"nodeId": doc, "selector": f'[data-gp-comb="{k}"]'})
        fonts = d.execute_cdp_cmd("CSS.getPlatformFontsForNode", {"nodeId": found["nodeId"]})["fonts"]
        names = [f"{f['familyName']}{'' if f.get('isCustomFont') else ' (a system font)'}" for f in fonts]
        where = info["text"].strip()
        if len(fonts) != 1 or not fonts[0].get("isCustomFont"):
            out.append(f"{where!r} is drawn with {', '.join(names) or 'no font'}: not one web font of the site")
        if abs(info["both"] - info["base"]) > 0.5:
            out.append(f"{where!r}: the combining mark takes its own advance ({info['both'] - info['base']:.1f} px): "
                       "a detached hat")
    return out


def layout_problems(browser: "Browser", root: Path, page_url: str, shots: dict | None = None) -> list[tuple[str, str]]:
    """The layout checks of a loaded, typeset page (see the module's docstring)."""
    d = browser.driver
    problems: list[tuple[str, str]] = []
    wide = d.execute_script(LAYOUT_PROBE, MIN_GAP)
    for e in wide["eqs"]:
        if e["overlaps"]:
            problems.append(("eq-overlap", f"{WIDE} px: equation number {e['number']} ({e['id']}) is cut off by "
                                           "its wrapper" if e.get("cut") else
                                           f"{WIDE} px: equation {e['number']} ({e['id']}) is {e['gap']} px from "
                                           f"its formula (at least {MIN_GAP})"))
    for c in wide["clipped"]:
        problems.append(("math-scroll", f"{WIDE} px: numbered formula {c['id']} does not fit its column: "
                                        f"{c['hidden']} px of it are scrolled out of view"))
    for c in wide["code"]:
        problems.append(("code-scroll", f"{WIDE} px: a code block scrolls sideways by {c['over']} px; its longest "
                                        f"line has {c['columns']} columns: {c['line']!r}"))
    problems += [("code-font", p) for p in code_font_problems(browser, wide)]
    problems += [("dup-id", f"id {i} appears more than once") for i in wide["dupIds"]]
    for g in wide["graphs"]:
        name = urllib.parse.unquote(urllib.parse.urlsplit(g["src"]).path).rsplit("/", 1)[-1] or "?"
        alt = g["alt"]
        if len(alt) < 10 or alt.startswith(("digraph", "graph ", "strict ")):
            problems.append(("graph-alt", f"graph {name} has {'its dot source as' if alt else 'no'} alt text"))
        if g["src"] and g["width"] > 0:
            svg = root / urllib.parse.unquote(urllib.parse.urlsplit(g["src"]).path).lstrip("/")  # served from root
            if svg.suffix == ".svg" and svg.is_file():
                problems += [("graph-label", f"graph {name}: {p}") for p in svg_label_problems(svg, g["width"])]
    for scheme in ("light", "dark"):
        set_theme(browser, scheme)
        for g in wide["graphs"]:
            if g["width"] == 0:
                continue
            clip = dict(g["box"], scale=1)  # where the graph is on the page, shot with what is behind it
            ratio = ink_contrast(base64.b64decode(d.execute_cdp_cmd(
                "Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True})["data"]))
            if ratio < MIN_CONTRAST:
                name = g["src"].rsplit("/", 1)[-1]
                problems.append(("graph-theme", f"{scheme} theme: graph {name} has ink at contrast {ratio:.2f}:1 "
                                                f"with its background (at least {MIN_CONTRAST}:1)"))
        if shots is not None:
            d.execute_script("window.scrollTo(0, 0)")
            shots[scheme] = d.execute_cdp_cmd("Page.captureScreenshot",
                                              {"format": "png", "captureBeyondViewport": True})["data"]
    set_theme(browser, "light")
    set_width(browser, NARROW)
    try:
        narrow = d.execute_script(LAYOUT_PROBE, MIN_GAP)
    finally:
        d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    for e in narrow["eqs"]:
        if e["overlaps"]:
            problems.append(("eq-overlap", f"{NARROW} px: equation {e['number']} ({e['id']}) is {e['gap']} px from "
                                           f"its formula (at least {MIN_GAP})"))
    return problems


def check_page(browser: Browser, base: str, page: str, mode: str, root: Path,
               shots: dict | None = None) -> PageResult:
    if mode == "http":
        url = base + urllib.parse.quote(page)

        def local(u):
            return u.startswith(base) or u.split(":", 1)[0] in ("data", "blob", "about")
    else:
        url = (root / page).as_uri()
        root_uri = root.as_uri() + "/"

        def local(u):
            return u.startswith(root_uri) or u.split(":", 1)[0] in ("data", "blob", "about")
    res = PageResult(page, mode)
    probe, res.problems = browser.visit(url, local)
    if probe["mathjax"] not in ("typeset", "no math on page"):
        res.problems.append(("math", probe["mathjax"]))
    elif probe["mathjax"] == "typeset" and probe.get("rendered", 0) == 0:
        res.problems.append(("math", f"{probe.get('mathNodes')} math elements but nothing typeset"))
    res.problems += [("math", f"MathJax error: {e}") for e in probe["errors"]]
    res.problems += [("raw-tex", f"...{t}...") for t in probe["raw"]]
    if mode == "http" and probe["mathjax"] in ("typeset", "no math on page"):
        res.problems += layout_problems(browser, root, url, shots)
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


def check_site(browsers: list[Browser], root: Path, pages: list[str], modes=("http", "file"),
               shots: dict | None = None, screenshot_page: str | None = None,
               cache: "Cache | None" = None) -> list[PageResult]:
    """Checks every (mode, page), the browsers taking the next unchecked one as each gets free;
    the results come back in (mode, page) order, whatever browser checked which."""
    work = [(mode, page) for mode in modes for page in pages]
    results: list[PageResult | None] = [None] * len(work)
    lock = threading.Lock()
    next_item = iter(range(len(work)))
    errors: list[BaseException] = []
    with Server(root) as server:
        def run(browser: Browser) -> None:
            try:
                while True:
                    with lock:
                        k = next(next_item, None)
                    if k is None or errors:
                        return
                    mode, page = work[k]
                    t = time.monotonic()
                    res = cache.get(page, mode, server.base) if cache else None
                    if res is None:
                        res = check_page(browser, server.base, page, mode, root,
                                         shots if mode == "http" and page == screenshot_page else None)
                    with lock:
                        if cache and not getattr(res, "cached", False):
                            cache.put(res, server.base)
                        results[k] = res
                        done = sum(r is not None for r in results)
                        took = ("unchanged since a clean check" if getattr(res, "cached", False)
                                else f"{time.monotonic() - t:.1f} s")
                        print(f"browser test: {mode} {done}/{len(work)} ({len(work) - done} left) {page}: {took}",
                              file=sys.stderr, flush=True)
            except BaseException as e:  # noqa: BLE001 -- re-raised in the main thread
                with lock:
                    errors.append(e)

        threads = [threading.Thread(target=run, args=(b,)) for b in browsers[1:]]
        for th in threads:
            th.start()
        run(browsers[0])
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
        check_links(results, server.base, root)  # always over every page, cached or not
    return results


class Cache:
    """Results of pages that passed, keyed by a hash of the page, of everything it can load
    (_static, _images) and of this checker with its fixtures: a page whose bytes and surroundings
    did not change is not visited again (a rebuilt site rewrites only the pages that changed).
    Pages with problems are always checked again. The links are checked over all pages each run."""

    def __init__(self, path: Path, site: Path):
        self.path, self.site = path, site
        h = hashlib.sha1()
        for f in sorted([Path(__file__).resolve()] + list((HERE / "fixtures").glob("*"))
                        + [p for d in ("_static", "_images") for p in (site / d).rglob("*") if p.is_file()]):
            h.update(str(f).encode() + b"\0" + f.read_bytes())
        self.common = h.hexdigest()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        self.data = data if data.get("common") == self.common else {"common": self.common, "pages": {}}
        self.data.setdefault("pages", {})

    def key(self, page: str) -> str:
        return hashlib.sha1((self.site / page).read_bytes()).hexdigest()

    # The server's port changes from run to run: links are kept relative to it.
    def get(self, page: str, mode: str, base: str) -> PageResult | None:
        e = self.data["pages"].get(f"{mode}:{page}")
        if not e or e["key"] != self.key(page):
            return None
        links = [base + link[len("{base}"):] if link.startswith("{base}") else link for link in e["links"]]
        res = PageResult(page, mode, [], links, set(e["ids"]))
        res.cached = True
        return res

    def put(self, res: PageResult, base: str) -> None:
        if not res.problems:
            links = ["{base}" + link[len(base):] if link.startswith(base) else link for link in res.links]
            self.data["pages"][f"{res.mode}:{res.page}"] = {"key": self.key(res.page), "links": links,
                                                             "ids": sorted(res.ids)}

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
    "no_mathjax.html": {"math", "raw-tex"},
    "external.html": {"network", "console"},
    "console_error.html": {"console"},
    "broken_link.html": {"link"},
    "figure_ok.html": set(),
    "figure_missing.html": {"network", "graph-alt"},
    # The layout checks (served pages only). site_ok.html uses the site's own styles and fonts
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


def self_test(browser: Browser, site: Path) -> list[str]:
    """Runs the checks over the fixture pages; returns what the checker got wrong."""
    config = re.search(r'<script type="text/x-mathjax-config">.*?</script>',
                       (site / "derivations" / "batchnorm.html").read_text(encoding="utf-8"), re.S)
    if not config:
        return ["the batch-norm page has no MathJax configuration to test with"]
    with tempfile.TemporaryDirectory(prefix="gradproof-fixtures-") as tmp:
        root = Path(tmp)
        shutil.copytree(site / "_static", root / "_static")
        for asset in (HERE / "fixtures").glob("*.svg"):
            shutil.copy(asset, root / asset.name)
        for page in EXPECTED:
            text = (HERE / "fixtures" / page).read_text(encoding="utf-8")
            (root / page).write_text(text.replace("<!--MATHJAX-CONFIG-->", config.group(0)), encoding="utf-8")
        results = check_site([browser], root, sorted(EXPECTED))
    wrong = []
    for r in results:
        got = {c for c, _ in r.problems}
        expected = EXPECTED[r.page] if r.mode == "http" else EXPECTED[r.page] - LAYOUT
        if got != expected:
            wrong.append(f"fixture {r.page} ({r.mode}): expected {sorted(expected) or 'no problems'}, "
                         f"found {sorted(got) or 'none'}: {r.problems}")
    return wrong


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("site", type=Path, help="the built HTML site (build/site/html)")
    ap.add_argument("--artifacts", type=Path, required=True, help="where to save screenshots")
    ap.add_argument("--screenshot", default="derivations/batchnorm.html")
    ap.add_argument("--self-test-only", action="store_true", help="only the fixture pages (to work on the checks)")
    ap.add_argument("--no-cache", action="store_true", help="check every page, even those unchanged since a clean check")
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
        print(f"browser test: the name localhost does not resolve ({e.strerror}); ChromeDriver needs it. "
              "Install libnss-myhostname (packages.txt, group site) or give the machine an /etc/hosts",
              file=sys.stderr)
        return 1
    # Each page is typeset by MathJax in its browser's renderer, one core each: on two cores two
    # browsers check the pages in about half the time of one. They start side by side.
    browsers: list[Browser] = []
    failed: list[str] = []
    starting = threading.Lock()

    def start() -> None:
        try:
            b = Browser()
        except WebDriverException as e:
            with starting:
                failed.append(e.msg)
            return
        with starting:
            browsers.append(b)

    starters = [threading.Thread(target=start) for _ in range(max(1, args.jobs))]
    for th in starters:
        th.start()
    for th in starters:
        th.join()
    if failed:
        for b in browsers:
            b.close()
        print(f"browser test: cannot start Chromium: {failed[0]}", file=sys.stderr)
        return 1
    browser = browsers[0]
    try:
        cache = None if args.no_cache or args.self_test_only else Cache(args.artifacts / "browser-cache.json", site)
        if cache and cache.self_test_passed():
            wrong = []
            print("browser test: negative controls not rerun: the checker and its fixtures are unchanged "
                  "since they passed", file=sys.stderr)
        else:
            wrong = self_test(browser, site)
            for w in wrong:
                print(f"NEGATIVE CONTROL FAILED: {w}", file=sys.stderr)
            broken = sum(1 for expected in EXPECTED.values() if expected)
            print(f"browser test: negative controls: {broken} broken fixture pages caught as expected, "
                  f"{len(EXPECTED) - broken} clean pages passed" if not wrong
                  else "browser test: the checker missed or invented problems")
        if args.self_test_only:
            return 1 if wrong else 0
        shots: dict[str, str] = {}  # the screenshot page, served, full height, in each theme
        results = check_site(browsers, site, pages, shots=shots, screenshot_page=args.screenshot, cache=cache)
        if cache:
            cache.save(not wrong)
        args.artifacts.mkdir(parents=True, exist_ok=True)
        saved = []
        for scheme, data in shots.items():
            saved.append(args.artifacts / f"{Path(args.screenshot).stem}-{scheme}.png")
            saved[-1].write_bytes(base64.b64decode(data))
    finally:
        for b in browsers:
            b.close()
    failures = [(r, c, d) for r in results for c, d in r.problems]
    for r, c, d in failures:
        print(f"FAIL [{c}] {r.page} ({r.mode}): {d}", file=sys.stderr)
    n_links = sum(len(r.links) for r in results)
    print(f"browser test: {len(pages)} pages x 2 modes (http, file), {len(browsers)} browsers, {n_links} links followed, "
          f"{len(failures)} problems, {time.monotonic() - t0:.1f} s; screenshots {', '.join(map(str, saved))}")
    return 1 if failures or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
