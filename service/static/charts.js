/* Small canvas / SVG charts for the dashboard: time lines, horizontal bars,
   stacked bars and sparklines. No dependencies. */
"use strict";

const Charts = (() => {
  const PALETTE = ["#2f6fde", "#e8833a", "#1a9b5b", "#d0453d", "#8e5cc7", "#8c6d4f", "#d463a8", "#7f8794",
    "#b5b82a", "#1fb1c4"];
  const OTHER = "#c3c9d3";
  const INK = "#1d2330", MUTED = "#667085", GRID = "#eceff4";
  const FONT = "12px system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif";

  function setup(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(50, canvas.clientWidth), h = Math.max(50, canvas.clientHeight);
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = FONT;
    ctx.textBaseline = "middle";
    return { ctx, w, h };
  }

  function niceStep(range, target) {
    if (!(range > 0)) return 1;
    const raw = range / Math.max(1, target);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const n = raw / mag;
    return (n < 1.5 ? 1 : n < 3 ? 2 : n < 7 ? 5 : 10) * mag;
  }

  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    const a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(0) + "k";
    if (a >= 100) return v.toFixed(0);
    if (a >= 10) return v.toFixed(1);
    if (a >= 1) return v.toFixed(2);
    if (a === 0) return "0";
    if (a >= 0.01) return v.toFixed(3);
    return v.toExponential(1);
  }

  /* tick labels with as many decimals as the step needs */
  function tickFmt(step) {
    const d = Math.max(0, Math.min(6, -Math.floor(Math.log10(step) + 1e-9)));
    return v => (Math.abs(v) >= 1e4 ? fmt(v) : v.toFixed(d));
  }

  /* centred text kept inside [lo, hi] */
  function clampText(ctx, text, x, y, lo, hi) {
    const half = ctx.measureText(text).width / 2;
    ctx.textAlign = "center";
    ctx.fillText(text, Math.min(hi - half, Math.max(lo + half, x)), y);
  }

  function clock(ms) {
    const d = new Date(ms);
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0") + ":" +
      String(d.getSeconds()).padStart(2, "0");
  }

  function legend(ctx, items, x, y, maxW) {
    let cx = x;
    for (const it of items) {
      const tw = ctx.measureText(it.name).width;
      if (cx + tw + 22 > x + maxW && cx > x) { cx = x; y += 16; }
      ctx.fillStyle = it.color;
      ctx.fillRect(cx, y - 5, 10, 10);
      ctx.fillStyle = INK;
      ctx.textAlign = "left";
      ctx.fillText(it.name, cx + 14, y);
      cx += tw + 28;
    }
    return y;
  }

  function message(canvas, text) {
    const { ctx, w, h } = setup(canvas);
    ctx.fillStyle = MUTED;
    ctx.textAlign = "center";
    ctx.fillText(text, w / 2, h / 2);
  }

  /* series: [{name, color, points: [[xMs, y], ...]}]; opts: {yFormat, xSpan (ms), unit} */
  function line(canvas, series, opts = {}) {
    const { ctx, w, h } = setup(canvas);
    const all = series.flatMap(s => s.points.filter(p => p[1] !== null && isFinite(p[1])));
    if (!all.length) { message(canvas, opts.empty || "waiting for data"); return; }
    const pad = { l: 52, r: 14, t: 26, b: 24 };
    const xMax = Math.max(...all.map(p => p[0]));
    // the window grows with the history, from at least minSpan up to xSpan
    const first = Math.min(...all.map(p => p[0]));
    const xMin = Math.max(opts.xSpan ? xMax - opts.xSpan : first, Math.min(first, xMax - (opts.minSpan || 60000)));
    let yMax = Math.max(...all.map(p => p[1]), opts.yMinMax || 0);
    if (yMax <= 0) yMax = 1;
    const step = niceStep(yMax, 4);
    yMax = Math.ceil(yMax / step) * step;
    const X = x => pad.l + (w - pad.l - pad.r) * (xMax === xMin ? 1 : (x - xMin) / (xMax - xMin));
    const Y = y => h - pad.b - (h - pad.t - pad.b) * (y / yMax);
    ctx.strokeStyle = GRID; ctx.lineWidth = 1; ctx.fillStyle = MUTED; ctx.textAlign = "right";
    const yTick = tickFmt(step);
    for (let v = 0; v <= yMax + step / 2; v += step) {
      ctx.beginPath(); ctx.moveTo(pad.l, Y(v)); ctx.lineTo(w - pad.r, Y(v)); ctx.stroke();
      ctx.fillText(yTick(v), pad.l - 6, Y(v));
    }
    const xStep = niceStep((xMax - xMin) / 1000, 5) * 1000;
    for (let t = Math.ceil(xMin / xStep) * xStep; t <= xMax; t += xStep) {
      clampText(ctx, clock(t), X(t), h - pad.b + 13, pad.l - 20, w);
    }
    for (const s of series) {
      const pts = s.points.filter(p => p[0] >= xMin && p[1] !== null && isFinite(p[1]));
      if (!pts.length) continue;
      ctx.strokeStyle = s.color; ctx.lineWidth = 2; ctx.lineJoin = "round";
      ctx.beginPath();
      pts.forEach((p, i) => (i ? ctx.lineTo(X(p[0]), Y(p[1])) : ctx.moveTo(X(p[0]), Y(p[1]))));
      ctx.stroke();
      if (s.fill) {
        ctx.lineTo(X(pts[pts.length - 1][0]), Y(0)); ctx.lineTo(X(pts[0][0]), Y(0)); ctx.closePath();
        ctx.fillStyle = s.fill; ctx.fill();
      }
      const last = pts[pts.length - 1];
      ctx.fillStyle = s.color; ctx.beginPath(); ctx.arc(X(last[0]), Y(last[1]), 3, 0, 7); ctx.fill();
    }
    legend(ctx, series.map(s => ({ name: s.name + (s.points.length ? " " + (opts.yFormat || fmt)(
      s.points[s.points.length - 1][1]) : ""), color: s.color })), pad.l, 10, w - pad.l);
  }

  /* items: [{label, value, color, text}] top to bottom; signed values get a zero axis */
  // s shortened with an ellipsis to at most max pixels wide
  function clip(ctx, s, max) {
    if (ctx.measureText(s).width <= max) return s;
    while (s.length > 1 && ctx.measureText(s + "…").width > max) s = s.slice(0, -1);
    return s + "…";
  }

  function hbar(canvas, items, opts = {}) {
    const { ctx, w, h } = setup(canvas);
    if (!items.length) { message(canvas, opts.empty || "no data yet"); return; }
    const labelW = Math.min(170, Math.max(...items.map(i => ctx.measureText(i.label).width)) + 12);
    const textW = Math.max(...items.map(i => ctx.measureText(i.text).width)) + 10;
    const lo = Math.min(0, ...items.map(i => i.value)), hi = Math.max(0, ...items.map(i => i.value));
    const x0 = labelW, x1 = w - textW - 4;
    const span = (hi - lo) || 1;
    const X = v => x0 + (x1 - x0) * (v - lo) / span;
    const rowH = Math.min(28, (h - 4) / items.length), barH = Math.max(4, rowH * 0.62);
    items.forEach((it, i) => {
      const cy = 2 + rowH * i + rowH / 2;
      ctx.fillStyle = INK; ctx.textAlign = "right";
      ctx.fillText(clip(ctx, it.label, labelW - 10), labelW - 8, cy);
      const a = X(Math.min(0, it.value)), b = X(Math.max(0, it.value));
      ctx.fillStyle = it.color || PALETTE[0];
      ctx.fillRect(a, cy - barH / 2, Math.max(1, b - a), barH);
      ctx.fillStyle = MUTED; ctx.textAlign = "left";
      ctx.fillText(it.text, (it.value >= 0 ? b : X(0)) + 5, cy);
    });
    if (lo < 0) {
      ctx.strokeStyle = MUTED; ctx.beginPath(); ctx.moveTo(X(0), 0); ctx.lineTo(X(0), h); ctx.stroke();
    }
  }

  /* columns: [{x: ms, label}] ; stacks: [{name, color, values: [...]}] bottom to top */
  function stacked(canvas, columns, stacks, opts = {}) {
    const { ctx, w, h } = setup(canvas);
    const totals = columns.map((_, j) => stacks.reduce((a, s) => a + (s.values[j] || 0), 0));
    if (!columns.length || !totals.some(t => t > 0)) { message(canvas, opts.empty || "no credit recorded yet"); return; }
    const legendH = 18 + 16 * Math.floor(stacks.length / 4);
    const pad = { l: 52, r: 10, t: legendH + 8, b: 24 };
    let yMax = Math.max(...totals);
    const step = niceStep(yMax, 4);
    yMax = Math.ceil(yMax / step) * step || 1;
    const Y = v => h - pad.b - (h - pad.t - pad.b) * (v / yMax);
    ctx.strokeStyle = GRID; ctx.fillStyle = MUTED; ctx.textAlign = "right";
    const yTick = tickFmt(step);
    for (let v = 0; v <= yMax + step / 2; v += step) {
      ctx.beginPath(); ctx.moveTo(pad.l, Y(v)); ctx.lineTo(w - pad.r, Y(v)); ctx.stroke();
      ctx.fillText(yTick(v), pad.l - 6, Y(v));
    }
    const cw = (w - pad.l - pad.r) / columns.length, bw = Math.max(2, cw * 0.72);
    const every = Math.ceil(columns.length / Math.max(1, Math.floor((w - pad.l) / 56)));
    columns.forEach((c, j) => {
      let acc = 0;
      const x = pad.l + cw * j + (cw - bw) / 2;
      for (const s of stacks) {
        const v = s.values[j] || 0;
        if (v > 0) {
          ctx.fillStyle = s.color;
          ctx.fillRect(x, Y(acc + v), bw, Y(acc) - Y(acc + v));
        }
        acc += v;
      }
      if ((columns.length - 1 - j) % every === 0) {
        ctx.fillStyle = MUTED;
        clampText(ctx, c.label, x + bw / 2, h - pad.b + 13, pad.l - 20, w);
      }
    });
    legend(ctx, stacks.slice().reverse(), pad.l, 10, w - pad.l - pad.r);
  }

  function sparkline(values, color = PALETTE[0], width = 120, height = 24) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", width); svg.setAttribute("height", height);
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("class", "spark");
    const max = Math.max(1, ...values);
    const bw = width / Math.max(1, values.length);
    values.forEach((v, i) => {
      const bh = v > 0 ? Math.max(1.5, (height - 2) * v / max) : 0.75;
      const r = document.createElementNS(ns, "rect");
      r.setAttribute("x", (i * bw + 0.5).toFixed(2)); r.setAttribute("width", Math.max(1, bw - 1).toFixed(2));
      r.setAttribute("y", (height - bh).toFixed(2)); r.setAttribute("height", bh.toFixed(2));
      r.setAttribute("fill", v > 0 ? color : "#d5dae2");
      svg.appendChild(r);
    });
    return svg;
  }

  /* An input vector as a grey image (ink dark on light), values scaled to 0..1 by `scale` or min-max. */
  function drawImage(canvas, input, image) {
    const hgt = image.height, wid = image.width;
    canvas.width = wid; canvas.height = hgt;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(wid, hgt);
    let lo = 0, hi = 1;
    if (image.scale === 1) { lo = Math.min(...input); hi = Math.max(...input); if (hi === lo) hi = lo + 1; }
    for (let i = 0; i < wid * hgt; i++) {
      const v = Math.max(0, Math.min(1, (input[i] - lo) / (hi - lo)));
      const g = Math.round(255 * (1 - v));
      img.data[4 * i] = g; img.data[4 * i + 1] = g; img.data[4 * i + 2] = Math.min(255, g + 8); img.data[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }

  return { PALETTE, OTHER, line, hbar, stacked, sparkline, drawImage, fmt, message };
})();
