// The Exercises tab: each README exercise as a guided experiment — question, Set up, Act, Observe, Why.
// Data: ./exercises.json (the table: webmodels.exercises), ./exercises/observe.json (the figures, live, with
// what the lesson predicts and a verdict). Set up posts the exercise's form to Locust's own ./swarm (after
// ./stop); each Act button posts ./exercises/act, which runs the lab's actions layer. Plain DOM, no library,
// nothing fetched from elsewhere. Drawn in the Exercises tab (?tab=exercises), and under Locust's start form
// when the URL asks for it before any run (Locust shows its tabs only once a run has started).
(function () {
  "use strict";
  const ID = "webmodels-exercises";
  const REFRESH_MS = 1500;
  const MARK = { ok: ["✓", "#2e7d32", "as predicted"], differs: ["✗", "#c62828", "differs from the prediction"],
                 waiting: ["…", "#757575", "not yet"], info: ["•", "#1565c0", "to read"],
                 unsure: ["?", "#ef6c00", "cannot tell here"] };
  let table = null, panel = null, timer = null, observed = null, busy = false;
  const notes = {};  // key → {ok, message}: the last outcome of each button

  function wanted() { return new URLSearchParams(location.search).get("tab") === "exercises"; }
  function current() {
    if (!table) return null;
    const id = new URLSearchParams(location.search).get("exercise") || table.active || table.exercises[0].id;
    return table.exercises.find(e => e.id === id) || table.exercises[0];
  }
  function choose(id) {
    const q = new URLSearchParams(location.search);
    q.set("tab", "exercises");
    q.set("exercise", id);
    history.replaceState(null, "", "?" + q.toString());
    observed = null;
    render();
    refresh();
  }
  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) {
      if (k === "style") e.style.cssText = attrs[k];
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), attrs[k]);
      else e.setAttribute(k, attrs[k]);
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) e.append(kid);
    return e;
  }
  // The table's texts are written for the README too: `code` spans become <code> here, nothing else is markup.
  function inline(text) {
    const out = document.createDocumentFragment();
    String(text || "").split(/(`[^`]*`)/).forEach((part, i) => {
      out.append(i % 2 ? h("code", { style: "font-size:90%" }, part.slice(1, -1)) : part);
    });
    return out;
  }
  async function post(url, data) {
    const r = await fetch(url, { method: "POST", body: new URLSearchParams(data || {}) });
    try { return await r.json(); } catch (e) { return { ok: false, message: `HTTP ${r.status}` }; }
  }

  // -- the buttons -------------------------------------------------------------------------------------------
  async function setup(ex, i) {
    const s = ex.setups[i], key = "setup-" + i;
    busy = true; notes[key] = { ok: null, message: "starting…" }; render();
    try {
      await post("./exercises/select", { id: ex.id, setup: String(i) });
      await fetch("./stop", { method: "POST" });
      if (s.load) {
        const r = await fetch("./swarm", { method: "POST", body: new URLSearchParams(s.form) });
        const j = await r.json();
        notes[key] = { ok: !!j.success, message: j.success ? `running: ${s.text}` : (j.message || "not started") };
      } else {
        notes[key] = { ok: true, message: "no Locust load for this one: the run is stopped; the actions bring their own" };
      }
    } catch (e) { notes[key] = { ok: false, message: String(e) }; }
    busy = false; render(); refresh();
  }
  async function act(ex, a) {
    busy = true; notes[a.key] = { ok: null, message: "running…" }; render();
    try {
      const j = await post("./exercises/act", { id: ex.id, key: a.key });
      notes[a.key] = { ok: j.ok, message: j.message };
    } catch (e) { notes[a.key] = { ok: false, message: String(e) }; }
    busy = false; render(); refresh();
  }
  async function reset() {
    busy = true; notes.reset = { ok: null, message: "resetting: stopping the load, replacing hung or leaking processes…" }; render();
    try {
      await fetch("./stop", { method: "POST" });
      const j = await post("./exercises/reset", {});
      notes.reset = { ok: j.ok, message: j.message };
      for (const k in notes) if (k !== "reset") delete notes[k];
    } catch (e) { notes.reset = { ok: false, message: String(e) }; }
    busy = false; render(); refresh();
  }

  // -- drawing -----------------------------------------------------------------------------------------------
  function note(key) {
    const n = notes[key];
    if (!n) return null;
    const [mark, color] = n.ok === null ? ["…", "#757575"] : n.ok ? ["✓", "#2e7d32"] : ["✗", "#c62828"];
    return h("div", { class: "wm-note", "data-note": key, "data-ok": String(n.ok), style: "margin:2px 0 6px 0;font-size:13px" },
             h("b", { style: `color:${color}` }, mark + " "), inline(n.message));
  }
  function button(text, onclick, attrs) {
    return h("button", { ...attrs, onclick, ...(busy ? { disabled: "" } : {}),
                         style: "margin:2px 8px 2px 0;padding:4px 10px;cursor:pointer;border-radius:4px;" +
                                "border:1px solid currentColor;background:transparent;color:inherit;font:inherit" },
             text);
  }
  function section(title, ...kids) {
    return h("section", { style: "margin:10px 0 4px" }, h("h4", { style: "margin:6px 0" }, title), ...kids);
  }
  function observeTable(ex) {
    const rows = [];
    const figs = observed && observed.id === ex.id ? observed.figures : ex.figures.map(f => ({ ...f, verdict: "waiting", text: "–" }));
    for (const f of figs) {
      const [mark, color, title] = MARK[f.verdict] || MARK.waiting;
      rows.push(h("tr", { "data-figure": f.key, "data-verdict": f.verdict },
        h("td", { style: `color:${color};font-weight:bold;font-size:18px;text-align:center`, title }, mark),
        h("td", {}, f.label),
        h("td", { style: "font-weight:bold" }, f.text || "–"),
        h("td", {}, f.predicted || f.predicts),
        h("td", { style: "opacity:.7;font-size:12px" }, f.source)));
      if (f.reason) {
        rows.push(h("tr", { class: "wm-reason", "data-figure": f.key },
          h("td", {}), h("td", { colspan: 4, style: `font-size:12px;color:${f.verdict === "differs" ? color : "inherit"};` +
                                                      "opacity:.85;padding-top:0" },
                         (f.verdict === "differs" ? "likely reason: " : ""), inline(f.reason))));
      }
    }
    const th = t => h("th", { style: "text-align:left;padding:4px 8px;border-bottom:1px solid rgba(128,128,128,.5)" }, t);
    const t = h("table", { style: "border-collapse:collapse;width:100%;font-size:14px" },
                h("thead", {}, h("tr", {}, th(""), th("Figure"), th("Now"), th("The lesson predicts"), th("From"))),
                h("tbody", {}, ...rows));
    for (const td of t.querySelectorAll("tbody td")) td.style.padding = td.style.padding || "4px 8px";
    return t;
  }
  function render() {
    if (!panel || !table) return;
    const ex = current();
    const picker = h("div", { style: "display:flex;flex-wrap:wrap;align-items:center;gap:4px;margin-bottom:6px" },
      h("b", { style: "margin-right:6px" }, "Exercise"),
      ...table.exercises.map(e => h("button", { title: e.title, onclick: () => choose(e.id), "data-exercise": e.id,
        style: "padding:3px 9px;border-radius:4px;cursor:pointer;font:inherit;color:inherit;" +
               (e.id === ex.id ? "border:2px solid currentColor;font-weight:bold;background:rgba(128,128,128,.25)" :
                                 "border:1px solid rgba(128,128,128,.6);background:transparent") }, e.id)),
      h("span", { style: "flex:1" }),
      button("Reset the lab", reset, { "data-reset": "" }),
      h("span", { style: "font-size:12px;opacity:.7" }, `lab: ${table.where}`));
    const setups = ex.setups.map((s, i) => h("div", {},
      button(ex.setups.length > 1 ? `Set up: ${s.name}` : "Set up", () => setup(ex, i), { "data-setup": String(i) }),
      h("span", {}, s.text), s.by_hand ? h("div", { style: "font-size:13px" }, "By hand: " + s.by_hand) : null,
      note("setup-" + i)));
    const acts = ex.actions.length ? ex.actions.map(a => h("div", { style: "margin:4px 0" },
      button(a.label, () => act(ex, a), { "data-action": a.key }),
      a.command.startsWith("Ctrl-C") ? h("span", { style: "font-size:12px;opacity:.85" }, a.command)
                                     : h("code", { style: "font-size:12px;opacity:.85" }, a.command),
      a.note ? h("div", { style: "font-size:12px;opacity:.7;margin-left:4px" }, inline(a.note)) : null,
      note(a.key))) : [h("div", {}, "Nothing to do but watch: switch between the setups above.")];
    const states = observed && observed.id === ex.id ? Object.entries(observed.states)
      .filter(([, s]) => s && s !== "up").map(([n, s]) => `${n}: ${s}`).join(" · ") : "";
    panel.replaceChildren(
      picker, note("reset") || "",
      h("h3", { style: "margin:8px 0 2px" }, `${ex.id}. ${ex.title}`),
      h("p", { style: "margin:2px 0;font-size:15px" }, inline(ex.question)),
      h("p", { style: "margin:2px 0;font-size:13px;opacity:.8" }, "Tests the row ", h("b", {}, ex.row),
        " of the processes-vs-threads table"),
      section("Set up", ...setups),
      section("Act", ...acts, h("div", { style: "font-size:12px;opacity:.7" },
        "Each button does what the command beside it does (the same code path); typed in a shell, the command counts the same.")),
      h("section", { id: "wm-observe", style: "margin:10px 0 4px" },
        h("h4", { style: "margin:6px 0" }, "Observe", states ? h("span", { style: "font-weight:normal;font-size:12px;margin-left:10px" }, states) : null),
        observeTable(ex)),
      section("Why", h("p", { style: "margin:2px 0" }, inline(ex.why))));
    panel.setAttribute("data-exercise", ex.id);
    panel.setAttribute("data-updated", observed ? String(observed.now) : "");
  }

  async function refresh() {
    const ex = current();
    if (!ex) return;
    try {
      const r = await fetch("./exercises/observe.json?id=" + encodeURIComponent(ex.id), { cache: "no-store" });
      if (r.ok) { observed = await r.json(); if (!busy) render(); }
    } catch (e) { /* Locust is restarting: try again next time */ }
  }
  async function load() {
    try {
      const r = await fetch("./exercises.json", { cache: "no-store" });
      if (r.ok) { table = await r.json(); render(); refresh(); }
    } catch (e) { /* later */ }
  }

  // -- where it goes -----------------------------------------------------------------------------------------
  function anchor() {
    for (const t of document.querySelectorAll("table")) {  // the Exercises tab: React's (empty) extended table
      if ((t.querySelector("thead") || t).textContent.indexOf("Tests the row") >= 0) {
        return { host: t.closest(".MuiTableContainer-root, .MuiPaper-root") || t, hide: true };
      }
    }
    const form = document.querySelector("form");  // Locust's start form, before any run: the panel goes on top
    if (form && form.parentElement) return { host: form.parentElement, hide: false, inside: true };
    return null;
  }
  function attach() {
    if (!wanted()) {
      if (panel) { panel.remove(); panel = null; }
      if (timer) { clearInterval(timer); timer = null; }
      return;
    }
    const a = anchor();
    if (!a) return;
    if (a.hide && a.host.style.display !== "none") a.host.style.display = "none";
    const placed = a.inside ? panel && a.host.firstElementChild === panel : panel && panel.previousElementSibling === a.host;
    if (panel && panel.isConnected && placed) return;
    if (panel) panel.remove();
    panel = h("div", { id: ID, style: "padding:12px 4px;color:inherit;max-width:1400px" });
    a.host.insertAdjacentElement(a.inside ? "afterbegin" : "afterend", panel);
    if (table) render(); else load();
    if (!timer) timer = setInterval(refresh, REFRESH_MS);
  }

  new MutationObserver(attach).observe(document.documentElement, { childList: true, subtree: true });
  document.addEventListener("DOMContentLoaded", attach);
})();
