#!/usr/bin/python3
"""How much of each derivation page the measured results take: the share of the page's height
(at 1280 px, headless Chromium, after MathJax) taken by the result blocks of {gradproof-formula}
and {gradproof-ablation}, with everything folded as a reader first sees it.

    /usr/bin/python3 tests/site/results_share.py build/site/html [--max 0.25]

Prints one line per page; with --max, exits 1 if a page's share exceeds it. A measurement tool
for issue 11 ("results overwhelm the prose"), independent of the browser test.
"""
import argparse
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

PAGES = ["batchnorm", "normalization", "layernorm", "groupnorm", "instancenorm", "rmsnorm"]

PROBE = r"""
const done = arguments[arguments.length - 1];
function measure() {
  const article = document.querySelector('article') || document.body;
  const total = article.getBoundingClientRect().height;
  let results = 0;
  for (const e of document.querySelectorAll('.gradproof-formula, .gradproof-ablation-block'))
    results += e.getBoundingClientRect().height;
  done({total, results, blocks: document.querySelectorAll('.gradproof-formula').length});
}
if (window.MathJax && MathJax.Hub && MathJax.Hub.Queue) MathJax.Hub.Queue(measure); else measure();
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("site", type=Path)
    ap.add_argument("--max", type=float, default=None)
    args = ap.parse_args()
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    driver.set_script_timeout(60)
    worst = 0.0
    try:
        for page in PAGES:
            driver.get((args.site.resolve() / "derivations" / f"{page}.html").as_uri())
            time.sleep(0.3)
            m = driver.execute_async_script(PROBE)
            share = m["results"] / m["total"] if m["total"] else 0.0
            worst = max(worst, share)
            print(f"{page:14s} results {m['results']:8.0f} px of {m['total']:8.0f} px = {100 * share:5.1f}% "
                  f"({m['blocks']} formula blocks)")
    finally:
        driver.quit()
    return 1 if args.max is not None and worst > args.max else 0


if __name__ == "__main__":
    sys.exit(main())
