"""Assembles the report page: contents, ground truth, one section per session, timing."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from controller.report import behavior, figures
from controller.report.causal import causal_sections
from controller.report.data import Session, load_images
from controller.report.fmt import CSS, anchor, esc, figure, neuron_label, num, table
from controller.report.grids import block_grid
from controller.report.truth import session_facts, truth_section
from controller.store import SessionReader
from wire.documents import StopDoc
from wire.errors import StoreError

KINDS = {"sysid": "System identification", "maximize": "Causal test: maximizing images",
         "adversarial": "Causal test: adversarial images", "smooth": "Causal test: smooth- images",
         "dots": "Dots: tuning", "script": "Scripted session"}


class Page:
    """Sections (h2) with their subsections (h3), and the contents list they make."""

    def __init__(self) -> None:
        self.sections: list[tuple[str, str, list[tuple[str, str]], str]] = []

    def add(self, title: str, body: str, subs: list[tuple[str, str]] | None = None) -> None:
        self.sections.append((title, anchor(title), subs or [], body))

    def html(self, head: str) -> str:
        items = []
        for title, aid, subs, _ in self.sections:
            inner = "".join(f"<li><a href='#{esc(sid)}'>{esc(st)}</a></li>" for st, sid in subs)
            items.append(f"<li><a href='#{esc(aid)}'>{esc(title)}</a>" + (f"<ol>{inner}</ol>" if inner else "")
                         + "</li>")
        nav = f"<nav id='contents'><h2>Contents</h2><ol>{''.join(items)}</ol></nav>" if items else ""
        body = "".join(f"<section id='{esc(aid)}'><h2>{esc(title)}</h2>{b}</section>"
                       for title, aid, _, b in self.sections)
        return (f"<!doctype html><meta charset=utf-8><title>cortexloop report</title><style>{CSS}</style>\n"
                + head + nav + body)


def _sub(session: Session, title: str, body: str, subs: list[tuple[str, str]]) -> str:
    sid = anchor(f"{session.name}-{title}")
    subs.append((title, sid))
    return f"<h3 id='{esc(sid)}'>{esc(title)}</h3>{body}"


def _timing_fragment(path: Path, out: Path, name: str) -> str:
    from controller.timing import timing_section  # matplotlib is imported there, on first use

    with SessionReader(path) as reader:
        return str(timing_section(reader, out, name))


def session_section(session: Session, summary: dict[str, Any], out: Path) -> tuple[str, str, list[tuple[str, str]]]:
    subs: list[tuple[str, str]] = []
    parts: list[str] = []
    stop = next((d for d in session.docs if isinstance(d, StopDoc)), None)
    facts = [("protocol", session.protocol or "n/a"), ("title", session.title or "n/a"),
             ("blocks", len(session.blocks())), ("exit", stop.exit_status if stop else "not stopped (crashed?)"),
             ("trials", stop.n_trials if stop else "n/a")]
    parts.append(table(None, facts, "facts"))
    versions = session.versions()
    if versions:
        rows = [(f"v{k}", d.version, d.details.get("scope", ""), d.n_images, num(d.metrics.get("val_r")))
                for k, d in enumerate(versions, 1)]
        parts.append(_sub(session, "model versions", figure(figures.versions(session, out),
                          f"{session.name}: the ensemble's validation r after each retraining")
                          + table(["", "version", "scope", "images", "validation r"], rows), subs))
    s = session_facts(summary, session.name, session.path)
    if s is not None and s.get("median_r") is not None:
        r = s.get("r_per_neuron") or []
        rand = (s.get("random_policy") or {}).get("r_per_neuron") or []
        per_neuron = [(neuron_label(j), num(v), num(rand[j]) if j < len(rand) else "n/a") for j, v in enumerate(r)]
        note = (f"held-out median r against the ground truth {num(s.get('median_r'))} (images never shown); "
                f"with random picks in place of the active ones {num((s.get('random_policy') or {}).get('median_r'))}"
                f"; median r2_ER {num(s.get('r2_er_median'), 3)}")
        parts.append(_sub(session, "held-out prediction", f"<p>{esc(note)}</p>"
                          + table(["neuron", "r, active picks", "r, random picks"], per_neuron), subs))
    for title, body in causal_sections(session, session.analyses(), out):
        parts.append(_sub(session, title, body, subs))
    grids = []
    for block in session.blocks():
        png, caption = block_grid(session, block, out)
        if png:
            grids.append(figure(png, f"{session.name}, block {block.block_id}: images by condition (up to 8 "
                                "per row; model picks highest score first)") + caption)
    if grids:
        parts.append(_sub(session, "images by condition", "".join(grids), subs))
    timing = _timing_fragment(session.path, out, session.name)
    if timing:
        parts.append(_sub(session, "onset timing", timing, subs))
    kind = KINDS.get(session.protocol, session.protocol or "Session")
    return f"{kind}: {session.name}", "".join(parts), subs


def _damage_section(skipped: list[str], unreadable: list[str], empty: list[str]) -> str:
    items = [f"<li>{html.escape(p)}</li>" for p in unreadable + skipped]
    items += [f"<li>{html.escape(name)}: no document could be read</li>" for name in empty]
    what = []
    if unreadable:
        what.append(f"{len(unreadable)} file(s) could not be opened")
    if skipped:
        what.append(f"{len(skipped)} damaged part(s) were skipped")
    if empty:
        what.append(f"{len(empty)} file(s) hold no readable document")
    return ("<section id='damaged' style='border:2px solid #c00;padding:0 1em;background:#fee'>"
            "<h2>damaged records</h2>"
            f"<p><b>{html.escape('; '.join(what))}</b>: the figures below leave them out.</p>"
            f"<ul>{''.join(items)}</ul></section>")


def write_report(session_files: list[Path], out: Path, summary_file: Path | None = None,
                 problems: list[str] | None = None) -> Path:
    """Write ``out/index.html`` and its PNGs; returns the page's path.

    Damaged records are skipped and a file that cannot be opened is left out; both are listed in a
    "damaged records" section at the top of the page and appended to ``problems`` (when given)."""
    out.mkdir(parents=True, exist_ok=True)
    sessions: list[Session] = []
    skipped: list[str] = []
    unreadable: list[str] = []
    for f in session_files:
        try:
            with SessionReader(f) as r:
                docs = list(r.documents())
                skipped += r.problems
        except StoreError as exc:
            unreadable.append(str(exc))
            continue
        sessions.append(Session(f.stem, f, docs, load_images(docs)))
    empty = [s.name for s in sessions if not s.docs]
    if problems is not None:
        problems += unreadable + skipped + [f"{name}: no document could be read" for name in empty]
    head = ("<h1>cortexloop report</h1>"
            f"<p>{len(sessions)} session(s): {esc(', '.join(s.name for s in sessions))}</p>")
    if skipped or unreadable or empty:
        head += _damage_section(skipped, unreadable, empty)
    page = Page()
    summary = json.loads(summary_file.read_text()) if summary_file and summary_file.is_file() else {}
    summary = summary if isinstance(summary, dict) else {}
    truth = truth_section(summary, out) + figure(
        figures.heldout(summary, out), "held-out prediction performance per neuron (ground truth), by session")
    if truth:
        page.add("Ground truth", truth)
    for s in sessions:
        if s.docs:
            title, body, subs = session_section(s, summary, out)
            page.add(title, body, subs)
    awake = behavior.rows(sessions)
    if awake:
        page.add("Behaviour", figure(behavior.figure(awake, out), "sequences completed and broken, and invalid "
                                     "trials, per block (awake sessions)") + behavior.table_html(awake))
    timing = figure(figures.timing(sessions, out), "dropped frames per block; turnaround between blocks")
    if timing:
        page.add("Timing", timing)
    if not any("<figure>" in b for *_, b in page.sections):
        head += ("<p>Nothing to draw: " + ("no session file could be read." if not sessions else
                 "the sessions hold no model versions, causal tests, image blocks, trials or summary.") + "</p>")
    path = out / "index.html"
    path.write_text(page.html(head))
    return path
