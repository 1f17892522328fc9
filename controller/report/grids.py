"""Image grids: every block's images, one labelled row per condition, with why each was picked."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from controller.report.data import Session
from controller.report.figures import plt, save
from controller.report.fmt import CONDITION_NAMES, condition_name, esc, num
from wire.documents import BlockDoc, PickDoc

PER_ROW = 8
_ORDER = list(CONDITION_NAMES)


def _row_key(cond: str) -> tuple[int, int, str]:
    head, _, tail = cond.partition("/")
    m = re.match(r"neuron=(\d+)$", tail)
    return (_ORDER.index(head) if head in _ORDER else len(_ORDER), int(m.group(1)) if m else -1, cond)


def conditions(block: BlockDoc) -> dict[str, list[str]]:
    """Image ids by condition label, in order of first showing; rows in the page's order."""
    by: dict[str, list[str]] = {}
    for _, image, cond in block.params.get("trials", []):
        ids = by.setdefault(str(cond), [])
        if image not in ids:
            ids.append(str(image))
    return {c: by[c] for c in sorted(by, key=_row_key)}


#: how each pick generator is said on the page
GENERATORS = {"normal": "drawn at random from the image pool", "pool_random": "drawn at random from the image pool",
              "gaudy": "gaudy versions of random pool images", "active": "active learning"}


def _sets(block: BlockDoc) -> dict[str, dict[str, Any]]:
    """The block's image sets by the head of their condition label."""
    return {str(s.get("condition") or s.get("source")): s for s in (block.params.get("step") or {}).get("images", [])}


def _pick(cands: list[PickDoc], cond: str, sets: dict[str, dict[str, Any]]) -> PickDoc | None:
    """The pick of an image for the set of row ``cond`` (an image may be in two sets of a block)."""
    head, _, tail = cond.partition("/")
    s = sets.get(head, {})
    want = f"fallback:{s.get('fallback')}" if tail == "fallback" else str(s.get("source", head))
    return next((p for p in cands if p.generator == want), cands[0] if len(cands) == 1 else None)


def _why(cond: str, mine: list[PickDoc], requests: dict[str, dict[str, Any]]) -> str:
    """One sentence: how this row's images were chosen (from their pick documents)."""
    if not mine:
        return ""
    gens = sorted({GENERATORS.get(p.generator, p.generator.replace(":", ": ")) for p in mine})
    models = sorted({p.model_version for p in mine if p.model_version})
    scores = [p.score for p in mine if p.score is not None]
    params = {} if cond.endswith("/fallback") else requests.get(cond.partition("/")[0], {})
    how = ", ".join(f"{k}={v}" for k, v in params.items() if k != "generator" and isinstance(v, str | int | float))
    text = f"{'; '.join(gens)}"
    if models:
        text += f" with model version {', '.join(models)}"
    if how:
        text += f" ({how})"
    if scores:
        text += f"; model score {num(min(scores))} to {num(max(scores))}, shown highest first with its score"
    instead = {str(p.details.get("instead_of")) for p in mine if p.details.get("instead_of")}
    if instead:
        text += f"; shown instead of {', '.join(sorted(instead))}, whose images did not arrive"
    return text


def block_grid(session: Session, block: BlockDoc, out: Path) -> tuple[str | None, str]:
    """(PNG name, HTML caption) of one block's grid."""
    rows = conditions(block)
    if not rows:
        return None, ""
    sets = _sets(block)
    made = session.generate_params()
    requests = {k: made[s["request"]] for k, s in sets.items() if s.get("request") in made}
    cands = session.picks(block.block_id)
    picks = {(c, i): p for c, ids in rows.items() for i in ids
             if (p := _pick(cands.get(i, []), c, sets)) is not None}

    def order(c: str, ids: list[str]) -> list[str]:
        def score(i: str) -> float:
            p = picks.get((c, i))
            return -(p.score if p is not None and p.score is not None else float("-inf"))

        return sorted(ids, key=score)[:PER_ROW]

    shown = {c: order(c, ids) for c, ids in rows.items()}
    cols = max(len(v) for v in shown.values())
    fig, axes = plt().subplots(len(rows), cols, figsize=(1.2 * cols + 1.6, 1.35 * len(rows)), squeeze=False)
    for r, (cond, ids) in enumerate(shown.items()):
        for j in range(cols):
            ax = axes[r][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(j < len(ids))
            if j >= len(ids):
                continue
            px = session.images.get(ids[j])
            if px is None:  # its record is damaged: say so where it would have been
                ax.text(0.5, 0.5, "image\nlost", ha="center", va="center", fontsize=6, color="red")
            else:
                ax.imshow(px)
            p = picks.get((cond, ids[j]))
            if p is not None and p.score is not None:
                ax.set_xlabel(f"score {num(p.score)}", fontsize=6)
        axes[r][0].set_ylabel(condition_name(cond), fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(f"{session.name}, block {block.block_id}", fontsize=9)
    name = save(fig, out, f"{session.name}-{block.block_id}-images.png")
    items = []
    for cond, ids in rows.items():
        why = _why(cond, [picks[(cond, i)] for i in ids if (cond, i) in picks], requests)
        items.append(f"<li><b>{esc(condition_name(cond))}</b>: {len(ids)} image(s), {len(shown[cond])} shown"
                     + (f"; {esc(why)}" if why else "") + "</li>")
    return name, f"<ul class='rows'>{''.join(items)}</ul>"
