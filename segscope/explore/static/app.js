// segscope explore: the page. Plain JavaScript, no library, nothing from the network
// but this server. Every request that fails shows the server's one-line message.
"use strict";

const $ = (id) => document.getElementById(id);
const S = {info: null, item: null, mask: null, pixel: null, result: null, job: null,
           drawing: false, listing: null};

// -- requests ------------------------------------------------------------------------
async function api(url, body, raw) {
  const opts = body === undefined ? {} : {
    method: "POST",
    headers: {"Content-Type": raw ? "application/octet-stream" : "application/json"},
    body: raw ? body : JSON.stringify(body),
  };
  let resp;
  try {
    resp = await fetch(url, opts);
  } catch (e) {
    showError("the server does not answer (is segscope explore still running?)");
    throw e;
  }
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    const msg = (data && data.error) || `${resp.status} ${resp.statusText}`;
    showError(msg);
    throw new Error(msg);
  }
  return data;
}

function showError(msg) {
  $("error-text").textContent = msg;
  $("error").hidden = false;
  document.body.dataset.error = msg;
}
function clearError() { $("error").hidden = true; delete document.body.dataset.error; }

function busy(on) {
  $("busy").hidden = !on;
  $("explain").disabled = on;
  document.body.dataset.busy = on ? "1" : "0";
}

const fmt = (v, d = 3) => v === null || v === undefined ? "–" :
  (Math.abs(v) >= 1e-3 || v === 0 ? Number(v).toPrecision(d) : Number(v).toExponential(2));
const pct = (v) => v === null || v === undefined ? "–" : (100 * v).toFixed(1) + " %";
function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function option(select, value, text) { select.appendChild(el("option", {value}, text ?? value)); }

// -- start -----------------------------------------------------------------------------
async function init() {
  S.info = await api("/api/info");
  const I = S.info;
  $("model-info").textContent = `${I.classes.join(" / ")} · ${I.device}`;
  option($("concept-class"), "predicted", "predicted");
  I.classes.forEach((c) => option($("concept-class"), c));
  I.assignments.forEach((a) => option($("assign"), a));
  I.methods.forEach((m) => option($("method"), m, METHOD_NAMES[m] || m));
  I.rules.forEach((r) => option($("rules"), r));
  $("rule").value = I.rule;
  I.layers.forEach((l) => option($("cam-layer"), l));
  $("cam-layer").value = I.gradcam_layer;
  I.layers.forEach((l) => option($("fv-layer"), l));
  $("fv-layer").value = I.fv_layer;
  updateControls();
  await loadList();
  const first = (S.listing.diagnosis[0] || S.listing.items[0]);
  if (first) await openImage(first.id);
  document.body.dataset.ready = "1";
}

const METHOD_NAMES = {lrp: "LRP", gradcam: "Grad-CAM", "gradcam-rf": "Grad-CAM (receptive field)",
  sensitivity: "sensitivity", gradxinput: "gradient × input", deconvnet: "deconvnet",
  guided: "guided backprop"};

async function loadList() {
  S.listing = await api("/api/images");
  const list = $("image-list");
  list.innerHTML = "";
  $("notes").innerHTML = "";
  S.listing.notes.forEach((n) => $("notes").appendChild(el("p", {class: "note"}, n)));
  const groups = new Map();
  if (S.listing.diagnosis.length)
    groups.set("diagnosis: most likely to fail first", S.listing.diagnosis.map((d) => ({
      ...d, label: `${d.name}  ·  failure ${fmt(d.failure_score, 2)}` +
        (d.iou !== null && d.iou !== undefined ? `  ·  IoU ${fmt(d.iou, 2)}` : "")})));
  for (const it of S.listing.items) {
    if (it.group === "diagnosis") continue;
    if (!groups.has(it.group)) groups.set(it.group, []);
    groups.get(it.group).push({...it, label: it.name});
  }
  const cmp = $("compare-with");
  cmp.innerHTML = "";
  for (const [g, items] of groups) {
    list.appendChild(el("h4", {}, g));
    const og = el("optgroup", {label: g});
    for (const it of items) {
      const b = el("button", {type: "button", "data-id": it.id, class: "item"}, it.label);
      b.onclick = () => openImage(it.id).catch(() => {});
      list.appendChild(b);
      option(og, it.id, it.name);
    }
    cmp.appendChild(og);
  }
}

// -- the image --------------------------------------------------------------------------
async function openImage(id) {
  clearError();
  const v = await api(`/api/images/${encodeURIComponent(id)}`);
  S.item = v;
  S.pixel = null;
  S.mask = new Uint8Array(v.width * v.height);
  document.querySelectorAll(".item").forEach((b) => b.classList.toggle("current", b.dataset.id === id));
  // TP/FP/FN need a label
  for (const o of $("concept-kind").options)
    if (["tp", "fp", "fn"].includes(o.value)) o.disabled = !v.has_label;
  if (!v.has_label && $("concept-kind").selectedOptions[0].disabled) {
    $("concept-kind").value = "pixel"; updateControls();
  }
  const base = `/api/images/${encodeURIComponent(id)}`;
  const img = $("image");
  await new Promise((ok) => { img.onload = ok; img.onerror = ok; img.src = `${base}/image.png`; });
  const c = $("draw");
  c.width = v.width; c.height = v.height;
  $("label").src = v.has_label ? `${base}/label.png` : "";
  $("label").parentElement.hidden = !v.has_label;
  $("prediction").src = `${base}/prediction.png`;
  $("image-caption").textContent = `${v.name} · ${v.height}×${v.width}`;
  const t = el("table");
  t.appendChild(row(["class", "IoU", "predicted"], "th"));
  if (v.iou && v.iou["road surface"] !== undefined) {
    // labels without markings: IoU of the road surface, with the share predicted road or markings
    const share = (cs) => cs.reduce((s, c) => s + (v.predicted_share[c] || 0), 0);
    t.appendChild(row(["background", pct(v.iou.background), pct(share(["background"]))]));
    t.appendChild(row(["road surface", pct(v.iou["road surface"]),
                       pct(share(S.info.classes.filter((c) => c !== "background")))]));
  } else {
    S.info.classes.forEach((c) => t.appendChild(row([c, v.iou ? pct(v.iou[c]) : "no label",
                                                        pct(v.predicted_share[c])])));
  }
  if (v.miou !== null) t.appendChild(row(["mean", pct(v.miou), ""]));
  if (v.failure_score !== undefined) t.appendChild(row(["failure score", fmt(v.failure_score), ""]));
  $("image-numbers").innerHTML = "";
  $("image-numbers").appendChild(t);
  if (v.scored_on) $("image-numbers").appendChild(el("p", {class: "muted small"}, `IoU on the ${v.scored_on}`));
  drawConcept();
  document.body.dataset.image = id;
}

function row(cells, tag = "td") {
  const tr = el("tr");
  cells.forEach((c) => tr.appendChild(el(tag, {}, c)));
  return tr;
}

function canvasPoint(ev) {
  const c = $("draw"), r = c.getBoundingClientRect();
  const x = Math.floor((ev.clientX - r.left) / r.width * c.width);
  const y = Math.floor((ev.clientY - r.top) / r.height * c.height);
  return {x: Math.min(Math.max(x, 0), c.width - 1), y: Math.min(Math.max(y, 0), c.height - 1)};
}

function brushAt(p) {
  const rad = Number($("brush").value) * $("draw").width / 480;
  const w = S.item.width, h = S.item.height;
  for (let y = Math.max(0, Math.floor(p.y - rad)); y <= Math.min(h - 1, p.y + rad); y++)
    for (let x = Math.max(0, Math.floor(p.x - rad)); x <= Math.min(w - 1, p.x + rad); x++)
      if ((x - p.x) ** 2 + (y - p.y) ** 2 <= rad * rad) S.mask[y * w + x] = 1;
}

function drawConcept() {
  const c = $("draw"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const kind = $("concept-kind").value;
  if (kind === "mask" && S.mask) {
    const img = g.createImageData(c.width, c.height);
    for (let i = 0; i < S.mask.length; i++) if (S.mask[i]) {
      img.data[4 * i] = 0; img.data[4 * i + 1] = 200; img.data[4 * i + 2] = 255; img.data[4 * i + 3] = 110;
    }
    g.putImageData(img, 0, 0);
  } else if (kind === "pixel" && S.pixel) {
    const s = Math.max(4, c.width / 60);
    g.strokeStyle = "#00e5ff"; g.lineWidth = Math.max(1.5, c.width / 300);
    g.beginPath(); g.arc(S.pixel.x + 0.5, S.pixel.y + 0.5, s, 0, 2 * Math.PI); g.stroke();
    g.beginPath(); g.moveTo(S.pixel.x - 2 * s, S.pixel.y + 0.5); g.lineTo(S.pixel.x - s, S.pixel.y + 0.5);
    g.moveTo(S.pixel.x + s, S.pixel.y + 0.5); g.lineTo(S.pixel.x + 2 * s, S.pixel.y + 0.5); g.stroke();
  }
}

function maskRuns() {
  const runs = [];
  let start = -1;
  for (let i = 0; i <= S.mask.length; i++) {
    const on = i < S.mask.length && S.mask[i];
    if (on && start < 0) start = i;
    if (!on && start >= 0) { runs.push([start, i - start]); start = -1; }
  }
  return runs;
}

function setupCanvas() {
  const c = $("draw");
  c.addEventListener("pointerdown", (ev) => {
    if (!S.item) return;
    const p = canvasPoint(ev);
    if ($("concept-kind").value === "mask") {
      S.drawing = true; brushAt(p); drawConcept();
    } else if ($("concept-kind").value === "pixel") {
      S.pixel = p; drawConcept(); explain();
    }
  });
  c.addEventListener("pointermove", (ev) => {
    if (S.drawing) { brushAt(canvasPoint(ev)); drawConcept(); }
  });
  const stop = () => { if (S.drawing) { S.drawing = false; explain(); } };
  c.addEventListener("pointerup", stop);
  c.addEventListener("pointerleave", stop);
}

// -- explaining ---------------------------------------------------------------------------
function conceptSpec() {
  const kind = $("concept-kind").value;
  const spec = {kind, class: $("concept-class").value};
  if ($("assign").value !== "auto") spec.assign = $("assign").value;
  if (kind === "pixel") {
    if (!S.pixel) throw new Error("click a pixel of the image first");
    spec.y = S.pixel.y; spec.x = S.pixel.x;
  } else if (kind === "mask") {
    spec.mask = maskRuns();
    if (!spec.mask.length) throw new Error("brush over the image first");
  }
  return spec;
}

function methodSpec() {
  let method = $("method").value;
  const spec = {method};
  if (method === "lrp") { spec.rule = $("rule").value; spec.fv_layer = $("fv-layer").value; }
  if (method.startsWith("gradcam")) {
    spec.method = $("cam-rf").checked ? "gradcam-rf" : "gradcam";
    spec.layer = $("cam-layer").value;
  }
  return spec;
}

async function explain() {
  if (!S.item) return;
  clearError();
  let req;
  try { req = {image: S.item.id, concept: conceptSpec(), ...methodSpec()}; }
  catch (e) { showError(e.message); return; }
  busy(true);
  try {
    const r = await api("/api/explain", req);
    await showResult(r);
  } catch (e) { /* shown */ } finally { busy(false); }
}

function imgLoaded(img, src) {
  return new Promise((ok) => { img.onload = ok; img.onerror = ok; img.src = src; });
}

async function showResult(r) {
  S.result = r;
  const base = `/api/results/${r.id}`;
  $("result").hidden = false;
  await Promise.all([imgLoaded($("heatmap"), `${base}/heatmap.png`),
                     imgLoaded($("overlay"), `${base}/overlay.png`)]);
  $("heatmap-caption").textContent = `${METHOD_NAMES[r.method] || r.method}: ${r.description}`;
  $("scale-lo").textContent = "−" + fmt(r.limit);
  $("scale-hi").textContent = "+" + fmt(r.limit);
  const t = el("table");
  const add = (k, v) => t.appendChild(row([k, v]));
  add("concept", `${r.concept.kind} · ${r.concept.class} · ${r.concept.assign} · ${r.concept.selected} px`);
  if (r.method === "lrp") {
    add("rule", r.rule);
    add("output relevance", fmt(r.output_total));
    add("reaches the pixels", `${fmt(r.input_total)} (${pct(r.share_reaching_pixels)})`);
    add("absorbed by biases", `${fmt(r.absorbed_total)} (${pct(r.absorbed_share)})`);
    if (Math.abs(r.dropped) > 0) add("dropped in padding", fmt(r.dropped));
  }
  if (r.layer) add("layer", r.layer + (r.receptive_field ? " (receptive field)" : ""));
  add("min / max", `${fmt(r.min)} / ${fmt(r.max)}`);
  const h = r.switch_off.pixels_holding;
  add("pixels holding 50/90/99 %", `${pct(h["0.5"])} / ${pct(h["0.9"])} / ${pct(h["0.99"])}`);
  add("negative share", pct(r.negative_share));
  $("result-numbers").innerHTML = "";
  $("result-numbers").appendChild(t);
  const d = $("downloads");
  d.innerHTML = "download: ";
  [["heatmap.png", "heatmap PNG"], ["overlay.png", "overlay PNG"], ["pixels.npy", "map .npy"],
   ["concept.npy", "concept .npy"], ["numbers.json", "numbers JSON"]].forEach(([f, label]) => {
    const a = el("a", {href: `${base}/${f}`, download: `segscope-${r.id}-${f}`}, label);
    d.appendChild(a); d.appendChild(document.createTextNode(" "));
  });
  document.querySelectorAll(".lrp-only").forEach((e) => { e.hidden = r.method !== "lrp"; });
  drawSwitchOff(r);
  $("layer-grid").innerHTML = "";
  if (r.method === "lrp") {
    drawAbsorbed(r);
    drawProfile(r.fv);
  }
  $("separated").innerHTML = ""; $("sep-status").textContent = "";
  $("result").dataset.rid = r.id;
  $("result").dataset.method = r.method;
  document.body.dataset.result = r.id;
  if (r.method === "lrp") {
    // the heatmap is shown; the layer-by-layer view needs one more sweep
    $("layer-grid").textContent = "computing every layer…";
    api(`/api/results/${r.id}/layers.json`).then((L) => {
      if (S.result && S.result.id === r.id) drawLayerGrid(r.id, L.layers);
    }).catch(() => { $("layer-grid").textContent = ""; });
  }
}

// -- charts (SVG) ---------------------------------------------------------------------------
const NS = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function axes(svg, m, xlabel, ylabel) {
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height");
  svg.innerHTML = "";
  svg.appendChild(svgEl("line", {x1: m.l, y1: H - m.b, x2: W - m.r, y2: H - m.b, class: "axis"}));
  svg.appendChild(svgEl("line", {x1: m.l, y1: m.t, x2: m.l, y2: H - m.b, class: "axis"}));
  if (xlabel) svg.appendChild(svgEl("text", {x: (W + m.l) / 2, y: H - 4, class: "lbl", "text-anchor": "middle"}, xlabel));
  if (ylabel) svg.appendChild(svgEl("text", {x: 12, y: (H - m.b + m.t) / 2, class: "lbl", "text-anchor": "middle",
    transform: `rotate(-90 12 ${(H - m.b + m.t) / 2})`}, ylabel));
  return {W, H, iw: W - m.l - m.r, ih: H - m.t - m.b};
}

function drawSwitchOff(r) {
  const svg = $("switchoff"), m = {l: 44, r: 10, t: 10, b: 34};
  const {H, iw, ih} = axes(svg, m, "share of pixels still on", "share of relevance");
  const xs = r.switch_off.pixel_share, ys = r.switch_off.relevance_share;
  const pts = xs.map((x, i) => `${m.l + x * iw},${H - m.b - ys[i] * ih}`).join(" ");
  svg.appendChild(svgEl("polyline", {points: pts, class: "curve"}));
  for (const t of [0, 0.5, 1]) {
    svg.appendChild(svgEl("text", {x: m.l + t * iw, y: H - m.b + 13, class: "tick", "text-anchor": "middle"}, t));
    svg.appendChild(svgEl("text", {x: m.l - 4, y: H - m.b - t * ih + 3, class: "tick", "text-anchor": "end"}, t));
  }
  const h99 = r.switch_off.pixels_holding["0.99"];
  svg.appendChild(svgEl("line", {x1: m.l + h99 * iw, y1: m.t, x2: m.l + h99 * iw, y2: H - m.b, class: "mark"}));
  svg.appendChild(svgEl("text", {x: m.l + h99 * iw + 4, y: m.t + 12, class: "tick"}, `99 % in ${pct(h99)}`));
}

function bars(svg, values, opts = {}) {
  const m = {l: 48, r: 10, t: 10, b: opts.rotate ? 64 : 30};
  const {H, iw, ih} = axes(svg, m, opts.xlabel, opts.ylabel);
  const series = opts.series || [values];
  const all = series.flat().filter((v) => v !== null);
  const hi = Math.max(0, ...all) || 1;
  let lo = Math.min(0, ...all);
  if (-lo < 1e-3 * hi) lo = 0;  // float noise below zero: keep the axis at 0
  const y = (v) => H - m.b - (v - lo) / (hi - lo) * ih;
  const n = values.length, bw = iw / n;
  series.forEach((vals, s) => vals.forEach((v, i) => {
    if (v === null) return;
    const y0 = y(0), y1 = y(v);
    const w = Math.max(0.5, bw / series.length - (n < 80 ? 1 : 0));
    const r = svgEl("rect", {x: m.l + i * bw + s * bw / series.length, y: Math.min(y0, y1), width: w,
      height: Math.max(0.5, Math.abs(y1 - y0)), class: (opts.classes || ["bar", "bar2"])[s]});
    r.appendChild(svgEl("title", {}, `${opts.names ? opts.names[i] : i}: ${fmt(v)}`));
    svg.appendChild(r);
  }));
  svg.appendChild(svgEl("line", {x1: m.l, y1: y(0), x2: m.l + iw, y2: y(0), class: "axis"}));
  for (const v of [lo, hi]) svg.appendChild(svgEl("text", {x: m.l - 4, y: y(v) + 3, class: "tick", "text-anchor": "end"}, fmt(v, 2)));
  if (opts.names) {
    const step = Math.ceil(n / (opts.rotate ? 40 : 16));
    opts.names.forEach((name, i) => {
      if (i % step) return;
      const x = m.l + (i + 0.5) * bw, yy = H - m.b + 10;
      svg.appendChild(svgEl("text", opts.rotate ?
        {x, y: yy, class: "tick", "text-anchor": "end", transform: `rotate(-60 ${x} ${yy})`} :
        {x, y: yy + 2, class: "tick", "text-anchor": "middle"}, name));
    });
  }
}

function drawAbsorbed(r) {
  const names = Object.keys(r.absorbed);
  const vals = names.map((n) => r.output_total ? r.absorbed[n] / r.output_total : 0);
  bars($("absorbed"), vals, {names, rotate: true, ylabel: "share of output"});
}

function drawProfile(fv) {
  const n = fv.values.length;
  bars($("fv"), fv.values, {names: fv.values.map((_, i) => String(i)), xlabel: `channel of ${fv.layer}`, ylabel: "fv"});
  const t = $("top-features");
  t.innerHTML = "top features: ";
  fv.top.forEach((f) => t.appendChild(el("span", {class: "chip"}, `#${f.channel} fv ${fmt(f.fv)}`)));
  t.appendChild(el("span", {class: "muted"}, ` (fv sums to ${n}: a feature with an average share has fv 1)`));
}

function drawLayerGrid(rid, layers) {
  const g = $("layer-grid");
  g.innerHTML = "";
  for (const L of layers) {
    const f = el("figure");
    const img = el("img", {src: `/api/results/${rid}/layer/${L.name}.png`, alt: L.name, title: `${L.name} ${L.shape.join("×")}`});
    f.appendChild(img);
    f.appendChild(el("figcaption", {}, `${L.name} ΣR=${fmt(L.total)}`));
    g.appendChild(f);
  }
}

// -- feature separation --------------------------------------------------------------------
async function separate() {
  if (!S.result || S.result.method !== "lrp") return;
  clearError();
  const job = await api(`/api/results/${S.result.id}/separate`,
                        {layer: $("fv-layer").value, top: $("sep-top").value});
  S.job = job.id;
  $("separated").innerHTML = "";
  $("sep-progress").hidden = false; $("sep-cancel").hidden = false;
  let shown = 0;
  while (S.job === job.id) {
    const j = await api(`/api/jobs/${job.id}`);
    $("sep-progress").max = j.total; $("sep-progress").value = j.done;
    $("sep-status").textContent = `${j.done} / ${j.total} ${j.status === "running" ? "" : j.status}`;
    if (j.done > shown || j.status !== "running") {
      // one colour scale for every map (eq 9.2): redraw all when the scale grows
      $("separated").innerHTML = "";
      for (let i = 0; i < j.done; i++) {
        const f = el("figure");
        f.appendChild(el("img", {src: `/api/jobs/${j.id}/feature/${i}.png?n=${j.done}`}));
        f.appendChild(el("figcaption", {}, `#${j.channels[i]} R=${fmt(j.totals[i])}`));
        $("separated").appendChild(f);
      }
      shown = j.done;
    }
    if (j.status !== "running") {
      if (j.error) showError(j.error);
      if (j.done) {
        const a = el("a", {href: `/api/jobs/${j.id}/feature/all.npy`}, "all maps .npy");
        $("sep-status").appendChild(document.createTextNode(" · "));
        $("sep-status").appendChild(a);
      }
      break;
    }
    await new Promise((ok) => setTimeout(ok, 300));
  }
  $("sep-progress").hidden = true; $("sep-cancel").hidden = true;
}

// -- two images ----------------------------------------------------------------------------
async function compare() {
  if (!S.item) return;
  clearError();
  let req;
  try { req = {a: S.item.id, b: $("compare-with").value, concept: conceptSpec(),
               rule: $("rule").value, fv_layer: $("fv-layer").value}; }
  catch (e) { showError(e.message); return; }
  busy(true);
  try {
    const out = await api("/api/compare", req);
    $("compare-out").hidden = false;
    await Promise.all([imgLoaded($("cmp-a"), `/api/results/${out.a.id}/overlay.png`),
                       imgLoaded($("cmp-b"), `/api/results/${out.b.id}/overlay.png`)]);
    $("cmp-a-cap").textContent = `${out.a.image}: ${out.a.description}`;
    $("cmp-b-cap").textContent = `${out.b.image}: ${out.b.description}`;
    const names = out.divergence.map((d) => d.layer);
    bars($("divergence"), names.map(() => 0), {names, rotate: true, ylabel: "divergence",
      series: [out.divergence.map((d) => d.cosine), out.divergence.map((d) => d.js)],
      classes: ["bar", "bar2"]});
    $("cmp-layer").textContent = out.a.fv.layer;
    bars($("cmp-fv"), out.a.fv.values, {names: out.a.fv.values.map((_, i) => String(i)),
      series: [out.a.fv.values, out.b.fv.values], classes: ["bar", "bar2"], xlabel: "channel", ylabel: "fv"});
    $("compare-out").dataset.a = out.a.id;
    $("compare-out").dataset.b = out.b.id;
  } catch (e) { /* shown */ } finally { busy(false); }
}

// -- wiring ----------------------------------------------------------------------------------
function updateControls() {
  const kind = $("concept-kind").value, method = $("method").value;
  $("brush-tools").hidden = kind !== "mask";
  $("lrp-opts").hidden = method !== "lrp";
  $("cam-opts").hidden = !method.startsWith("gradcam");
  if (method === "gradcam-rf") { $("cam-rf").checked = true; }
  document.querySelectorAll("#draw").forEach((c) => { c.dataset.kind = kind; });
  drawConcept();
}

window.addEventListener("DOMContentLoaded", () => {
  setupCanvas();
  $("error-close").onclick = clearError;
  $("concept-kind").onchange = () => { updateControls(); if (["tp", "fp", "fn"].includes($("concept-kind").value)) explain(); };
  $("method").onchange = () => { updateControls(); if (S.result) explain(); };
  $("cam-rf").onchange = () => { if (S.result) explain(); };
  $("cam-layer").onchange = () => { if (S.result) explain(); };
  $("explain").onclick = explain;
  $("clear-mask").onclick = () => { if (S.mask) S.mask.fill(0); drawConcept(); };
  $("fv-layer").onchange = async () => {
    if (!S.result || S.result.method !== "lrp") return;
    const fv = await api(`/api/results/${S.result.id}/profile`, {layer: $("fv-layer").value});
    S.result.fv = fv; drawProfile(fv);
  };
  $("separate").onclick = () => separate().catch(() => {});
  $("sep-cancel").onclick = () => { if (S.job) api(`/api/jobs/${S.job}/cancel`, {}).catch(() => {}); };
  $("compare-run").onclick = compare;
  $("upload").onchange = async (ev) => {
    const f = ev.target.files[0];
    if (!f) return;
    clearError();
    try {
      const it = await api(`/api/upload?name=${encodeURIComponent(f.name)}`, f, true);
      await loadList(); await openImage(it.id);
    } catch (e) { /* shown */ }
    ev.target.value = "";
  };
  $("open-form").onsubmit = async (ev) => {
    ev.preventDefault();
    clearError();
    try {
      const it = await api("/api/open", {path: $("open-path").value});
      await loadList(); await openImage(it.id);
    } catch (e) { /* shown */ }
  };
  updateControls();
  init().catch((e) => { if (!$("error").hidden) return; showError(String(e)); });
});
