// cortexloop dashboard: renders the sections the server pushes (server-sent events); no reloads.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const text = (id, value) => { const el = $(id); if (el) el.textContent = value; };
  const fmt = (v, digits = 3) => (v === null || v === undefined ? "-" : Number(v).toFixed(digits));
  const clock = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "-");
  const duration = (s) => (s === null || s === undefined ? "-" : s >= 60 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s` : `${Math.round(s)} s`);
  // bus-to-DOM delay of each trial update (s): read by the latency measurement
  window.cortexloopLatency = [];
  let lastBusTime = null;

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const c of children) node.append(c);
    return node;
  }

  const share = (c) => (c.share_completed === null || c.share_completed === undefined ? "-"
    : `${Math.round(100 * c.share_completed)}% (${c.completed} of ${c.started})`);

  // the last gaze sample in the fixation window (degrees, y up: the SVG's y is flipped)
  function drawGaze(b) {
    const r = b.window_deg || 2, [cx, cy] = b.centre || [0, 0], half = 1.5 * r;
    const svg = $("gaze-view"), ring = $("gaze-window"), dot = $("gaze-dot");
    svg.setAttribute("viewBox", `${cx - half} ${-cy - half} ${2 * half} ${2 * half}`);
    ring.setAttribute("cx", cx); ring.setAttribute("cy", -cy); ring.setAttribute("r", r);
    dot.setAttribute("r", half / 20);
    if (!b.gaze) { dot.setAttribute("visibility", "hidden"); return; }
    const [x, y] = b.gaze, inside = Math.hypot(x - cx, y - cy) <= r;
    const clampTo = (v, c) => Math.max(c - half, Math.min(c + half, v));  // a far gaze sits on the edge
    dot.setAttribute("cx", clampTo(x, cx)); dot.setAttribute("cy", -clampTo(y, cy));
    dot.setAttribute("visibility", "visible");
    dot.setAttribute("class", inside ? "inside" : "outside");
  }

  const render = {
    session(s) {
      text("rig", s.rig || "");
      text("session-id", s.session_id || "");
      const badge = $("state");
      badge.textContent = s.state;
      badge.className = `badge ${s.state}`;
      text("protocol", s.protocol || "-");
      text("step", s.step_index === null || s.step_index === undefined ? "-" : `${s.step_index}: ${s.step_kind || ""}`);
      text("message", s.message || "-");
      text("outcome", s.exit ? `${s.exit}${s.reason ? ` (${s.reason})` : ""}` : "-");
      const link = [`bus: ${s.bus}`];
      if (s.file) link.push(`file: ${s.file}${s.live ? " (live)" : ""}`);
      text("link", link.join(" | "));
    },
    block(b) {
      const c = b.current;
      if (c) {
        text("block-name", `${c.block_id} (${c.source || "?"}${c.fallback ? ", FALLBACK" : ""}) ${c.state || ""}`);
        $("block-bar").style.width = `${Math.round(100 * (c.fraction || 0))}%`;
        text("block-progress", `${c.done} / ${c.n_trials} trials` + (c.rate ? `, ${c.rate.toFixed(1)} trials/s` : "") +
          (c.eta_s !== null && c.eta_s !== undefined ? `, ETA ${duration(c.eta_s)}` : ""));
      }
      const rows = b.blocks.map((x) => el("tr", {}, el("td", { textContent: x.block_id }),
        el("td", { textContent: `${x.done}/${x.n_trials}` }), el("td", { textContent: x.source || "" }),
        el("td", { textContent: x.fallback ? "fallback" : "" }), el("td", { textContent: x.state || "" })));
      $("blocks").replaceChildren(...rows);
    },
    trials(t) {
      text("trial-count", String(t.count));
      const warn = $("quiet-warning");
      const parts = [];
      if (t.quiet) parts.push(t.warning);
      if (t.silent_units && t.silent_units.length) parts.push(`silent in the last trials: ${t.silent_units.join(", ")}`);
      warn.hidden = parts.length === 0;
      warn.textContent = parts.join("; ");
      if (t.last_bus_time && t.last_bus_time !== lastBusTime) {
        lastBusTime = t.last_bus_time;
        window.cortexloopLatency.push(Date.now() / 1000 - t.last_bus_time);
      }
    },
    counts(c) {
      const canvas = $("heatmap");
      const ctx = canvas.getContext("2d");
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      const nT = c.rows.length, nU = c.units.length;
      if (!nT || !nU) return;
      const w = canvas.width / nT, h = canvas.height / nU, top = c.max || 1;
      for (let i = 0; i < nT; i++) {
        for (let j = 0; j < nU; j++) {
          const v = c.rows[i][j];
          if (v === null) { ctx.fillStyle = "#ddd"; } else {
            const a = Math.min(1, v / top);
            ctx.fillStyle = `rgb(${Math.round(255 - 200 * a)},${Math.round(255 - 230 * a)},${Math.round(255 - 120 * a)})`;
          }
          ctx.fillRect(i * w, j * h, Math.ceil(w), Math.ceil(h));
        }
      }
      text("heat-note", `${nU} neurons x last ${nT} trials; darkest = ${fmt(top, 0)} spikes`);
    },
    model(m) {
      const p = m.progress;
      if (p) {
        const epoch = p.epoch === null ? "" : ` epoch ${p.epoch}${p.max_epochs ? "/" + p.max_epochs : ""}`;
        text("model-progress", `${p.task}${p.scope ? " (" + p.scope + ")" : ""}${epoch}: val r ${fmt(p.val_r)}, loss ${fmt(p.loss, 4)}` +
          (p.model_version ? `, new version ${p.model_version}` : ", training"));
        $("model-bar").style.width = `${Math.round(100 * p.fraction)}%`;
      }
      const canvas = $("epochs"), ctx = canvas.getContext("2d");
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      const pts = m.epochs.filter((e) => e.val_r !== null);
      if (pts.length) {
        ctx.strokeStyle = "#3367d6"; ctx.beginPath();
        pts.forEach((e, i) => {
          const x = 10 + (i * (canvas.width - 20)) / Math.max(1, pts.length - 1);
          const y = canvas.height - 10 - (Math.max(-1, Math.min(1, e.val_r)) + 1) / 2 * (canvas.height - 20);
          if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
        });
        ctx.stroke();
        ctx.fillStyle = "#7a8294"; ctx.fillText("val r per epoch (-1..1)", 10, 12);
      }
      $("model-versions").replaceChildren(...m.versions.map((v) => el("li", { className: "model-version", textContent:
        `${v.version} at ${clock(v.time)}: val r ${fmt(v.val_r)}${v.scope ? " (" + v.scope + ")" : ""}` })));
    },
    events(list) {
      $("events").replaceChildren(...list.slice().reverse().map((e) => el("li", { className: e.level,
        textContent: `${clock(e.time)} ${e.event}: ${e.message}` })));
    },
    images(im) {
      for (const which of ["current", "next"]) {
        const b = im[which];
        const box = $(`images-${which}`);
        text(`images-${which}-name`, b ? `${b.block_id} (${b.source || "picks"}, ${b.n_images} images)` : "");
        if (!b) { box.replaceChildren(el("span", { className: "muted", textContent: "not prepared yet" })); continue; }
        box.replaceChildren(...b.images.map((i) => {
          const pic = i.available ? el("img", { src: `/api/image/${encodeURIComponent(i.id)}.png`, alt: i.id, title: i.why })
            : el("div", { className: "missing", title: i.why });
          return el("figure", {}, pic, el("figcaption", { textContent: i.why, title: i.why }));
        }));
      }
    },
    behavior(b) {
      $("behavior-panel").hidden = !b.active;
      if (!b.active) return;
      const k = b.block, s = b.session;
      text("behavior-block", b.block_id || "-");
      text("behavior-share", share(k));
      text("behavior-rewards", `${k.rewards}${k.manual_rewards ? ` (${k.manual_rewards} manual)` : ""}`);
      text("behavior-breaks", String(k.breaks));
      text("behavior-nofix", String(k.no_fixation));
      text("behavior-invalid", String(k.invalid));
      text("behavior-session", `session: ${share(s)} sequences completed, ${s.rewards} rewards, ${s.breaks} breaks, ` +
        `${s.invalid} invalid trials`);
      text("behavior-gaze", b.gaze ? `gaze (${fmt(b.gaze[0], 2)}, ${fmt(b.gaze[1], 2)}) deg at ${b.last || "?"}, ${clock(b.gaze_wall)}`
        : (b.last ? `no eye at ${b.last}, ${clock(b.gaze_wall)}` : "no gaze yet"));
      const warn = $("behavior-warning");
      warn.hidden = !b.idle;
      warn.textContent = b.idle ? b.warning : "";
      drawGaze(b);
    },
    analyses(list) {
      if (!list.length) return;
      $("analyses").replaceChildren(...list.map((a) => el("div", { className: "analysis" },
        el("b", { textContent: `${a.name} (${a.analysis})` }), el("div", { className: "muted", textContent: a.summary || "" }),
        ...a.comparisons.map((c) => el("div", { className: "small", textContent:
          `${c.condition} vs ${c.baseline}: median %dr ${fmt(c.median_percent_change, 1)}, ` +
          `${c.n_significant}/${(c.neurons || []).length} neurons significant, ${c.n_trials} trials` })))));
    },
  };

  function apply(sections) {
    for (const [name, data] of Object.entries(sections)) {
      if (render[name]) render[name](data);
    }
    document.body.dataset.updated = String(Date.now());
  }

  // commands need a login with the operator's password: the page itself carries no secret
  function showOperator(name) {
    const form = $("login");
    const controls = $("controls");
    if (!form || !controls) return;
    form.hidden = Boolean(name);
    controls.hidden = !name;
    text("operator-name", name ? `operator: ${name}` : "");
  }
  if ($("login")) {
    fetch("/api/whoami").then((r) => r.json()).then((w) => showOperator(w.operator)).catch(() => {});
    $("login").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = JSON.stringify({ name: $("login-name").value, password: $("login-password").value });
      const reply = await fetch("/api/login", { method: "POST", headers: { "Content-Type": "application/json" }, body });
      const got = await reply.json().catch(() => ({}));
      $("login-password").value = "";
      text("login-note", reply.ok ? "" : `login refused: ${got.error || reply.status}`);
      if (reply.ok) showOperator(got.operator);
    });
    $("btn-logout").addEventListener("click", async () => {
      await fetch("/api/logout", { method: "POST" });
      showOperator(null);
    });
  }
  for (const button of document.querySelectorAll("[data-command]")) {
    button.addEventListener("click", async () => {
      const kind = button.dataset.command;
      if (kind === "abort" && !window.confirm("Abort the session?")) return;
      const init = { method: "POST", headers: {} };
      const ms = kind === "reward" && $("reward-ms") ? $("reward-ms").value.trim() : "";
      if (ms) {
        init.headers["Content-Type"] = "application/json";
        init.body = JSON.stringify({ duration_ms: Number(ms) });
      }
      const reply = await fetch(`/api/command/${kind}`, init);
      const body = await reply.json().catch(() => ({}));
      if (reply.status === 401) showOperator(null);
      text("command-note", reply.ok ? `${kind} sent` : `${kind} refused: ${body.error || reply.status}`);
    });
  }

  fetch("/api/state").then((r) => r.json()).then(apply).catch(() => {});
  const source = new EventSource("/api/events");
  source.onmessage = (ev) => apply(JSON.parse(ev.data));
  source.onerror = () => text("link", "dashboard server unreachable; retrying");
})();
