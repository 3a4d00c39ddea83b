/* Forward Attribution dashboard: polls the API with the user's key.
   The key lives in sessionStorage (this tab only) and is sent as
   "Authorization: Bearer <key>"; it never goes into a URL. Every value from
   the API is put into the page as text (textContent), never as HTML. */
"use strict";

(() => {
  const KEY_ITEM = "fa.apiKey", OPEN_ITEM = "fa.open";
  const POLL_MS = 2000, HISTORY_MS = 5 * 60 * 1000;
  const $ = id => document.getElementById(id);
  const nf = new Intl.NumberFormat("en-US");
  const S = {
    key: sessionStorage.getItem(KEY_ITEM), open: sessionStorage.getItem(OPEN_ITEM) === "1",
    timer: null, polling: false, polls: 0, prev: null, rateHist: [], latHist: [],
    stats: null, store: null, sources: null, sourcesTag: null, denied: {}, bucketS: 3600,
    examples: null, grid: null, image: null, brush: "pen", lastReport: null, names: {}, namesVersion: null,
  };

  // ------------------------------------------------------------ helpers
  function el(tag, props = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v;
      else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
    }
    for (const c of children) if (c) e.appendChild(c);
    return e;
  }
  function setText(id, text, value) {
    const e = $(id);
    e.textContent = text;
    if (value !== undefined) e.dataset.value = value === null ? "" : String(value);
  }
  const pct = v => (v === null || v === undefined) ? "–" : (100 * v).toFixed(v >= 0.9995 || v === 0 ? 0 : 1) + "%";
  const ms = v => (v === null || v === undefined) ? "–" : (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)) + " ms";
  const num = v => (v === null || v === undefined) ? "–" : nf.format(v);
  const fix = (v, d = 1) => (v === null || v === undefined) ? "–" : Number(v).toFixed(d);
  const iso = t => new Date(t * 1000).toISOString().replace(".000Z", "Z");
  // a source's display name (the store's source_names; the id where it has none)
  const label = id => S.names[id] || id;
  function nameCell(id) {
    const td = el("td", {}, el("span", { class: "src-name", text: label(id) }));
    if (label(id) !== id) td.appendChild(el("span", { class: "muted small", text: " " + id }));
    return td;
  }
  function errorText(status, body) {
    if (body && body.error && body.error.message) return body.error.message;
    return "HTTP " + status;
  }

  async function api(path, opts = {}) {
    const headers = Object.assign({}, opts.headers || {});
    if (S.key) headers["Authorization"] = "Bearer " + S.key;
    let r;
    try {
      r = await fetch(path, { method: opts.method || "GET", headers, body: opts.body, cache: "no-store",
        credentials: "omit" });
    } catch (e) {
      return { status: 0, ok: false, body: null, headers: new Headers(), error: "service unreachable" };
    }
    let body = null;
    if (opts.raw) body = r.status === 200 ? await r.blob() : await r.json().catch(() => null);
    else if (r.status !== 304) body = await r.json().catch(() => null);
    if (r.status === 401) needKey("This service needs an API key.");
    return { status: r.status, ok: r.ok, body, headers: r.headers, error: r.ok ? null : errorText(r.status, body) };
  }

  // ------------------------------------------------------------ key handling
  function showKeyBox(msg) {
    $("keybox").hidden = false;
    $("key-msg").textContent = msg || "";
    $("key-input").value = "";
    $("key-input").focus();
  }
  function needKey(msg) {
    stopPolling();
    setText("updated", "not connected");
    showKeyBox(msg);
  }
  function keyState() {
    // a short key is not hinted at all; a long one by its last 4 characters
    $("key-state").textContent = S.key ? (S.key.length >= 20 ? "key …" + S.key.slice(-4) : "key set")
      : (S.open ? "open access" : "");
  }
  async function connect(key, open) {
    S.key = key || null; S.open = !!open;
    const r = await api("v1/store");
    if (r.status === 401 || r.status === 403) {
      S.key = null; S.open = false;
      sessionStorage.removeItem(KEY_ITEM); sessionStorage.removeItem(OPEN_ITEM);
      showKeyBox(r.status === 401 ? "A key is required." : "This key is not accepted.");
      return false;
    }
    if (S.key) sessionStorage.setItem(KEY_ITEM, S.key); else sessionStorage.removeItem(KEY_ITEM);
    if (S.open) sessionStorage.setItem(OPEN_ITEM, "1"); else sessionStorage.removeItem(OPEN_ITEM);
    $("keybox").hidden = true;
    S.denied = {}; S.sourcesTag = null; S.prev = null; S.rateHist = []; S.latHist = []; S.examples = null;
    keyState();
    if (r.ok) renderStore(r.body);
    startPolling();
    if (location.hash === "#playground") loadExamples();
    return true;
  }
  $("key-form").addEventListener("submit", ev => {
    ev.preventDefault();
    const k = $("key-input").value.trim();
    if (!k) { $("key-msg").textContent = "Enter a key, or choose “no key”."; return; }
    connect(k, false);
  });
  $("key-open").addEventListener("click", () => connect(null, true));
  $("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_ITEM); sessionStorage.removeItem(OPEN_ITEM);
    S.key = null; S.open = false; keyState(); needKey("Key forgotten.");
  });
  $("key-change").addEventListener("click", () => showKeyBox(""));

  // ------------------------------------------------------------ tabs
  function route() {
    const name = (location.hash || "#live").slice(1);
    for (const v of ["live", "report", "playground"]) {
      $("view-" + v).hidden = v !== name;
      $("tab-" + v).classList.toggle("on", v === name);
    }
    if (name === "live") renderAllCharts();
    if (name === "report") { if (!$("rep-start").value) setPeriod("24h"); if (S.lastReport) renderReport(S.lastReport); }
    if (name === "playground" && (S.key || S.open) && !S.examples) loadExamples();
  }
  window.addEventListener("hashchange", route);

  // ------------------------------------------------------------ polling
  function startPolling() {
    stopPolling();
    S.polling = true;
    poll();
  }
  function stopPolling() {
    S.polling = false;
    if (S.timer) clearTimeout(S.timer);
    S.timer = null;
  }
  async function poll() {
    if (!S.polling) return;
    try {
      if (!document.hidden) await pollOnce();
    } finally {
      if (S.polling) S.timer = setTimeout(poll, POLL_MS);
    }
  }
  async function pollOnce() {
    const wantStore = !S.store || S.polls % 5 === 0;
    const srcHeaders = S.sourcesTag ? { "If-None-Match": S.sourcesTag } : {};
    const [st, so, sto] = await Promise.all([
      S.denied.stats ? null : api("v1/stats"),
      S.denied.sources ? null : api("v1/sources", { headers: srcHeaders }),
      wantStore ? api("v1/store") : null,
    ]);
    if (!S.polling) return;
    const now = Date.now();
    if (st) {
      if (st.status === 403) { S.denied.stats = true; renderStatsDenied(); }
      else if (st.ok) renderStats(st.body, now);
    }
    if (so) {
      if (so.status === 403) { S.denied.sources = true; renderSourcesDenied(); }
      else if (so.status === 304) { /* unchanged */ }
      else if (so.ok) { S.sources = so.body; S.sourcesTag = so.headers.get("ETag"); S.bucketS = so.body.bucket_s; renderSources(); }
      else if (so.status === 503) setText("sources-caption", "(" + so.error + ")");
    }
    if (sto && sto.ok) renderStore(sto.body);
    const failed = [st, so, sto].find(r => r && r.status === 0);
    setText("updated", failed ? "service unreachable" : "updated " + new Date(now).toLocaleTimeString());
    S.polls += 1;
    document.body.dataset.polls = String(S.polls);
  }

  // ------------------------------------------------------------ live view
  // a text store (the project's GPT or a Hugging Face causal LM) takes text queries
  const TEXT_KINDS = ["gpt", "hf"];
  function isText(b) { return !!(b && b.model && TEXT_KINDS.includes(b.model.kind)); }
  function renderStore(b) {
    S.store = b;
    const rows = isText(b) ? "documents" : "examples";
    $("store-badge").textContent = `store ${b.version} · ${b.device} · ${num(b.n_examples)} ${rows} · ${b.n_sources} sources`;
    $("store-badge").dataset.version = b.version;
    if (S.namesVersion !== b.version) loadNames(b.version);
    const a = b.audit, m = a && a.metrics;
    const f = x => (x === null || x === undefined ? "–" : Number(x).toFixed(2));
    $("audit-badge").textContent = a
      ? `audit ${String(a.created_at || "").slice(0, 10)} · source LDS ${f(m.source_lds)} · LOSO r ${f(m.loso_pearson)}`
      : "not audited";
    $("audit-badge").dataset.audited = a ? "1" : "0";
  }

  async function loadNames(version) {
    S.namesVersion = version;
    const r = await api("v1/playground/names");
    if (!r.ok) { S.namesVersion = null; return; }
    S.names = Object.fromEntries(r.body.sources.map(s => [s.id, s.name]));
    renderSources();
    if (S.lastReport) renderReport(S.lastReport);
  }

  function renderStats(b, now) {
    S.stats = b;
    let rate = null;
    if (S.prev && now > S.prev.t) rate = Math.max(0, (b.queries - S.prev.queries) / ((now - S.prev.t) / 1000));
    S.prev = { t: now, queries: b.queries };
    setText("kpi-queries", num(b.queries), b.queries);
    setText("kpi-queries-sub", `${num(b.requests)} requests · ${num(b.errors)} errors`);
    setText("kpi-rate", rate === null ? "–" : fix(rate, rate >= 100 ? 0 : 1), rate === null ? null : rate);
    setText("kpi-rate-sub", `${fix(b.throughput_qps, 2)} over the last 60 s`);
    const L = b.latency_ms || {};
    setText("kpi-latency", ms(L.p50), L.p50);
    setText("kpi-latency-sub", `p90 ${ms(L.p90)} · p99 ${ms(L.p99)}`);
    const B = b.batch_queries || {};
    setText("kpi-batch", B.mean === null || B.mean === undefined ? "–" : fix(B.mean, 1), B.mean);
    setText("kpi-batch-sub", `p50 ${num(B.p50)} · max ${num(B.max)} · ${num(b.batches)} batches`);
    const C = b.cache || {};
    setText("kpi-cache", pct(C.hit_rate), C.hit_rate);
    setText("kpi-cache-sub", `${num(C.hits)} hits of ${num((C.hits || 0) + (C.misses || 0))} lookups`);
    const healthy = b.redis !== false;
    $("health").querySelector(".dot").className = "dot " + (healthy ? "ok" : "bad");
    $("health-text").textContent = healthy ? (b.journal_entries ? `Redis ok · journal ${num(b.journal_entries)}` : "Redis ok")
      : `Redis unreachable · journal ${num(b.journal_entries)}`;
    if (rate !== null) S.rateHist.push([now, rate]);
    S.latHist.push([now, L.p50, L.p90, L.p99]);
    const cut = now - HISTORY_MS;
    S.rateHist = S.rateHist.filter(p => p[0] >= cut);
    S.latHist = S.latHist.filter(p => p[0] >= cut);
    if (!$("view-live").hidden) { drawRate(); drawLatency(); }
  }

  function renderStatsDenied() {
    for (const id of ["kpi-queries", "kpi-rate", "kpi-latency", "kpi-batch", "kpi-cache"]) setText(id, "–");
    setText("kpi-queries-sub", "not readable with this key");
    Charts.message($("chart-rate"), "this key cannot read /v1/stats");
    Charts.message($("chart-latency"), "this key cannot read /v1/stats");
  }
  function renderSourcesDenied() {
    setText("kpi-credited", "–");
    setText("kpi-credited-sub", "not readable with this key");
    for (const id of ["share-empty", "trend-empty", "sources-empty"]) {
      $(id).hidden = false; $(id).textContent = "This key cannot read per-source credit (a report key can).";
    }
    $("chart-share").hidden = $("chart-trend").hidden = $("sources-table").hidden = true;
  }

  function drawRate() {
    Charts.line($("chart-rate"), [{ name: "queries/s", color: Charts.PALETTE[0], fill: "rgba(47,111,222,.10)",
      points: S.rateHist }], { xSpan: HISTORY_MS, empty: "waiting for two polls" });
  }
  function drawLatency() {
    const pts = i => S.latHist.map(p => [p[0], p[i]]);
    Charts.line($("chart-latency"), [
      { name: "p50", color: Charts.PALETTE[0], points: pts(1) },
      { name: "p90", color: Charts.PALETTE[1], points: pts(2) },
      { name: "p99", color: Charts.PALETTE[3], points: pts(3) }],
    { xSpan: HISTORY_MS, yFormat: v => Charts.fmt(v), empty: "no requests yet" });
  }

  function colorOf(rank) { return rank < Charts.PALETTE.length ? Charts.PALETTE[rank] : Charts.OTHER; }

  function renderSources() {
    const v = S.sources;
    if (!v) return;
    const upq = v.units_per_query;
    const credited = v.sources.filter(s => s.credit_units > 0);
    setText("kpi-credited", num(v.total_queries), v.total_queries);
    setText("kpi-credited-sub", `${credited.length} of ${v.sources.length} sources credited · all replicas`);
    setText("sources-caption", `(${v.sources.length} · store ${v.store_version} · ${nf.format(upq)} units per query)`);
    $("sources-empty").hidden = true;
    const body = $("sources-body");
    body.replaceChildren();
    const shown = v.sources.slice(0, 50);
    shown.forEach((s, i) => {
      const bar = el("div", { class: "sharebar" });
      bar.style.width = (100 * s.share / Math.max(1e-12, v.sources[0].share || 1)).toFixed(1) + "%";
      bar.style.background = s.credit_units > 0 ? colorOf(i) : Charts.OTHER;
      const sw = el("span", { class: "swatch" });
      sw.style.background = s.credit_units > 0 ? colorOf(i) : Charts.OTHER;
      const idCell = nameCell(s.id);
      idCell.prepend(sw);
      if (!s.in_store) idCell.appendChild(el("span", { class: "muted small", text: " (not in this store)" }));
      const tr = el("tr", { "data-source": s.id },
        el("td", { class: "muted", text: String(i + 1) }), idCell,
        el("td", { class: "num", text: pct(s.share) }), el("td", { class: "bar" }, bar),
        el("td", { class: "num", text: fix(s.credit, 2) }),
        el("td", { class: "num", text: num(s.queries) }),
        el("td", {}, Charts.sparkline(s.trend, s.credit_units > 0 ? colorOf(i) : Charts.OTHER)));
      body.appendChild(tr);
    });
    if (v.sources.length > shown.length) {
      body.appendChild(el("tr", {}, el("td", { colSpan: 7, class: "muted", text: `… and ${v.sources.length - shown.length} more` })));
    }
    if (!$("view-live").hidden) { drawShare(); drawTrend(); }
  }

  function drawShare() {
    const v = S.sources;
    if (!v) return;
    const credited = v.sources.filter(s => s.credit_units > 0);
    const top = credited.slice(0, 10);
    const items = top.map((s, i) => ({ label: label(s.id), value: s.share, color: colorOf(i),
      text: `${pct(s.share)} · ${fix(s.credit, 1)} q` }));
    const rest = credited.slice(10);
    if (rest.length) {
      const share = rest.reduce((a, s) => a + s.share, 0), credit = rest.reduce((a, s) => a + s.credit, 0);
      items.push({ label: `${rest.length} others`, value: share, color: Charts.OTHER, text: `${pct(share)} · ${fix(credit, 1)} q` });
    }
    $("chart-share").dataset.bars = String(items.length);
    $("chart-share").dataset.labels = JSON.stringify(items.map(i => i.label));
    Charts.hbar($("chart-share"), items, { empty: "no credit recorded yet: send some queries" });
  }

  function bucketLabel(t, b) {
    const d = new Date(t * 1000);
    const hm = String(d.getUTCHours()).padStart(2, "0") + ":" + String(d.getUTCMinutes()).padStart(2, "0");
    if (b >= 86400) return (d.getUTCMonth() + 1) + "-" + String(d.getUTCDate()).padStart(2, "0");
    return hm;
  }
  function drawTrend() {
    const v = S.sources;
    if (!v) return;
    const n = v.sources.length ? v.sources[0].trend.length : 0;
    const t0 = Date.parse(v.trend_start) / 1000;
    const cols = Array.from({ length: n }, (_, j) => ({ x: t0 + j * v.bucket_s, label: bucketLabel(t0 + j * v.bucket_s, v.bucket_s) }));
    const credited = v.sources.filter(s => s.credit_units > 0);
    const top = credited.slice(0, 5);
    const stacks = top.map((s, i) => ({ name: label(s.id), color: colorOf(i), values: s.trend.map(u => u / v.units_per_query) }));
    const rest = credited.slice(5);
    if (rest.length) {
      stacks.push({ name: `${rest.length} others`, color: Charts.OTHER,
        values: cols.map((_, j) => rest.reduce((a, s) => a + s.trend[j], 0) / v.units_per_query) });
    }
    setText("trend-caption", `(queries' worth per ${v.bucket_s >= 3600 ? (v.bucket_s / 3600) + " h" : (v.bucket_s / 60) + " min"} bucket, UTC, top 5 sources)`);
    $("chart-trend").dataset.labels = JSON.stringify(stacks.map(x => x.name));
    Charts.stacked($("chart-trend"), cols, stacks, { empty: "no credit in the last " + n + " buckets" });
  }

  function renderAllCharts() {
    if (S.denied.stats) renderStatsDenied(); else { drawRate(); drawLatency(); }
    if (!S.denied.sources) { drawShare(); drawTrend(); }
  }
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { route(); }, 150);
  });

  // ------------------------------------------------------------ report view
  function setPeriod(kind) {
    const b = S.bucketS || 3600, now = Date.now() / 1000;
    const endNow = Math.floor(now / b) * b + b;
    let start, end;
    if (kind === "today") { start = Math.floor(now / 86400) * 86400; end = start + 86400; }
    else if (kind === "7d") { end = endNow; start = Math.floor((end - 7 * 86400) / b) * b; }
    else if (kind === "month") {
      const d = new Date(now * 1000);
      start = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1) / 1000;
      end = Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1) / 1000;
    } else { end = endNow; start = Math.floor((end - 86400) / b) * b; }
    $("rep-start").value = iso(start);
    $("rep-end").value = iso(end);
    setText("rep-bucket", `periods start and end on ${b >= 3600 ? b / 3600 + " h" : b / 60 + " min"} boundaries (UTC)`);
  }
  for (const b of document.querySelectorAll("[data-period]")) b.addEventListener("click", () => setPeriod(b.dataset.period));

  function reportQuery(format) {
    const q = new URLSearchParams({ start: $("rep-start").value.trim(), end: $("rep-end").value.trim(),
      amount: $("rep-amount").value.trim(), currency: $("rep-currency").value.trim(), format });
    return "v1/reports/compensation?" + q.toString();
  }

  $("report-form").addEventListener("submit", async ev => {
    ev.preventDefault();
    $("rep-msg").textContent = "";
    $("rep-run").disabled = true;
    const r = await api(reportQuery("json"));
    $("rep-run").disabled = false;
    if (!r.ok) { $("rep-msg").textContent = r.error; return; }
    S.lastReport = r.body;
    renderReport(r.body);
  });

  function money(minor, rep) {
    const exp = rep.pool.includes(".") ? rep.pool.split(".")[1].length : 0;
    const s = (minor / Math.pow(10, exp)).toLocaleString("en-US", { minimumFractionDigits: exp, maximumFractionDigits: exp });
    return s + " " + rep.currency;
  }

  function renderReport(rep) {
    $("rep-result").hidden = false;
    setText("rep-pool", money(rep.pool_minor, rep), rep.pool_minor);
    setText("rep-period", `${rep.start} → ${rep.end}`);
    setText("rep-allocated", money(rep.allocated_minor, rep), rep.allocated_minor);
    const ok = rep.allocated_minor === rep.pool_minor;
    setText("rep-reconciles", rep.total_credit_units === 0 ? "no credit in this period: nothing paid"
      : ok ? "✓ payouts add up to the pool exactly" : "✗ does not reconcile");
    $("rep-reconciles").className = "kpi-sub " + (ok ? "" : "error");
    setText("rep-queries", num(rep.total_queries), rep.total_queries);
    setText("rep-units", `${num(rep.total_credit_units)} credit units`);
    const paid = rep.lines.filter(l => l.payout_minor > 0);
    setText("rep-paid", num(paid.length), paid.length);
    setText("rep-version", `store ${rep.store_version}`);
    const body = $("rep-body");
    body.replaceChildren();
    rep.lines.forEach((l, i) => body.appendChild(el("tr", { "data-source": l.source_id },
      (() => {
        const td = nameCell(l.source_id), s = el("span", { class: "swatch" });
        s.style.background = colorOf(i); td.prepend(s); return td;
      })(),
      el("td", { class: "num", text: num(l.credit_units) }), el("td", { class: "num", text: num(l.queries) }),
      el("td", { class: "num", text: (100 * Number(l.share)).toFixed(2) + "%" }),
      el("td", { class: "num", text: money(l.payout_minor, rep) }))));
    setText("rep-total-units", num(rep.total_credit_units));
    setText("rep-total-queries", num(rep.total_queries));
    setText("rep-total-payout", money(rep.allocated_minor, rep));
    const items = rep.lines.slice(0, 15).map((l, i) => ({ label: label(l.source_id), value: l.payout_minor,
      color: colorOf(i), text: money(l.payout_minor, rep) }));
    $("chart-payout").dataset.labels = JSON.stringify(items.map(i => i.label));
    Charts.hbar($("chart-payout"), items, { empty: "no credit in this period" });
  }

  $("rep-csv").addEventListener("click", async () => {
    $("rep-msg").textContent = "";
    const r = await api(reportQuery("csv"), { raw: true });
    if (!r.ok) { $("rep-msg").textContent = r.error; return; }
    const cd = r.headers.get("Content-Disposition") || "";
    const m = /filename="([^"]+)"/.exec(cd);
    const a = el("a", { href: URL.createObjectURL(r.body), download: m ? m[1] : "compensation.csv" });
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  });

  // ------------------------------------------------------------ playground
  const GRID_PX = 256;
  const textPg = TextPlayground({ api, el, setText, fix, label });
  async function loadExamples() {
    if (!S.store) return;  // connect() loads them once the store is known
    if (isText(S.store)) { S.examples = await textPg.load(); return; }
    const r = await api("v1/playground/examples?n=12");
    if (!r.ok) {
      $("pg-unavailable").hidden = false;
      $("pg-unavailable").textContent = "Playground unavailable: " + r.error;
      return;
    }
    const b = r.body;
    S.examples = b;
    if (!b.image) {
      $("pg-unavailable").hidden = false; $("pg-main").hidden = true;
      $("pg-unavailable").textContent = `The playground draws square images; this store's inputs have ${b.in_dim} values.`;
      return;
    }
    $("pg-unavailable").hidden = true; $("pg-main").hidden = false;
    S.image = b.image;
    if (!S.grid || S.grid.length !== b.in_dim) {
      S.grid = b.examples.length ? b.examples[0].input.slice() : new Array(b.in_dim).fill(0);
    }
    $("pg-caption").textContent = b.image.scale === 16
      ? `${b.image.width}×${b.image.height}, intensities 0–16 (the model sees pixels / 16)`
      : `${b.image.width}×${b.image.height}`;
    $("pg-examples-caption").textContent = b.kind === "heldout" ? "(held-out: " + b.note + ")" : "(training rows)";
    const sel = $("pg-target");
    sel.replaceChildren(el("option", { value: "", text: "predicted" }));
    b.classes.forEach((c, i) => sel.appendChild(el("option", { value: String(i), text: c })));
    const box = $("pg-examples");
    box.replaceChildren();
    for (const ex of b.examples) {
      const c = el("canvas");
      Charts.drawImage(c, ex.input, b.image);
      const btn = el("button", { type: "button", class: "thumb", title: `${ex.id}, label ${ex.label}`, "data-id": ex.id },
        c, el("span", { text: ex.label === null ? ex.id : "label " + ex.label }));
      btn.addEventListener("click", () => { S.grid = ex.input.slice(); drawGrid(); });
      box.appendChild(btn);
    }
    drawGrid();
  }

  function drawGrid() {
    const cv = $("pg-grid"), img = S.image;
    if (!img || !S.grid) return;
    const dpr = window.devicePixelRatio || 1;
    cv.width = GRID_PX * dpr; cv.height = GRID_PX * dpr;
    const ctx = cv.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const cw = GRID_PX / img.width, ch = GRID_PX / img.height;
    const scaled = img.scale === 16;
    ctx.font = "10px system-ui, sans-serif"; ctx.textAlign = "center"; ctx.textBaseline = "middle";
    for (let r = 0; r < img.height; r++) {
      for (let c = 0; c < img.width; c++) {
        const v = Math.max(0, Math.min(1, S.grid[r * img.width + c]));
        const g = Math.round(255 * (1 - v));
        ctx.fillStyle = `rgb(${g},${g},${Math.min(255, g + 8)})`;
        ctx.fillRect(c * cw, r * ch, cw, ch);
        if (scaled && v > 0) {
          ctx.fillStyle = v > 0.5 ? "#fff" : "#1d2330";
          ctx.fillText(String(Math.round(v * 16)), c * cw + cw / 2, r * ch + ch / 2);
        }
      }
    }
    ctx.strokeStyle = "#e3e7ee"; ctx.lineWidth = 1;
    for (let i = 1; i < img.width; i++) { ctx.beginPath(); ctx.moveTo(i * cw, 0); ctx.lineTo(i * cw, GRID_PX); ctx.stroke(); }
    for (let i = 1; i < img.height; i++) { ctx.beginPath(); ctx.moveTo(0, i * ch); ctx.lineTo(GRID_PX, i * ch); ctx.stroke(); }
  }

  let drawing = null;
  function paintAt(ev) {
    const img = S.image;
    if (!img) return;
    const rect = $("pg-grid").getBoundingClientRect();
    const c = Math.floor((ev.clientX - rect.left) / rect.width * img.width);
    const r = Math.floor((ev.clientY - rect.top) / rect.height * img.height);
    if (c < 0 || r < 0 || c >= img.width || r >= img.height) return;
    const cell = r * img.width + c;
    if (drawing.last === cell) return;
    drawing.last = cell;
    const erase = drawing.erase || S.brush === "eraser";
    const add = (rr, cc, amount) => {
      if (rr < 0 || cc < 0 || rr >= img.height || cc >= img.width) return;
      const i = rr * img.width + cc;
      S.grid[i] = Math.min(1, Math.round((S.grid[i] + amount) * 16) / 16);
    };
    if (erase) S.grid[cell] = 0;
    else if (S.brush === "soft") {
      add(r, c, 8 / 16);
      for (const [dr, dc] of [[-1, 0], [1, 0], [0, -1], [0, 1]]) add(r + dr, c + dc, 3 / 16);
    } else S.grid[cell] = 1;
    drawGrid();
  }
  $("pg-grid").addEventListener("pointerdown", ev => {
    ev.preventDefault();
    $("pg-grid").setPointerCapture(ev.pointerId);
    drawing = { erase: ev.button === 2, last: null };
    paintAt(ev);
  });
  $("pg-grid").addEventListener("pointermove", ev => { if (drawing) paintAt(ev); });
  $("pg-grid").addEventListener("pointerup", () => { drawing = null; });
  $("pg-grid").addEventListener("pointercancel", () => { drawing = null; });
  $("pg-grid").addEventListener("contextmenu", ev => ev.preventDefault());
  for (const b of document.querySelectorAll("[data-brush]")) {
    b.addEventListener("click", () => {
      S.brush = b.dataset.brush;
      for (const o of document.querySelectorAll("[data-brush]")) o.classList.toggle("on", o === b);
    });
  }
  $("pg-clear").addEventListener("click", () => { if (S.grid) { S.grid.fill(0); drawGrid(); } });

  $("pg-submit").addEventListener("click", async () => {
    if (!S.grid) return;
    $("pg-msg").textContent = "";
    $("pg-submit").disabled = true;
    $("pg-result").dataset.state = "running";
    const q = { input: S.grid.slice() };
    if ($("pg-target").value !== "") q.target = Number($("pg-target").value);
    const req = { queries: [q], top_k: Number($("pg-topk").value), granularity: "both",
      output: $("pg-output").value, order: "positive", record: $("pg-record").checked };
    const r = await api("v1/attributions", { method: "POST", body: JSON.stringify(req),
      headers: { "Content-Type": "application/json" } });
    $("pg-submit").disabled = false;
    if (!r.ok) { $("pg-msg").textContent = r.error; $("pg-result").dataset.state = "error"; return; }
    await renderAnswer(r.body);
  });

  async function renderAnswer(body) {
    const a = body.attributions[0];
    $("pg-result").hidden = false;
    $("pg-hint").hidden = true;
    setText("pg-pred", a.prediction.label, a.prediction.label);
    setText("pg-pred-label", a.prediction.label);
    setText("pg-pred-prob", (100 * a.prediction.probability).toFixed(1) + "%");
    setText("pg-target-line", `attributed class ${a.target.label} (probability ${(100 * a.target.probability).toFixed(1)}%), ` +
      `output ${body.output}, store ${body.store_version}`);
    const t = body.timings;
    setText("pg-timing", `${fix(t.total_ms, 1)} ms in the service · readout ${fix(t.readout_ms, 1)} ms · ` +
      `batch of ${t.batch_queries}${a.cached ? " · from cache" : ""}${body.recorded ? " · counted in credit" : " · not counted"}`);
    const srcs = a.sources || [];
    const cv = $("chart-pg-sources");
    cv.style.height = Math.max(80, 24 * srcs.length + 8) + "px";
    Charts.hbar(cv, srcs.map(s => ({ label: s.id, value: s.score, color: s.score >= 0 ? "#1a9b5b" : "#d0453d",
      text: (s.score >= 0 ? "+" : "") + Charts.fmt(s.score) })), { empty: "no sources" });
    cv.dataset.bars = String(srcs.length);
    const box = $("pg-train");
    box.replaceChildren();
    const exs = a.examples || [];
    const rows = await Promise.all(exs.map(e => api("v1/playground/training/" + e.index)));
    exs.forEach((e, i) => {
      const c = el("canvas");
      const r = rows[i];
      if (r.ok) Charts.drawImage(c, r.body.input, r.body.image || S.image);
      const label = r.ok && r.body.label !== null ? "label " + r.body.label : "";
      const sc = el("span", { class: "score " + (e.score >= 0 ? "pos" : "neg"), text: (e.score >= 0 ? "+" : "") + Charts.fmt(e.score) });
      box.appendChild(el("div", { class: "thumb", "data-index": String(e.index), title: `training example ${e.index}` },
        c, sc, el("span", { text: `#${e.index} · ${label}` }), el("span", { text: e.source })));
    });
    $("pg-result").dataset.state = "done";
  }

  // ------------------------------------------------------------ start
  route();
  keyState();
  if (S.key || S.open) connect(S.key, S.open);
  else {
    // an open service (no keys configured) answers without one
    api("v1/store").then(r => {
      if (r.ok) connect(null, true);
      else if (r.status !== 401) showKeyBox(r.error || "");
    });
  }
})();
