#!/usr/bin/python3
"""Opens every page of the built site in headless Chromium, served on localhost and from file://,
and fails on anything a reader would see broken:

  math      a MathJax error (TeX that does not parse, an undefined macro, a processing error),
            or MathJax missing on a page with math
  raw-tex   TeX left as text: $$, \\( \\), \\[ \\], a macro such as \\frac outside code blocks
  console   a console message of level SEVERE (script errors, failed loads)
  network   a request to any host but the local one, or a local request that failed (>= 400)
  link      an internal link to a missing page or file, or to an anchor the page does not have

It first runs the same checks over the pages in tests/site/fixtures/, each broken in one known
way (and one that is not broken at all), and fails unless it finds exactly those problems: a
check that cannot fail is no check. It saves a screenshot of the batch-norm page.

    browser_test.py SITE_HTML_DIR --artifacts DIR [--screenshot derivations/batchnorm.html]

Debian packages: chromium, chromium-driver, python3-selenium (run with /usr/bin/python3).
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1000"]

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
        time.sleep(0.2)  # late requests (fonts) show up in the log after typesetting
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


def check_page(browser: Browser, base: str, page: str, mode: str, root: Path) -> PageResult:
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


def check_site(browser: Browser, root: Path, pages: list[str], modes=("http", "file")) -> list[PageResult]:
    results = []
    with Server(root) as server:
        for mode in modes:
            for page in pages:
                results.append(check_page(browser, server.base, page, mode, root))
        check_links(results, server.base, root)
    return results


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
    "figure_missing.html": {"network"},
}


def self_test(browser: Browser, site: Path) -> list[str]:
    """Runs the checks over the fixture pages; returns what the checker got wrong."""
    config = re.search(r'<script type="text/x-mathjax-config">.*?</script>',
                       (site / "derivations" / "batchnorm.html").read_text(encoding="utf-8"), re.S)
    if not config:
        return ["the batch-norm page has no MathJax configuration to test with"]
    with tempfile.TemporaryDirectory(prefix="gradproof-fixtures-") as tmp:
        root = Path(tmp)
        shutil.copytree(site / "_static" / "mathjax", root / "_static" / "mathjax")
        for asset in (HERE / "fixtures").glob("*.svg"):
            shutil.copy(asset, root / asset.name)
        for page in EXPECTED:
            text = (HERE / "fixtures" / page).read_text(encoding="utf-8")
            (root / page).write_text(text.replace("<!--MATHJAX-CONFIG-->", config.group(0)), encoding="utf-8")
        results = check_site(browser, root, sorted(EXPECTED))
    wrong = []
    for r in results:
        got = {c for c, _ in r.problems}
        if got != EXPECTED[r.page]:
            wrong.append(f"fixture {r.page} ({r.mode}): expected {sorted(EXPECTED[r.page]) or 'no problems'}, "
                         f"found {sorted(got) or 'none'}: {r.problems}")
    return wrong


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("site", type=Path, help="the built HTML site (build/site/html)")
    ap.add_argument("--artifacts", type=Path, required=True, help="where to save screenshots")
    ap.add_argument("--screenshot", default="derivations/batchnorm.html")
    args = ap.parse_args(argv)
    site = args.site.resolve()
    pages = site_pages(site)
    if args.screenshot not in pages:
        print(f"browser test: {args.screenshot} is not a page of {site}", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    try:
        browser = Browser()
    except WebDriverException as e:
        print(f"browser test: cannot start Chromium: {e.msg}", file=sys.stderr)
        return 1
    try:
        wrong = self_test(browser, site)
        for w in wrong:
            print(f"NEGATIVE CONTROL FAILED: {w}", file=sys.stderr)
        broken = sum(1 for expected in EXPECTED.values() if expected)
        print(f"browser test: negative controls: {broken} broken fixture pages caught as expected, "
              f"{len(EXPECTED) - broken} clean pages passed" if not wrong
              else "browser test: the checker missed or invented problems")
        results = check_site(browser, site, pages)
        with Server(site) as server:  # the screenshot, served, at full page height
            browser.driver.get(server.base + args.screenshot)
            browser.driver.execute_async_script(PAGE_PROBE)
            shot = browser.driver.execute_cdp_cmd("Page.captureScreenshot",
                                                  {"format": "png", "captureBeyondViewport": True})
        args.artifacts.mkdir(parents=True, exist_ok=True)
        name = Path(args.screenshot).stem + ".png"
        import base64
        (args.artifacts / name).write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.close()
    failures = [(r, c, d) for r in results for c, d in r.problems]
    for r, c, d in failures:
        print(f"FAIL [{c}] {r.page} ({r.mode}): {d}", file=sys.stderr)
    n_links = sum(len(r.links) for r in results)
    print(f"browser test: {len(pages)} pages x 2 modes (http, file), {n_links} links followed, "
          f"{len(failures)} problems, {time.monotonic() - t0:.1f} s; screenshot {args.artifacts / name}")
    return 1 if failures or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
