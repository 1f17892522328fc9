"""Numbers and names as a paper prints them, and the page's HTML pieces (all text escaped here)."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence

#: how each condition (the head of its label) is named on the page
CONDITION_NAMES: dict[str, str] = {
    "normal": "random normal", "random_normal": "random normal", "pool_random": "random normal",
    "gaudy": "gaudy", "active": "active picks", "heldout": "held-out", "max_normal": "maximizing natural",
    "max_synth": "maximizing synthesized", "adv+": "adversarial +", "adv-": "adversarial -",
    "base": "base", "smooth_minus": "smooth-", "smooth_random": "random smoothing (control)",
    "dots": "dots",
}

#: the causal tests of Cowley et al. 2023, keyed as in the demo's summary.json
TESTS: dict[str, str] = {
    "max_normal": "maximizing natural images", "max_synth": "maximizing synthesized images",
    "adv_plus": "adversarial +", "adv_minus": "adversarial -", "smooth_minus": "smooth-",
    "smooth_random": "random smoothing (control)",
}

_NEURON = re.compile(r"^neuron=(\d+)$")


def _finite(x: object) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


def pct(x: object, sign: bool = True) -> str:
    """A percent change to 0 decimals: ``+98%``."""
    v = _finite(x)
    return "n/a" if v is None else (f"{v:+.0f}%" if sign else f"{v:.0f}%")


def num(x: object, digits: int = 2) -> str:
    """A correlation or a mean to ``digits`` decimals."""
    v = _finite(x)
    return "n/a" if v is None else f"{v:.{digits}f}"


def pval(x: object) -> str:
    """A p-value to 2 significant digits."""
    v = _finite(x)
    return "n/a" if v is None else f"{v:.2g}"


def ci(lo: object, hi: object) -> str:
    """A percent-change interval: ``[+40%, +160%]``."""
    return "n/a" if _finite(lo) is None or _finite(hi) is None else f"[{pct(lo)}, {pct(hi)}]"


def neuron_label(j: int) -> str:
    """The name of neuron ``j`` (column ``j`` of the counts) everywhere on the page."""
    return f"n{j}"


def condition_name(label: str) -> str:
    """``max_normal/neuron=3`` -> ``maximizing natural, n3``; ``active/fallback`` -> ``active picks
    (fallback: random pool images)``; ``dots/size=2`` -> ``dots, size=2``."""
    head, _, tail = label.partition("/")
    name = CONDITION_NAMES.get(head, head.replace("_", " "))
    if not tail or tail == head:
        return name
    m = _NEURON.match(tail)
    if m:
        return f"{name}, {neuron_label(int(m.group(1)))}"
    if tail == "fallback":
        return f"{name} (fallback: random pool images shown instead)"
    return f"{name}, {tail}"


def esc(x: object) -> str:
    return html.escape(str(x))


def anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def figure(src: str | None, caption: str) -> str:
    if not src:
        return ""
    return (f"<figure><img src='{esc(src)}' alt='{esc(caption)}'>"
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def table(header: Sequence[str] | None, rows: Sequence[Sequence[object]], cls: str = "") -> str:
    """An HTML table (no header row where ``header`` is None); cells are escaped text (format numbers
    before)."""
    head = "" if header is None else "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{esc(cls)}'>{head}{body}</table>"


CSS = """
body{font-family:Georgia,serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #aaa;margin-top:2.5em}h3{margin-top:1.8em}
nav{background:#f5f5f5;padding:.5em 1.5em;border:1px solid #ddd}nav ol{margin:.3em 0}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.9em;color:#444;margin-top:.3em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}th{background:#eee}
td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:.9em}
"""
