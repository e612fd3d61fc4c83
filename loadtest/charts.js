// Live charts under the Servers tab's table: one small SVG time series per metric, one line per server,
// faults and restarts as markers on the time axis, the last 5 minutes. Data: ./servers/series.json, kept
// by the tab's own poller (loadtest/charts.py). Plain DOM + SVG, no library, nothing fetched from elsewhere.
(function () {
  "use strict";
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = { threadpool: "#1f77b4", prefork: "#2ca02c", eventloop: "#d62728",
                   "hybrid-threads": "#9467bd", "hybrid-loop": "#ff7f0e" };
  const EXTRA = ["#8c564b", "#e377c2", "#17becf", "#bcbd22"];
  const MARK = { fault: "#e53935", restart: "#fb8c00", down: "#757575" };
  const W = 440, H = 170, PAD = { l: 46, r: 8, t: 22, b: 20 };
  const REFRESH_MS = 2000;
  const GAP_S = 4;  // points further apart than this are not joined (the tab polls once a second)
  let panel = null, timer = null, data = null;

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
    for (const mk of doc.markers) {  // markers first, lines on top
      if (mk.t < x0) continue;
      const x = px(mk.t), c = MARK[mk.kind] || "#000";
      const g = el("g", { "data-kind": mk.kind, "data-server": mk.server }, svg);
      el("line", { x1: x, x2: x, y1: PAD.t, y2: H - PAD.b, stroke: c, "stroke-width": 1,
                   "stroke-dasharray": mk.kind === "fault" ? "3,2" : "1,0", "stroke-opacity": 0.8 }, g);
      el("path", { d: `M${x - 4},${PAD.t - 1} L${x + 4},${PAD.t - 1} L${x},${PAD.t + 5} Z`,
                   fill: color(mk.server, doc.servers.indexOf(mk.server)), stroke: c }, g);
      el("title", {}, g).textContent = `${mk.kind} · ${mk.server} · ${new Date(mk.t * 1000).toLocaleTimeString()}`;
    }
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

  function legend(doc) {
    const div = document.createElement("div");
    div.style.cssText = "display:flex;gap:16px;flex-wrap:wrap;margin:4px 0 8px;font:12px sans-serif";
    doc.servers.forEach((name, i) => {
      const s = document.createElement("span");
      s.innerHTML = `<span style="display:inline-block;width:14px;height:3px;vertical-align:middle;` +
        `background:${color(name, i)};margin-right:5px"></span>${name}`;
      div.appendChild(s);
    });
    for (const k of ["fault", "restart", "down"]) {
      const s = document.createElement("span");
      s.innerHTML = `<span style="display:inline-block;width:0;height:12px;vertical-align:middle;` +
        `border-left:2px ${k === "fault" ? "dashed" : "solid"} ${MARK[k]};margin-right:5px"></span>${k}`;
      div.appendChild(s);
    }
    return div;
  }

  function render() {
    if (!panel || !data) return;
    const grid = document.createElement("div");
    grid.style.cssText = "display:grid;grid-template-columns:repeat(auto-fill,minmax(" + W + "px,1fr));gap:10px";
    data.metrics.forEach(metric => grid.appendChild(chart(metric, data.columns.indexOf(metric.key), data)));
    panel.replaceChildren(legend(data), grid);
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
