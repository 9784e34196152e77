// The stopwise dashboard's script: refreshes the figures the server rendered into the page from
// GET /dashboard/data every few seconds, and draws the charts as SVG. Hand-written, no library,
// nothing loaded from elsewhere. Strings from the server only ever go in as text (textContent),
// never as markup.
(function () {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";
  const WIDTH = 600;
  const HEIGHT = 300;
  const MARGIN = { left: 52, right: 16, top: 30, bottom: 40 };

  const finite = (x) => typeof x === "number" && isFinite(x);
  const percent = (x) => (finite(x) ? (100 * x).toFixed(1) + " %" : "–");
  const number = (x) => (finite(x) ? String(x) : "");
  const pad = (n) => String(n).padStart(2, "0");
  const clock = (ms) => {
    const d = new Date(ms);
    return pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds());
  };

  function el(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function html(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // The figures of one route, by field: [text shown, exact value] (as the server computes them).
  function fields(route) {
    const out = {};
    const counts = (group, names) => {
      let total = 0;
      for (const name of names) {
        const n = (route[group] && route[group][name]) || 0;
        total += n;
        out[group + "_" + name] = [String(n), String(n)];
      }
      return total;
    };
    counts("audits", ["run", "dropped", "failed"]);
    const total = counts("requests", ["stopped", "completed", "failed", "cancelled"]);
    out.requests = [String(total), String(total)];
    const online = route.online;
    if (!online) return out;
    const estimates = online.estimates || [];
    const current = estimates[online.active] || {};
    out.active_label = [online.active_label, online.active_label];
    out.active = [String(online.active), String(online.active)];
    out.active_version = [current.version || "", current.version || ""];
    out.ladder = [String(estimates.length), String(estimates.length)];
    for (const name of ["generation", "audits_in_window", "min_audits", "window"]) {
      out[name] = [String(online[name]), String(online[name])];
    }
    const fractions = {
      risk: current.risk,
      bound: current.bound,
      token_reduction: current.token_reduction,
      epsilon: online.epsilon,
      delta: online.delta,
    };
    for (const [name, x] of Object.entries(fractions)) out[name] = [percent(x), number(x)];
    let state;
    if ((current.n || 0) < online.min_audits) state = "collecting: " + (current.n || 0) + " of " + online.min_audits + " audits";
    else if (current.certified) state = "certified";
    else state = "not certified";
    out.state = [state, state];
    let proposal = "none";
    if (online.proposal) {
      const to = estimates[online.proposal.to] || {};
      proposal = (to.label || "") + " (bound " + percent(online.proposal.bound) + " over " + online.proposal.n + " audits)";
    }
    out.proposal = [proposal, proposal];
    return out;
  }

  function setField(scope, name, text, value) {
    for (const node of scope.querySelectorAll('[data-field="' + name + '"]')) {
      node.textContent = text;
      node.setAttribute("data-value", value);
    }
  }

  function render(data) {
    for (const name of ["received", "stored", "unknown_id"]) {
      const n = String(data.feedback[name] || 0);
      setField(document, "feedback_" + name, n, n);
    }
    setField(document, "updated", clock(data.at_ms) + " UTC", String(data.at_ms));
    for (const section of document.querySelectorAll("section.route")) {
      const route = data.routes[section.getAttribute("data-route")];
      if (!route) continue;
      const f = fields(route);
      for (const [name, [text, value]] of Object.entries(f)) setField(section, name, text, value);
      if (!route.online) continue;
      const badge = section.querySelector('[data-field="state"]');
      if (badge) badge.setAttribute("data-state", f.state[0].split(":")[0].replace(" ", "-"));
      ladder(section, route.online);
      changes(section, route.online);
      const pareto = section.querySelector('svg[data-chart="pareto"]');
      if (pareto) drawPareto(pareto, route.online);
      const history = section.querySelector('svg[data-chart="history"]');
      if (history) drawHistory(history, route.online, route.history || []);
    }
  }

  // The table of the ladder's settings: figures, and a bar of each bound against ε.
  function ladder(section, online) {
    const top = scaleTop(online);
    online.estimates.forEach((e, i) => {
      const row = section.querySelector('tr[data-setting="' + i + '"]');
      if (!row) return;
      row.classList.toggle("active", i === online.active);
      const cells = {
        label: [e.label, e.label],
        version: [e.version, e.version],
        n: [String(e.n), String(e.n)],
        losses: [String(e.losses), String(e.losses)],
        risk: [percent(e.risk), number(e.risk)],
        bound: [percent(e.bound), number(e.bound)],
        token_reduction: [percent(e.token_reduction), number(e.token_reduction)],
        certified: [e.certified ? "yes" : "no", e.certified ? "yes" : "no"],
      };
      for (const [col, [text, value]] of Object.entries(cells)) {
        const cell = row.querySelector('[data-col="' + col + '"]');
        if (!cell) continue;
        cell.textContent = text;
        cell.setAttribute("data-value", value);
      }
      const bar = row.querySelector('[data-col="bar"]');
      if (!bar) return;
      const w = 140, h = 14, x = (v) => (Math.max(0, Math.min(top, v)) / top) * w;
      const svg = el("svg", { class: "bar", width: w, height: h, viewBox: "0 0 " + w + " " + h });
      svg.append(el("rect", { class: "track", x: 0, y: 4, width: w, height: 6 }));
      if (finite(e.bound)) svg.append(el("rect", { class: e.certified ? "fill ok" : "fill over", x: 0, y: 4, width: x(e.bound), height: 6 }));
      if (finite(e.risk)) svg.append(el("circle", { class: "risk", cx: x(e.risk), cy: 7, r: 3 }));
      svg.append(el("line", { class: "epsilon", x1: x(online.epsilon), x2: x(online.epsilon), y1: 0, y2: h }));
      svg.append(el("title", {}, "risk " + percent(e.risk) + ", bound " + percent(e.bound) + ", ε " + percent(online.epsilon)));
      bar.replaceChildren(svg);
    });
  }

  function changeText(change) {
    const evidence = change.evidence || {};
    const bound = finite(evidence.bound) ? "; bound " + percent(evidence.bound) + " over " + evidence.n + " audits" : "";
    return [clock(change.at_ms) + " UTC", change.kind, change.from + " → " + change.to, "(" + change.why + bound + ")"];
  }

  function changes(section, online) {
    const list = section.querySelector('[data-field="changes"]');
    if (!list) return;
    const items = (online.changes || []).slice().reverse();
    list.setAttribute("data-count", String(items.length));
    if (!items.length) {
      list.replaceChildren(html("li", { class: "none" }, "none yet"));
      return;
    }
    list.replaceChildren(
      ...items.slice(0, 20).map((change) => {
        const [at, kind, moved, why] = changeText(change);
        const li = html("li", { "data-kind": kind });
        li.append(html("time", {}, at), " ", html("b", {}, kind), " " + moved + " ", html("span", { class: "why" }, why));
        return li;
      })
    );
  }

  // Upper end of the risk axis: the largest bound, ε with room, at most 1.
  function scaleTop(online) {
    let top = Math.max(online.epsilon * 1.5, 0.05);
    for (const e of online.estimates) if (finite(e.bound)) top = Math.max(top, e.bound);
    return Math.min(1, niceCeil(top));
  }

  function niceCeil(x) {
    for (const step of [0.05, 0.1, 0.2, 0.25, 0.5, 1]) if (x <= step) return step;
    return Math.ceil(x);
  }

  function ticks(lo, hi, count) {
    const raw = (hi - lo) / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw || 1)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.round(v / step) * step);
    return out;
  }

  // Axes, grid and labels; returns the two scales.
  function frame(svg, x, y, xLabel, yLabel, xFormat) {
    const [x0, x1] = x, [y0, y1] = y;
    const sx = (v) => MARGIN.left + ((v - x0) / (x1 - x0 || 1)) * (WIDTH - MARGIN.left - MARGIN.right);
    const sy = (v) => HEIGHT - MARGIN.bottom - ((v - y0) / (y1 - y0 || 1)) * (HEIGHT - MARGIN.top - MARGIN.bottom);
    const axes = el("g", { class: "axes" });
    for (const t of ticks(y0, y1, 5)) {
      axes.append(el("line", { class: "grid", x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: sy(t), y2: sy(t) }));
      axes.append(el("text", { x: MARGIN.left - 6, y: sy(t) + 4, "text-anchor": "end" }, Math.round(100 * t) + "%"));
    }
    for (const t of ticks(x0, x1, 5)) {
      axes.append(el("line", { class: "tick", x1: sx(t), x2: sx(t), y1: HEIGHT - MARGIN.bottom, y2: HEIGHT - MARGIN.bottom + 4 }));
      axes.append(el("text", { x: sx(t), y: HEIGHT - MARGIN.bottom + 16, "text-anchor": "middle" }, xFormat(t)));
    }
    axes.append(el("line", { class: "axis", x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: HEIGHT - MARGIN.bottom, y2: HEIGHT - MARGIN.bottom }));
    axes.append(el("line", { class: "axis", x1: MARGIN.left, x2: MARGIN.left, y1: MARGIN.top, y2: HEIGHT - MARGIN.bottom }));
    axes.append(el("text", { class: "label", x: (MARGIN.left + WIDTH - MARGIN.right) / 2, y: HEIGHT - 6, "text-anchor": "middle" }, xLabel));
    axes.append(el("text", { class: "label", x: 12, y: (MARGIN.top + HEIGHT - MARGIN.bottom) / 2, "text-anchor": "middle", transform: "rotate(-90 12 " + (MARGIN.top + HEIGHT - MARGIN.bottom) / 2 + ")" }, yLabel));
    svg.append(axes);
    return [sx, sy];
  }

  // Settings that no other beats on both counts (no more risk, no fewer tokens saved).
  function frontier(points) {
    const kept = points.filter((p) => !points.some((q) => q !== p && q.risk <= p.risk && q.saved >= p.saved && (q.risk < p.risk || q.saved > p.saved)));
    return kept.sort((a, b) => a.risk - b.risk || a.saved - b.saved);
  }

  function drawPareto(svg, online) {
    svg.replaceChildren();
    const points = online.estimates.map((e, i) => ({ i, label: e.label, risk: finite(e.risk) ? e.risk : 0, bound: e.bound, saved: finite(e.token_reduction) ? e.token_reduction : 0, certified: e.certified }));
    const top = scaleTop(online);
    let lo = 0, hi = 0.1;
    for (const p of points) { lo = Math.min(lo, p.saved); hi = Math.max(hi, p.saved); }
    hi = Math.min(1, niceCeil(hi * 1.15));
    lo = lo < 0 ? -niceCeil(-lo * 1.15) : 0;
    const [sx, sy] = frame(svg, [0, top], [lo, hi], "risk over the window (" + online.risk + "); whisker to the bound at 1 − δ", "tokens saved", (t) => Math.round(100 * t) + "%");
    const eps = sx(online.epsilon);
    svg.append(el("line", { class: "epsilon", x1: eps, x2: eps, y1: MARGIN.top, y2: HEIGHT - MARGIN.bottom }));
    svg.append(el("text", { class: "epsilon-label", x: eps + 4, y: MARGIN.top - 6 }, "ε = " + percent(online.epsilon)));
    const best = frontier(points);
    if (best.length > 1) {
      let d = "M" + sx(best[0].risk) + " " + sy(best[0].saved);
      for (const p of best.slice(1)) d += " H" + sx(p.risk) + " V" + sy(p.saved);
      svg.append(el("path", { class: "frontier", d }));
    }
    const placed = [];
    for (const p of points) {
      const x = sx(p.risk), y = sy(p.saved);
      const g = el("g", { class: "setting" + (p.certified ? " certified" : "") + (p.i === online.active ? " active" : ""), "data-setting": p.i });
      if (finite(p.bound)) g.append(el("line", { class: "whisker", x1: x, x2: sx(Math.min(top, p.bound)), y1: y, y2: y }));
      if (finite(p.bound)) g.append(el("line", { class: "whisker-end", x1: sx(Math.min(top, p.bound)), x2: sx(Math.min(top, p.bound)), y1: y - 5, y2: y + 5 }));
      if (p.i === online.active) g.append(el("circle", { class: "active-ring", cx: x, cy: y, r: 10 }));
      g.append(el("circle", { class: "point" + (best.includes(p) ? " frontier-point" : ""), cx: x, cy: y, r: 5 }));
      // Labels of settings at the same place go one under the other.
      let ly = y - 12;
      while (placed.some((q) => Math.abs(q.x - x) < 90 && Math.abs(q.y - ly) < 13)) ly += 14;
      placed.push({ x, y: ly });
      const anchor = x > WIDTH - 140 ? "end" : "start";
      g.append(el("text", { class: "point-label", x: anchor === "end" ? x - 8 : x + 8, y: ly, "text-anchor": anchor }, p.label + (p.i === online.active ? " (active)" : "")));
      g.append(el("title", {}, p.label + ": risk " + percent(p.risk) + ", bound " + percent(p.bound) + ", tokens saved " + percent(p.saved)));
      svg.append(g);
    }
    svg.setAttribute("data-points", String(points.length));
  }

  function drawHistory(svg, online, history) {
    svg.replaceChildren();
    if (!history.length) {
      svg.append(el("text", { x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle", class: "empty" }, "no estimate published yet"));
      svg.setAttribute("data-points", "0");
      return;
    }
    let t0 = history[0].at_ms, t1 = history[history.length - 1].at_ms;
    if (t1 - t0 < 10000) { t0 -= 5000; t1 += 5000; }
    let lo = 0, hi = Math.max(online.epsilon * 1.5, 0.1);
    for (const p of history) {
      for (const v of [p.risk, p.bound, p.token_reduction]) if (finite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    }
    hi = Math.min(1, niceCeil(hi));
    lo = lo < 0 ? -niceCeil(-lo) : 0;
    const [sx, sy] = frame(svg, [t0, t1], [lo, hi], "time (UTC)", "fraction", clock);
    const eps = sy(online.epsilon);
    svg.append(el("line", { class: "epsilon", x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: eps, y2: eps }));
    // Setting changes: a vertical mark, labelled with the new active setting.
    for (let k = 1; k < history.length; k++) {
      if (history[k].active === history[k - 1].active) continue;
      const x = sx(history[k].at_ms);
      const label = (online.estimates[history[k].active] || {}).label || "#" + history[k].active;
      svg.append(el("line", { class: "switch", x1: x, x2: x, y1: MARGIN.top, y2: HEIGHT - MARGIN.bottom }));
      const end = x > WIDTH - 110;
      svg.append(el("text", { class: "switch-label", x: end ? x - 3 : x + 3, y: MARGIN.top + 22, "text-anchor": end ? "end" : "start" }, "→ " + label));
    }
    const series = [
      ["bound", "bound", "bound"],
      ["risk", "risk", "risk"],
      ["token_reduction", "saved", "tokens saved"],
    ];
    for (const [key, cls] of series) {
      let d = "";
      for (const p of history) {
        if (!finite(p[key])) continue;
        // Steps: a figure holds until the next one is published.
        d += d ? " H" + sx(p.at_ms) + " V" + sy(p[key]) : "M" + sx(p.at_ms) + " " + sy(p[key]);
      }
      if (d) svg.append(el("path", { class: "line " + cls, d: d + " H" + sx(history[history.length - 1].at_ms) }));
    }
    const dots = el("g", { class: "dots" });
    for (const p of history) if (finite(p.risk)) dots.append(el("circle", { class: "point risk", cx: sx(p.at_ms), cy: sy(p.risk), r: 2.5 }));
    svg.append(dots);
    const legend = el("g", { class: "legend" });
    let lx = MARGIN.left + 8;
    for (const [, cls, name] of series.concat([["", "epsilon", "ε"]])) {
      legend.append(el("line", { class: cls === "epsilon" ? "epsilon" : "line " + cls, x1: lx, x2: lx + 18, y1: 12, y2: 12 }));
      legend.append(el("text", { x: lx + 22, y: 16 }, name));
      lx += 30 + 7 * name.length;
    }
    svg.append(legend);
    svg.setAttribute("data-points", String(history.length));
  }

  function status(text, failed) {
    for (const node of document.querySelectorAll('[data-field="status"]')) {
      node.textContent = text;
      node.classList.toggle("failed", !!failed);
    }
  }

  const every = Number(document.body.getAttribute("data-refresh-ms")) || 5000;

  async function refresh() {
    try {
      const response = await fetch("/dashboard/data", { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
      status("live, every " + every / 1000 + " s", false);
    } catch (error) {
      status("refresh failed: " + error.message + " (retrying)", true);
    } finally {
      setTimeout(refresh, every);
    }
  }

  refresh();
})();
