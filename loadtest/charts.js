// Live charts under the Servers tab's table: one small SVG time series per metric, one line per server, the
// last 5 minutes. Events (faults, restarts, a server going down or hung) are marks in a lane under each chart's
// plot — one row per kind — never lines across the data: marks within BUCKET_PX merge into one with a count,
// and its tooltip lists them. Under the table, where each figure comes from. Data: ./servers/series.json, kept
// by the tab's own poller (loadtest/charts.py). Plain DOM + SVG, no library, nothing fetched from elsewhere.
(function () {
  "use strict";
  const SVG = "http://www.w3.org/2000/svg";
  const EXTRA = ["#8c564b", "#e377c2", "#17becf", "#bcbd22"];  // a server the table gives no color
  const MARK = { fault: "#e53935", restart: "#fb8c00", down: "#616161", hung: "#9e9e9e" };
  const LANES = [["fault"], ["restart"], ["down", "hung"]];  // one row of marks per kind, under the plot
  const LANE_H = 9, BUCKET_PX = 26;  // marks within one bucket of the axis are one mark with a count
  const W = 440, H = 196, PAD = { l: 46, r: 8, t: 22, b: 20 + LANES.length * LANE_H + 4 };
  const REFRESH_MS = 2000;
  const GAP_S = 4;  // points further apart than this are not joined (the tab polls once a second)
  let panel = null, timer = null, data = null;

  let COLORS = {};  // from series.json: the lab's table (src/webmodels/lab.py) gives each server its color
  function color(name, i) { return COLORS[name] || EXTRA[i % EXTRA.length]; }
  function el(tag, attrs, parent) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function fmt(v) {
    if (v >= 1000) return (v / 1000).toFixed(v >= 10000 ? 0 : 1) + "k";
    if (v >= 10 || v === 0) return String(Math.round(v));
    return v.toFixed(v >= 1 ? 1 : 2);
  }

  // The time axis: the last 5 minutes at most, but no more than there is data for (at least one minute),
  // so a short run fills the chart instead of being a sliver at its right edge.
  function span(doc) {
    let first = doc.now;
    for (const name of doc.servers) { const p = doc.points[name]; if (p && p.length && p[0][0] < first) first = p[0][0]; }
    return Math.min(doc.window, Math.max(60, Math.ceil((doc.now - first) / 30) * 30));
  }
  function ago(s) {
    if (!s) return "now";
    if (s < 60) return `-${s}s`;
    return s % 60 ? `-${Math.floor(s / 60)}m${s % 60}s` : `-${s / 60}m`;
  }

  function findTable() {
    for (const table of document.querySelectorAll("table")) {
      if ((table.querySelector("thead") || table).textContent.indexOf("PIDs (master") >= 0) return table;
    }
    return null;
  }

  function chart(metric, col, doc) {
    const svg = el("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, "data-metric": metric.key,
                            style: "font: 11px sans-serif; overflow: visible" });
    el("text", { x: PAD.l, y: 13, fill: "currentColor", "font-weight": "bold" }, svg).textContent =
      metric.title + (metric.unit && metric.unit !== "/s" ? ` (${metric.unit})` : "");
    const x1 = doc.now, x0 = x1 - span(doc);
    let ymax = 0;
    for (const name of doc.servers) for (const p of doc.points[name] || []) {
      const v = p[col];
      if (v !== null && v !== undefined && v > ymax) ymax = v;
    }
    ymax = ymax > 0 ? ymax * 1.1 : 1;
    const px = t => PAD.l + (t - x0) / (x1 - x0) * (W - PAD.l - PAD.r);
    const py = v => H - PAD.b - v / ymax * (H - PAD.t - PAD.b);
    for (let i = 0; i <= 3; i++) {  // grid and y labels
      const v = ymax * i / 3, y = py(v);
      el("line", { x1: PAD.l, x2: W - PAD.r, y1: y, y2: y, stroke: "currentColor", "stroke-opacity": 0.15 }, svg);
      el("text", { x: PAD.l - 4, y: y + 4, "text-anchor": "end", fill: "currentColor", "fill-opacity": 0.7 }, svg)
        .textContent = fmt(v);
    }
    const step = x1 - x0 <= 60 ? 10 : x1 - x0 <= 150 ? 30 : 60;
    for (let s = 0; s <= x1 - x0 + 0.001; s += step) {  // time axis: seconds or minutes ago
      el("text", { x: px(x1 - s), y: H - 5, "text-anchor": "middle", fill: "currentColor", "fill-opacity": 0.7 }, svg)
        .textContent = ago(s);
    }
    marks(svg, doc, x0, px);
    doc.servers.forEach((name, i) => {
      const pts = doc.points[name] || [];
      let d = "", pen = false, last = -Infinity;
      for (const p of pts) {
        const v = p[col];
        if (p[0] - last > GAP_S) pen = false;  // the poller was not running (between two runs): no line
        last = p[0];
        if (v === null || v === undefined) { pen = false; continue; }  // a gap: down, or no data yet
        d += (pen ? "L" : "M") + px(p[0]).toFixed(1) + "," + py(v).toFixed(1);
        pen = true;
      }
      const path = el("path", { d: d || "M0,0", fill: "none", stroke: color(name, i), "stroke-width": 1.8,
                                "stroke-linejoin": "round", "data-server": name }, svg);
      el("title", {}, path).textContent = name;
    });
    return svg;
  }

  // The event lane: under the plot, above the time labels, one row per kind. Marks of a row within one bucket
  // (BUCKET_PX of the axis) are one mark with a count; the tooltip says what each was, for whom, who started
  // it and when.
  function marks(svg, doc, x0, px) {
    const top = H - PAD.b + 3;
    el("line", { x1: PAD.l, x2: W - PAD.r, y1: H - PAD.b, y2: H - PAD.b, stroke: "currentColor",
                 "stroke-opacity": 0.35 }, svg);
    LANES.forEach((kinds, row) => {
      const y = top + row * LANE_H + LANE_H / 2;
      // buckets of BUCKET_PX, aligned on absolute time so a mark keeps its bucket as the axis scrolls
      const per = BUCKET_PX / (px(x0 + 1) - px(x0)), groups = new Map();
      for (const mk of doc.markers) {
        if (mk.t < x0 || kinds.indexOf(mk.kind) < 0) continue;
        const b = Math.floor(mk.t / per);
        if (!groups.has(b)) groups.set(b, { b, items: [] });
        groups.get(b).items.push(mk);
      }
      for (const g of groups.values()) {
        const mk = g.items[0], n = g.items.length;
        const x = Math.max(PAD.l + 4, px(g.b * per) + 4);
        const servers = [...new Set(g.items.map(m => m.server))];
        const fill = servers.length === 1 ? color(mk.server, doc.servers.indexOf(mk.server)) : "#bdbdbd";
        const a = el("g", { "data-kind": mk.kind, "data-server": servers.join(" "), "data-count": n }, svg);
        const c = MARK[mk.kind] || "#000", r = 3.6;
        if (mk.kind === "fault") {  // a triangle pointing at the axis
          el("path", { d: `M${x - r},${y - r} L${x + r},${y - r} L${x},${y + r} Z`, fill, stroke: c, "stroke-width": 1.3 }, a);
        } else if (mk.kind === "restart") {
          el("circle", { cx: x, cy: y, r: r - 0.4, fill, stroke: c, "stroke-width": 1.3 }, a);
        } else {
          el("rect", { x: x - r + 0.5, y: y - r + 0.5, width: 2 * r - 1, height: 2 * r - 1, fill, stroke: c,
                       "stroke-width": 1.3, "stroke-dasharray": mk.kind === "hung" ? "2,1" : "" }, a);
        }
        if (n > 1) {
          el("text", { x: x + r + 1.5, y: y + 3.5, fill: c, "font-size": 8, "font-weight": "bold" }, a).textContent = "×" + n;
        }
        const lines = g.items.slice(0, 12).map(m => `${m.fault || m.kind} · ${m.server}` + (m.by ? ` · by ${m.by}` : "") +
          ` · ${new Date(m.t * 1000).toLocaleTimeString()}`);
        if (n > 12) lines.push(`… and ${n - 12} more`);
        el("title", {}, a).textContent = lines.join("\n");
      }
    });
  }

  function sourcesNote(doc) {
    const div = document.createElement("div");
    div.setAttribute("data-role", "sources");
    div.style.cssText = "font:12px sans-serif;opacity:.8;margin:2px 0 10px;line-height:1.45";
    const names = { faults: "Faults injected", downtime: "Downtime, of which dead / back-off", state: "State" };
    for (const k of Object.keys(doc.sources || {})) {
      const p = document.createElement("div");
      p.textContent = `${names[k] || k}: ${doc.sources[k]}.`;
      div.appendChild(p);
    }
    return div;
  }

  function legend(doc) {
    const div = document.createElement("div");
    div.style.cssText = "display:flex;gap:16px;flex-wrap:wrap;margin:4px 0 8px;font:12px sans-serif";
    doc.servers.forEach((name, i) => {
      const s = document.createElement("span");
      s.innerHTML = `<span style="display:inline-block;width:14px;height:3px;vertical-align:middle;` +
        `background:${color(name, i)};margin-right:5px"></span>${name}`;
      div.appendChild(s);
    });
    const glyph = { fault: "▼", restart: "●", down: "■", hung: "□" };
    for (const k of ["fault", "restart", "down", "hung"]) {
      const s = document.createElement("span");
      s.innerHTML = `<span style="color:${MARK[k]};margin-right:4px">${glyph[k]}</span>${k}`;
      div.appendChild(s);
    }
    const s = document.createElement("span");
    s.style.opacity = ".7";
    s.textContent = "(marks under each chart; ×N = N close together; hover for who and when)";
    div.appendChild(s);
    return div;
  }

  function render() {
    if (!panel || !data) return;
    COLORS = data.colors || {};
    const grid = document.createElement("div");
    grid.style.cssText = "display:grid;grid-template-columns:repeat(auto-fill,minmax(" + W + "px,1fr));gap:10px";
    data.metrics.forEach(metric => grid.appendChild(chart(metric, data.columns.indexOf(metric.key), data)));
    panel.replaceChildren(sourcesNote(data), legend(data), grid);
    panel.setAttribute("data-updated", String(data.now));
  }

  async function refresh() {
    try {
      const r = await fetch("./servers/series.json", { cache: "no-store" });
      if (r.ok) { data = await r.json(); render(); }
    } catch (e) { /* Locust is restarting: try again next time */ }
  }

  function attach() {
    const table = findTable();
    if (!table) {  // another tab is open: drop the panel and stop fetching
      if (panel) { panel.remove(); panel = null; }
      if (timer) { clearInterval(timer); timer = null; }
      return;
    }
    const host = table.closest(".MuiTableContainer-root, .MuiPaper-root") || table;
    if (panel && panel.isConnected && panel.previousElementSibling === host) return;
    if (panel) panel.remove();
    panel = document.createElement("div");
    panel.id = "webmodels-charts";
    panel.style.cssText = "padding:12px 4px;color:inherit";
    host.insertAdjacentElement("afterend", panel);
    render();
    if (!timer) { refresh(); timer = setInterval(refresh, REFRESH_MS); }
  }

  new MutationObserver(attach).observe(document.documentElement, { childList: true, subtree: true });
  document.addEventListener("DOMContentLoaded", attach);
})();
