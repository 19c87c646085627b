"""The training page's figures, from this build's training run (derivations/training.md).

    ```{gradproof-training} curves
    ```
        WHAT is one of: summary (the measured figures in a paragraph), curves (loss and accuracy
        per epoch, Adam and SGD), confusion (the test set's confusion matrix as a table),
        misclassified (test digits the network got wrong, as images), ablation (the training
        curves of batch norm's staged backward with a term dropped, and a table).

    {training}`KEY`
        one figure in prose: accuracy, seconds, total_seconds, misclassified, epochs, steps,
        hidden, batch, train, test, threads, or `diff RUN` / `acc RUN` (a run's largest change of a
        step's loss from the staged run as derived / its final test accuracy), `bias RUN` /
        `others RUN` (its largest change of fc1.bias / of any other parameter from that run),
        `accdiff RUN` (its largest change of an epoch's test accuracy).

The run is training.json, written by build/<preset>/gradproof_train in the site build's training
stage (build.sh); conf.py hands its path over as gradproof_training. The pages depend on it, so a
new run re-renders them. Without it each directive shows a box saying that there is no run.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

# The runs of training.json, as the page names them.
RUN_LABELS = {
    "adam": "Adam (fused backward)",
    "sgd": "SGD, momentum 0.9 (fused backward)",
    "staged": "staged backward, as derived",
    "no_dvar_dmu": "without \u2202\u03c3\u00b2/\u2202\u03bc (bn.dvar_dmu)",
    "no_dl_dmu": "without \u2202L/\u2202\u03bc (bn.dl_dmu)",
    "no_dl_dvar": "without \u2202L/\u2202\u03c3\u00b2 (bn.dl_dvar)",
}
COLOURS = {"adam": "#1f77b4", "sgd": "#ff7f0e", "staged": "#1f77b4", "no_dvar_dmu": "#2ca02c",
           "no_dl_dmu": "#d62728", "no_dl_dvar": "#9467bd"}


class TrainingError(ValueError):
    pass


def load(path: str) -> dict[str, Any] | None:
    """training.json, checked for the keys the page reads; None when there is no file."""
    if not path or not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise TrainingError(f"{path}: not readable as JSON: {e}") from e
    for key in ("data", "config", "runs", "confusion", "misclassified", "determinism", "total_seconds"):
        if key not in d:
            raise TrainingError(f"{path}: no '{key}' (expected the output of gradproof_train)")
    names = [r.get("name") for r in d["runs"]]
    for name in RUN_LABELS:
        if name not in names:
            raise TrainingError(f"{path}: no run '{name}' among {names}")
    return d


def run_of(d: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in d["runs"] if r["name"] == name)


def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def fmt(v: float) -> str:
    return "0" if v == 0 else f"{v:.2g}"


def figure(d: dict[str, Any], key: str) -> str:
    """The text of {training}`KEY`."""
    head = run_of(d, "adam")
    parts = key.split()
    if len(parts) == 2 and parts[0] in ("bias", "others") and parts[1] in RUN_LABELS:
        # The largest change of fc1.bias / of every other parameter from the run as derived.
        by = run_of(d, parts[1])["vs_staged"].get("max_parameter_diff_by_name")
        if not by or "fc1.bias" not in by:
            raise TrainingError("training role: the run has no max_parameter_diff_by_name with fc1.bias")
        return fmt(by["fc1.bias"] if parts[0] == "bias" else max(v for k, v in by.items() if k != "fc1.bias"))
    if len(parts) == 2 and parts[0] in ("diff", "acc", "accdiff") and parts[1] in RUN_LABELS:
        r = run_of(d, parts[1])
        if parts[0] == "accdiff":  # the largest change of an epoch's test accuracy, in points
            return f"{100 * r['vs_staged']['max_test_acc_diff']:.2f} points"
        if parts[0] == "acc":
            return pct(r["epochs"]["test_acc"][-1])
        return fmt(r["vs_staged"]["max_step_loss_diff"])
    c, data = d["config"], d["data"]
    simple = {
        "accuracy": lambda: pct(head["epochs"]["test_acc"][-1]),
        "seconds": lambda: f"{head['seconds']:.2f} s",
        "total_seconds": lambda: f"{d['total_seconds']:.1f} s",
        "misclassified": lambda: str(d["misclassified_count"]),
        "epochs": lambda: str(c["epochs"]),
        "steps": lambda: str(len(head["step_loss"])),
        "hidden": lambda: str(c["hidden"]),
        "batch": lambda: str(c["batch"]),
        "train": lambda: f"{data['train']:,}",
        "test": lambda: f"{data['test']:,}",
        "threads": lambda: str(d["threads"]),
    }
    if key not in simple:
        raise TrainingError(f"training role: unknown figure {key!r}")
    return simple[key]()


def _svg(fig, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, format="svg", metadata={"Date": None})


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    matplotlib.rcParams["svg.hashsalt"] = "gradproof"  # the same data gives the same file
    return plt


def curves_plot(d: dict[str, Any], target: Path) -> None:
    """Loss (left) and accuracy (right) per epoch, Adam and SGD; training and test."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7.2, 3.0), dpi=100)
    for name in ("adam", "sgd"):
        r = run_of(d, name)
        e = r["epochs"]
        xs = list(range(1, len(e["train_loss"]) + 1))
        col = COLOURS[name]
        ax1.plot(xs, e["train_loss"], color=col, linewidth=1.4, label=f"{RUN_LABELS[name]}, training")
        ax1.plot(xs, e["test_loss"], color=col, linewidth=1.4, linestyle="--", label=f"{name}, test")
        ax2.plot(xs, [100 * v for v in e["train_acc"]], color=col, linewidth=1.4, label=f"{name}, training")
        ax2.plot(xs, [100 * v for v in e["test_acc"]], color=col, linewidth=1.4, linestyle="--",
                 label=f"{name}, test")
    ax1.set_yscale("log")
    ax1.set_xlabel("epoch", fontsize=9)
    ax1.set_ylabel("cross-entropy", fontsize=9)
    ax2.set_xlabel("epoch", fontsize=9)
    ax2.set_ylabel("accuracy (%)", fontsize=9)
    ax2.set_ylim(80, 100.5)
    for ax in (ax1, ax2):
        ax.tick_params(labelsize=8)
        ax.grid(True, linewidth=0.3, alpha=0.5)
    ax1.legend(fontsize=7, frameon=False)
    ax2.legend(fontsize=7, frameon=False, loc="lower right")
    fig.tight_layout()
    _svg(fig, target)
    plt.close(fig)


def misclassified_plot(d: dict[str, Any], target: Path) -> None:
    """The misclassified test digits as 8×8 grey images (ink dark on white), titled true → predicted."""
    plt = _plt()
    ms = d["misclassified"]
    n = max(1, len(ms))
    fig, axes = plt.subplots(1, n, figsize=(0.95 * n + 0.2, 1.35), dpi=100, squeeze=False)
    for ax, m in zip(axes.flat, ms):
        img = [m["pixels"][8 * r:8 * r + 8] for r in range(8)]
        ax.imshow(img, cmap="gray_r", vmin=0, vmax=16, interpolation="nearest")
        ax.set_title(f"{m['label']} \u2192 {m['predicted']}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    _svg(fig, target)
    plt.close(fig)


def ablation_plot(d: dict[str, Any], target: Path) -> None:
    """Left: every step's batch loss of the staged runs. Right: |loss − loss as derived| per step
    (log scale; an exact 0 is drawn at the bottom)."""
    plt = _plt()
    base = run_of(d, "staged")["step_loss"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7.2, 3.2), dpi=100)
    floor = 1e-9
    for name, style in (("staged", "-"), ("no_dvar_dmu", ":"), ("no_dl_dmu", "-"), ("no_dl_dvar", "-")):
        s = run_of(d, name)["step_loss"]
        xs = list(range(1, len(s) + 1))
        ax1.plot(xs, s, color=COLOURS[name], linewidth=1.0 if name != "no_dvar_dmu" else 2.0, linestyle=style,
                 label=RUN_LABELS[name])
        if name != "staged":
            ax2.plot(xs, [max(abs(a - b), floor) for a, b in zip(s, base)], color=COLOURS[name], linewidth=0.9,
                     label=RUN_LABELS[name])
    ax1.set_yscale("log")
    ax1.set_xlabel("step", fontsize=9)
    ax1.set_ylabel("batch cross-entropy", fontsize=9)
    ax2.set_yscale("log")
    ax2.set_ylim(floor / 2, 10)
    ax2.set_xlabel("step", fontsize=9)
    ax2.set_ylabel("|loss \u2212 loss as derived|", fontsize=9)
    ax2.axhline(2.0 ** -24, color="black", linestyle="--", linewidth=0.8)
    ax2.annotate("float32 u = 2\u207b\u00b2\u2074", (len(base) * 0.02, 2.0 ** -24 * 1.6), fontsize=7)
    for ax in (ax1, ax2):
        ax.tick_params(labelsize=8)
        ax.grid(True, linewidth=0.3, alpha=0.5)
    ax1.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    _svg(fig, target)
    plt.close(fig)


def table(headers: list[str], rows: list[list[str]], classes: list[str]) -> nodes.table:
    t = nodes.table(classes=classes)
    g = nodes.tgroup(cols=len(headers))
    t += g
    for _ in headers:
        g += nodes.colspec(colwidth=1)
    head = nodes.thead()
    g += head
    hr = nodes.row()
    for h in headers:
        hr += nodes.entry("", nodes.paragraph(text=h))
    head += hr
    body = nodes.tbody()
    g += body
    for r in rows:
        row = nodes.row()
        for c in r:
            row += nodes.entry("", nodes.paragraph(text=c))
        body += row
    return t


def no_run_box(path: str) -> nodes.admonition:
    box = nodes.admonition(classes=["gradproof-status", "gradproof-no-training", "warning"])
    box += nodes.title(text="No training run in this build")
    box += nodes.paragraph(text=f"There is no {os.path.basename(path) if path else 'training.json'}: this build "
                                "ran no training, so this part of the page shows no measurement. "
                                "Run ./build.sh site, which trains the network in its training stage.")
    return box


class TrainingDirective(SphinxDirective):
    required_arguments = 1

    def image(self, name: str, alt: str, draw) -> nodes.image:
        target = Path(self.config.gradproof_generated_dir) / f"training_{name}.svg"
        draw(target)
        uri = "/" + os.path.relpath(target, self.env.srcdir)
        return nodes.image(uri=uri, alt=alt, classes=["gradproof-plot", f"gradproof-training-{name}"])

    def run(self) -> list[nodes.Node]:
        what = self.arguments[0]
        path = self.config.gradproof_training
        if path:
            self.env.note_dependency(os.path.abspath(path))
        try:
            d = load(path)
        except TrainingError as e:
            logger.warning(str(e), location=self.get_location())
            return [no_run_box(path)]
        if d is None:
            return [no_run_box(path)]
        head = run_of(d, "adam")
        c = d["config"]
        if what == "summary":
            det = d["determinism"]
            p = nodes.paragraph(classes=["gradproof-training-summary"])
            p += nodes.strong(text=f"Measured in this build: {pct(head['epochs']['test_acc'][-1])} test accuracy. ")
            p += nodes.Text(
                f"{c['epochs']} epochs of Adam (lr {c['adam']['lr']:g}, batch {c['batch']}, H = {c['hidden']}, "
                f"seed {c['seed']}) took {head['seconds']:.2f} s on {d['threads']} thread"
                f"{'' if d['threads'] == 1 else 's'}; all {len(d['runs'])} runs of this page and the "
                f"determinism checks took {d['total_seconds']:.1f} s. {d['misclassified_count']} of the "
                f"{d['data']['test']} test digits are misclassified. "
                f"SGD with momentum reached {pct(run_of(d, 'sgd')['epochs']['test_acc'][-1])}. "
                f"A second run gave {'the same bits' if det['rerun_identical'] else 'OTHER BITS'} "
                f"(every step's loss and every trained parameter), and a {det['threads_epochs']}-epoch run at "
                f"1 and at 2 threads {'the same bits' if det['threads_identical'] else 'DIFFERENT BITS'}.")
            return [p]
        if what == "curves":
            alt = ("Two line plots against the epoch: left the cross-entropy (log scale) on the training "
                   "and the test set, right the training and test accuracy in percent, for Adam and for "
                   f"SGD with momentum; Adam ends at {pct(head['epochs']['test_acc'][-1])} test accuracy")
            return [self.image("curves", alt, lambda t: curves_plot(d, t))]
        if what == "confusion":
            rows = [[str(t)] + [str(v) if v else "\u00b7" for v in d["confusion"][t]] +
                    [pct(d["confusion"][t][t] / max(1, sum(d["confusion"][t])))] for t in range(10)]
            return [table(["true \u2193 / predicted \u2192"] + [str(p) for p in range(10)] + ["recall"], rows,
                          ["gradproof-training-confusion"])]
        if what == "misclassified":
            ms = d["misclassified"]
            if not ms:
                return [nodes.paragraph(text="No test digit is misclassified in this run.")]
            alt = (f"{len(ms)} misclassified test digits as 8 by 8 grey images, each titled true label "
                   "arrow predicted label: " + ", ".join(f"{m['label']} read as {m['predicted']}" for m in ms))
            return [self.image("misclassified", alt, lambda t: misclassified_plot(d, t))]
        if what == "ablation":
            alt = ("Two plots against the training step: left the batch loss of the staged backward as derived "
                   "and with bn.dvar_dmu, bn.dl_dmu or bn.dl_dvar dropped; right the absolute difference of "
                   "each from the run as derived, on a log scale, with the float32 unit roundoff marked. "
                   f"Without bn.dvar_dmu the largest difference is {fmt(run_of(d, 'no_dvar_dmu')['vs_staged']['max_step_loss_diff'])}; "
                   f"without bn.dl_dmu {fmt(run_of(d, 'no_dl_dmu')['vs_staged']['max_step_loss_diff'])}")
            rows = []
            for name in ("staged", "adam", "no_dvar_dmu", "no_dl_dmu", "no_dl_dvar"):
                r = run_of(d, name)
                v = r["vs_staged"]
                rows.append([RUN_LABELS[name], "yes" if v["identical_bits"] else "no", fmt(v["max_step_loss_diff"]),
                             fmt(v["max_parameter_diff"]), pct(r["epochs"]["test_acc"][-1])])
            return [self.image("ablation", alt, lambda t: ablation_plot(d, t)),
                    table(["run (Adam, same seed)", "same bits as derived", "largest |\u0394 step loss|",
                           "largest |\u0394 parameter|", "test accuracy"], rows, ["gradproof-training-ablation"])]
        logger.warning(f"gradproof-training: unknown part {what!r} (summary, curves, confusion, misclassified, "
                       "ablation)", location=self.get_location())
        return []


def training_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    env = inliner.document.settings.env
    path = env.config.gradproof_training
    if path:
        env.note_dependency(os.path.abspath(path))
    try:
        d = load(path)
        value = figure(d, text) if d is not None else "(no training run in this build)"
    except TrainingError as e:
        msg = inliner.reporter.warning(str(e), line=lineno)
        return [nodes.inline(rawtext, text), msg], []
    return [nodes.inline(rawtext, value, classes=["gradproof-training-figure"])], []


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("gradproof_training", "", "env")
    app.add_directive("gradproof-training", TrainingDirective)
    app.add_role("training", training_role)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
