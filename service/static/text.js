/* Forward Attribution dashboard: the playground of a text store (a language
   model). Type or pick a passage, optionally a completion, and see f (the
   mean log-probability per scored token, natural log), each token's log p
   given the tokens before it, the publishers whose documents pushed f up
   or down (score tau: change of f per unit upweighting of a publisher's
   documents) and the most influential training documents with snippets.
   With "per token" (the default) the text is highlighted by which publisher
   shaped each part: the answer's spans (runs of tokens with the same top
   publisher) in a colour per publisher, a legend, and a hover panel with a
   token's log p and top publishers (scores tau_t of the token's own log p).
   Everything from the API goes into the page as text (textContent).
   TextPlayground(h) is called by dashboard.js with its helpers:
   { api, el, setText, fix, label } (label: source id -> display name). */
"use strict";

function TextPlayground(h) {
  const $ = id => document.getElementById(id);
  const LP_FLOOR = -12;  // log p at or below this is coloured fully red
  const signed = v => (v >= 0 ? "+" : "") + Charts.fmt(v);
  let passages = null;
  let asked = null;  // the query of the answer shown
  let ptColour = () => Charts.OTHER;  // source id -> its colour in the highlight shown

  function tokenColor(lp) {
    const t = Math.min(1, Math.max(0, lp / LP_FLOOR));  // 0: certain (green) .. 1: very surprising (red)
    return `hsl(${Math.round(120 * (1 - t))}, 70%, 86%)`;
  }

  async function load() {
    $("pg-unavailable").hidden = true;
    $("pg-main").hidden = true;
    $("pgt-main").hidden = false;
    const r = await h.api("v1/playground/passages?n=8");
    const box = $("pgt-passages");
    box.replaceChildren();
    if (!r.ok) { $("pgt-passages-caption").textContent = "(passages unavailable: " + r.error + ")"; return null; }
    passages = r.body;
    $("pgt-caption").textContent = `at most ${passages.max_tokens} tokens (the model's context + 1)`;
    $("pgt-passages-caption").textContent = passages.kind === "heldout"
      ? "(held-out: " + passages.note + ")" : "(not held out: " + passages.note + ")";
    box.dataset.kind = passages.kind;
    for (const p of passages.passages) {
      const meta = [p.source_name, p.genre, `${p.n_tokens} tokens`].filter(Boolean).join(" · ");
      const btn = h.el("button", { type: "button", class: "passage", "data-id": p.id, title: p.document },
        h.el("span", { class: "passage-meta muted small", text: meta }),
        h.el("span", { class: "passage-text", text: p.text }));
      btn.addEventListener("click", () => { $("pgt-input").value = p.text; $("pgt-completion").value = ""; });
      box.appendChild(btn);
    }
    return passages;
  }

  function query() {
    const text = $("pgt-input").value, completion = $("pgt-completion").value;
    return completion.trim() ? { prompt: text, completion } : { text };
  }

  async function submit() {
    $("pgt-msg").textContent = "";
    $("pgt-submit").disabled = true;
    $("pgt-result").dataset.state = "running";
    asked = query();
    const req = { queries: [asked], top_k: Number($("pgt-topk").value), granularity: "both",
      order: "positive", record: $("pgt-record").checked };
    if ($("pgt-pertoken").checked) Object.assign(req, { per_token: true, token_top_k: 3 });
    const r = await h.api("v1/attributions", { method: "POST", body: JSON.stringify(req),
      headers: { "Content-Type": "application/json" } });
    $("pgt-submit").disabled = false;
    if (!r.ok) { $("pgt-msg").textContent = r.error; $("pgt-result").dataset.state = "error"; return; }
    render(r.body);
  }

  function renderTokens(a) {
    const box = $("pgt-tokens");
    box.replaceChildren();
    const first = a.n_tokens - a.n_targets;  // tokens before this one are context, not scored
    (a.tokens || []).forEach((w, i) => {
      const chip = h.el("span", { class: "tok", "data-pos": String(i) }, h.el("span", { class: "w", text: w }));
      if (i < first) {
        chip.classList.add("ctx");
        chip.title = "context (not scored)";
        chip.appendChild(h.el("span", { class: "lp", text: "·" }));
      } else {
        const lp = a.token_logprobs[i - first];
        chip.classList.add("scored");
        chip.dataset.logprob = String(lp);
        chip.title = `log p = ${lp.toFixed(3)} (p = ${(100 * Math.exp(lp)).toPrecision(2)}%)`;
        chip.style.background = tokenColor(lp);
        chip.appendChild(h.el("span", { class: "lp", text: lp.toFixed(2) }));
      }
      if (w === "<unk>") chip.classList.add("oov");
      box.appendChild(chip);
    });
  }

  // a publisher's colour as a tint readable behind text (the colour itself underlines the span)
  function tint(hex, alpha) {
    const n = parseInt(hex.slice(1), 16);
    return `rgba(${n >> 16}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
  }

  // publishers of the spans, most scored tokens first (ties: by id), each its palette colour (then "other" grey)
  function colours(spans) {
    const count = new Map();
    for (const s of spans) count.set(s.source, (count.get(s.source) || 0) + s.n_tokens);
    const order = [...count.keys()].sort((x, y) => count.get(y) - count.get(x) || (x < y ? -1 : 1));
    const colour = new Map(order.map((id, i) => [id, i < Charts.PALETTE.length ? Charts.PALETTE[i] : Charts.OTHER]));
    return { order, colour, count };
  }

  function hover(t, chip) {
    for (const on of document.querySelectorAll("#pgt-highlight .pt.on")) on.classList.remove("on");
    chip.classList.add("on");
    const box = $("pgt-hover");
    box.dataset.pos = chip.dataset.pos;
    const rows = t.sources.map(s => {
      const sw = h.el("span", { class: "swatch" });
      sw.style.background = ptColour(s.id);
      return h.el("tr", { "data-source": s.id }, h.el("td", {}, sw, h.el("span", { text: s.name })),
        h.el("td", { class: "num", text: signed(s.score) }));
    });
    box.replaceChildren(h.el("div", {}, h.el("span", { class: "piece", text: JSON.stringify(t.piece) }),
      h.el("span", { text: ` · log p = ${t.logprob.toFixed(3)} · characters ${t.start_char}–${t.end_char} · ` +
        "top publishers by τ_t:" })), h.el("table", {}, ...rows));
  }

  function renderPerToken(a, q) {
    const box = $("pgt-pt");
    box.hidden = !a.per_token;
    if (!a.per_token) return;
    const scored = q.completion !== undefined ? q.completion : q.text;
    const hl = $("pgt-highlight");
    hl.replaceChildren();
    if (q.completion !== undefined) hl.appendChild(h.el("span", { class: "ctx", text: q.prompt }));
    const start = a.per_token.length ? a.per_token[0].start_char : scored.length;
    if (start > 0) hl.appendChild(h.el("span", { class: "ctx", text: scored.slice(0, start) }));
    const { order, colour, count } = colours(a.spans);
    ptColour = id => colour.get(id) || Charts.OTHER;
    let i = 0;
    for (const s of a.spans) {
      const span = h.el("span", { class: "hl", "data-source": s.source, "data-start": String(s.start_char),
        "data-end": String(s.end_char), "data-score": String(s.score) });
      span.style.background = tint(colour.get(s.source), 0.24);
      span.style.borderBottomColor = colour.get(s.source);
      for (let k = 0; k < s.n_tokens; k++, i++) {
        const t = a.per_token[i], chip = h.el("span", { class: "pt", "data-pos": String(i), text: t.piece });
        chip.addEventListener("mouseenter", () => hover(t, chip));
        span.appendChild(chip);
      }
      hl.appendChild(span);
    }
    const names = new Map(a.spans.map(s => [s.source, s.name]));
    $("pgt-legend").replaceChildren(...order.map(id => {
      const sw = h.el("span", { class: "swatch" });
      sw.style.background = colour.get(id);
      const n = count.get(id);
      return h.el("span", { class: "item", "data-source": id, "data-color": colour.get(id) }, sw,
        h.el("span", { text: names.get(id) }), h.el("span", { class: "share", text: `${n} token${n === 1 ? "" : "s"}` }));
    }));
    $("pgt-hover").replaceChildren(document.createTextNode("Hover a token to see its top publishers."));
  }

  function renderSources(srcs) {
    const body = $("pgt-sources");
    body.replaceChildren();
    const top = Math.max(1e-30, ...srcs.map(s => Math.abs(s.score)));
    srcs.forEach((s, i) => {
      const bar = h.el("div", { class: "sharebar" });
      bar.style.width = (100 * Math.abs(s.score) / top).toFixed(1) + "%";
      bar.style.background = s.score >= 0 ? "#1a9b5b" : "#d0453d";
      const name = h.el("td", {}, h.el("span", { class: "pub-name", text: s.name }));
      if (s.name !== s.id) name.appendChild(h.el("span", { class: "muted small", text: " " + s.id }));
      body.appendChild(h.el("tr", { "data-source": s.id, "data-score": String(s.score) },
        h.el("td", { class: "muted", text: String(i + 1) }), name,
        h.el("td", { class: "num", text: signed(s.score) }), h.el("td", { class: "bar" }, bar)));
    });
  }

  function renderDocs(docs) {
    const list = $("pgt-docs");
    list.replaceChildren();
    for (const d of docs) {
      const head = h.el("div", { class: "doc-head" }, h.el("b", { text: d.id }),
        h.el("span", { class: "muted", text: " · " + [h.label(d.source), d.genre].filter(Boolean).join(" · ") }),
        h.el("span", { class: "score " + (d.score >= 0 ? "pos" : "neg"), text: signed(d.score) }));
      list.appendChild(h.el("li", { class: "doc", "data-index": String(d.index), "data-id": d.id }, head,
        h.el("div", { class: "snippet", text: d.snippet })));
    }
  }

  function render(body) {
    const a = body.attributions[0];
    $("pgt-result").hidden = false;
    $("pgt-hint").hidden = true;
    h.setText("pgt-f", a.logprob.toFixed(2), a.logprob);
    h.setText("pgt-ppl", h.fix(Math.exp(-a.logprob), 1));
    h.setText("pgt-counts", `${a.n_tokens} tokens · ${a.n_targets} scored · ${a.oov} out of vocabulary · ` +
      `store ${body.store_version}`);
    const t = body.timings;
    h.setText("pgt-timing", `${h.fix(t.total_ms, 1)} ms in the service · readout ${h.fix(t.readout_ms, 1)} ms · ` +
      `batch of ${t.batch_queries}${a.cached ? " · from cache" : ""}${body.recorded ? " · counted in credit" : " · not counted"}`);
    renderTokens(a);
    renderPerToken(a, asked);
    renderSources(a.sources || []);
    renderDocs(a.examples || []);
    $("pgt-result").dataset.state = "done";
  }

  $("pgt-submit").addEventListener("click", submit);
  $("pgt-clear").addEventListener("click", () => { $("pgt-input").value = ""; $("pgt-completion").value = ""; });
  return { load };
}
