// The drawing page of `python -m bench demo`: drawing boxes (pointer events: mouse, pen and
// touch alike), the checkpoint selector, and the bars. All the work is done by the server
// (POST /api/classify); this page only sends the drawings as PNGs and shows the answer.
"use strict";

const SIZE = 280;                   // drawing resolution (the server reduces it to 105x105, then 28x28)
const LINE = SIZE * 5 / 105;        // about an Omniglot stroke: 5 pixels wide in the 105x105 box
const DELAY_MS = 250;               // after a stroke ends, before the drawings are sent
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf"];

const state = { checkpoints: [], current: null, pads: [], query: null, timer: null, sequence: 0 };
const $ = (id) => document.getElementById(id);

function colour(i) { return COLOURS[i % COLOURS.length]; }

function makePad(id, title, tint) {
  const pad = document.createElement("div");
  pad.className = "pad";
  pad.style.setProperty("--colour", tint);
  pad.innerHTML = `<div class="title"></div>
    <div class="box"><canvas class="draw" width="${SIZE}" height="${SIZE}"></canvas><div class="guide"></div></div>
    <div class="row"><button type="button">clear</button><span>network sees</span><img class="seen" alt=""></div>`;
  pad.querySelector(".title").textContent = title;
  const canvas = pad.querySelector("canvas");
  canvas.id = id;
  pad.querySelector("button").id = `clear-${id}`;
  pad.querySelector("img").id = `seen-${id}`;
  const p = { id, pad, canvas, ctx: canvas.getContext("2d"), empty: true, last: null, pointer: null,
              seen: pad.querySelector("img") };
  clearPad(p);
  canvas.addEventListener("pointerdown", (e) => start(p, e));
  canvas.addEventListener("pointermove", (e) => move(p, e));
  for (const type of ["pointerup", "pointercancel"]) canvas.addEventListener(type, (e) => end(p, e));
  pad.querySelector("button").addEventListener("click", () => { clearPad(p); changed(); });
  return p;
}

function clearPad(p) {
  p.ctx.fillStyle = "#fff";
  p.ctx.fillRect(0, 0, SIZE, SIZE);
  p.empty = true;
  p.last = null;
  p.seen.removeAttribute("src");
}

function point(p, e) {
  const r = p.canvas.getBoundingClientRect();
  return [(e.clientX - r.left) * SIZE / r.width, (e.clientY - r.top) * SIZE / r.height];
}

function start(p, e) {
  e.preventDefault();
  if (p.pointer !== null) return;
  p.pointer = e.pointerId;
  p.canvas.setPointerCapture(e.pointerId);
  p.last = point(p, e);
  p.ctx.fillStyle = "#000";
  p.ctx.beginPath();
  p.ctx.arc(p.last[0], p.last[1], LINE / 2, 0, 2 * Math.PI);
  p.ctx.fill();
  p.empty = false;
  clearTimeout(state.timer);
}

function move(p, e) {
  if (e.pointerId !== p.pointer) return;
  e.preventDefault();
  const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
  for (const ev of (events.length ? events : [e])) {
    const q = point(p, ev);
    p.ctx.strokeStyle = "#000";
    p.ctx.lineWidth = LINE;
    p.ctx.lineCap = "round";
    p.ctx.lineJoin = "round";
    p.ctx.beginPath();
    p.ctx.moveTo(p.last[0], p.last[1]);
    p.ctx.lineTo(q[0], q[1]);
    p.ctx.stroke();
    p.last = q;
  }
}

function end(p, e) {
  if (e.pointerId !== p.pointer) return;
  p.pointer = null;
  p.last = null;
  changed();
}

function setStatus(text, kind) {
  $("status").textContent = text;
  $("status").dataset.state = kind;
}

function changed() {
  clearTimeout(state.timer);
  state.sequence += 1;  // an answer to older drawings is no longer shown
  if (state.pads.some((p) => p.empty) || state.query.empty) {
    showBars(null);
    const what = state.pads.some((p) => p.empty) ? "a symbol in each class box" : "one of them again in the query box";
    setStatus(`Draw ${what}.`, "waiting");
    return;
  }
  state.timer = setTimeout(classify, DELAY_MS);
}

async function classify() {
  const sequence = state.sequence;
  setStatus("Fine-tuning on your drawings...", "busy");
  const body = { checkpoint: state.current.id, support: state.pads.map((p) => p.canvas.toDataURL("image/png")),
                 query: state.query.canvas.toDataURL("image/png") };
  let answer;
  try {
    const response = await fetch("/api/classify", { method: "POST", headers: { "Content-Type": "application/json" },
                                                    body: JSON.stringify(body) });
    answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
  } catch (err) {
    if (sequence === state.sequence) setStatus(`Error: ${err.message}`, "error");
    return;
  }
  if (sequence !== state.sequence) return;  // the drawings changed meanwhile
  answer.inputs.support.forEach((src, i) => { state.pads[i].seen.src = src; });
  state.query.seen.src = answer.inputs.query;
  showBars(answer.probabilities);
  showLosses(answer.losses, answer.settings);
  setStatus(`Class ${answer.predicted + 1} (fine-tuned and classified in ${answer.seconds.toFixed(2)} s).`, "done");
}

function showBars(probabilities) {
  const bars = $("bars");
  bars.innerHTML = "";
  state.pads.forEach((p, i) => {
    const row = document.createElement("div");
    row.className = "bar";
    row.dataset.class = String(i);
    row.style.setProperty("--colour", colour(i));
    row.innerHTML = `<span class="name">class ${i + 1}</span><div class="track"><div class="fill"></div></div>
      <span class="value"></span>`;
    if (probabilities) {
      const value = probabilities[i];
      row.dataset.probability = String(value);
      row.querySelector(".fill").style.width = `${(100 * value).toFixed(1)}%`;
      row.querySelector(".value").textContent = `${(100 * value).toFixed(1)}%`;
      if (value === Math.max(...probabilities)) row.classList.add("best");
    } else {
      row.querySelector(".value").textContent = "-";
    }
    bars.appendChild(row);
  });
  if (!probabilities) showLosses(null, null);
}

function showLosses(losses, settings) {
  const canvas = $("losses");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!losses || !losses.length) { $("loss-text").textContent = ""; return; }
  const pad = 8, w = canvas.width - 2 * pad, h = canvas.height - 2 * pad;
  const top = Math.max(...losses, 1e-6);
  ctx.strokeStyle = "#ddd";
  ctx.beginPath(); ctx.moveTo(pad, pad + h); ctx.lineTo(pad + w, pad + h); ctx.stroke();
  ctx.strokeStyle = "#333";
  ctx.lineWidth = 2;
  ctx.beginPath();
  losses.forEach((v, s) => {
    const x = pad + (losses.length > 1 ? s * w / (losses.length - 1) : 0);
    const y = pad + h - (v / top) * h;
    if (s === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
  const opt = settings.optimizer === "adam" ? "Adam" : "SGD";
  $("loss-text").textContent = `${losses.length} ${opt} steps (lr ${settings.lr}, batch ${settings.batch}): ` +
    `loss ${losses[0].toFixed(3)} to ${losses[losses.length - 1].toFixed(3)}`;
}

function describe(c) {
  const f = c.fine_tuning;
  const acc = c.accuracy && c.accuracy.value != null
    ? `test accuracy ${(100 * c.accuracy.value).toFixed(1)}% (${c.ways}-way ${c.shots}-shot, ${c.accuracy.tasks} tasks)`
    : "no final evaluation";
  return `${c.algo}, preset ${c.preset}, ${(c.step ?? c.meta_iters).toLocaleString("en")} meta-iterations, ${acc}. ` +
    `Fine-tuning: ${f.steps} ${f.optimizer === "adam" ? "Adam" : "SGD"} steps, lr ${f.lr}, batch ${f.batch}, ` +
    `${f.inner_state === "carry" ? "inner state carried from meta-training" : "fresh inner state"}, ` +
    `${f.transductive ? "transductive" : "query scored in a batch with the class drawings"}.`;
}

function layout(n) {
  const row = $("classes-row");
  const old = state.pads;
  row.innerHTML = "";
  state.pads = [];
  for (let i = 0; i < n; i++) {
    const p = makePad(`class-${i}`, `class ${i + 1}`, colour(i));
    if (old[i] && !old[i].empty) {  // keep what was drawn when the class count changes
      p.ctx.drawImage(old[i].canvas, 0, 0);
      p.empty = false;
    }
    state.pads.push(p);
    row.appendChild(p.pad);
  }
  if (!state.query) {
    state.query = makePad("query", "query", "#222");
    $("query-pad").appendChild(state.query.pad);
  }
  changed();
}

function selectCheckpoint(id) {
  state.current = state.checkpoints.find((c) => c.id === id);
  $("model-info").textContent = describe(state.current);
  const classes = $("classes");
  const wanted = Math.min(state.pads.length || 3, state.current.ways);
  classes.innerHTML = "";
  for (let n = 2; n <= state.current.ways; n++) classes.add(new Option(String(n), String(n)));
  classes.value = String(wanted);
  layout(wanted);
}

async function init() {
  const response = await fetch("/api/checkpoints");
  const data = await response.json();
  state.checkpoints = data.checkpoints;
  const select = $("checkpoint");
  for (const c of data.checkpoints) select.add(new Option(c.label, c.id));
  select.value = data.default;
  select.addEventListener("change", () => selectCheckpoint(select.value));
  $("classes").addEventListener("change", () => layout(Number($("classes").value)));
  $("clear-all").addEventListener("click", () => {
    state.pads.forEach(clearPad);
    clearPad(state.query);
    changed();
  });
  selectCheckpoint(data.default);
}

init().catch((err) => setStatus(`Error: ${err.message}`, "error"));
