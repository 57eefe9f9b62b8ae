// edgevlp camera page: frames over one WebSocket (one at a time: each is acknowledged once drawn),
// boxes drawn here from the same frame's results, controls sent back as JSON. No external assets.
"use strict";
const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
const query = token ? "?token=" + encodeURIComponent(token) : "";
const view = { framesDrawn: 0, boxesDrawn: 0, lastSeq: -1, labels: [], prompts: [], pending: null,
               paused: false, connected: false, errors: [], overlays: { boxes: true, labels: true, caption: true } };
window.edgevlp = view;
const $ = (id) => document.getElementById(id);
const canvas = $("video"), ctx = canvas.getContext("2d");
const COLORS = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176", "#4db6ac", "#f06292"];
let ws = null, meta = null, captions = [];

function send(message) { if (ws && ws.readyState === 1) ws.send(JSON.stringify(message)); }
function setStatus(text) { $("status").textContent = text; }
function showError(text) { view.errors.push(text); $("error").textContent = text; }

function draw(bitmap, m) {
  if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
    canvas.width = bitmap.width; canvas.height = bitmap.height;
  }
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close && bitmap.close();
  const dets = (m.results && m.results.detections) || [];
  let drawn = 0;
  if (view.overlays.boxes) {
    ctx.lineWidth = Math.max(2, canvas.width / 320); ctx.font = "14px sans-serif";
    for (const d of dets) {
      const [x1, y1, x2, y2] = d.box, i = view.prompts.indexOf(d.label);
      ctx.strokeStyle = COLORS[(i < 0 ? 0 : i) % COLORS.length];
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      if (view.overlays.labels) {
        const text = d.label + " " + d.score.toFixed(2);
        ctx.fillStyle = "rgba(0,0,0,.6)"; ctx.fillRect(x1, Math.max(0, y1 - 16), ctx.measureText(text).width + 6, 16);
        ctx.fillStyle = "#fff"; ctx.fillText(text, x1 + 3, Math.max(12, y1 - 4));
      }
      drawn++;
    }
  }
  view.boxesDrawn = drawn;
  view.labels = dets.map((d) => d.label);
  view.framesDrawn++;
  view.lastSeq = m.seq;
  const caption = m.results && m.results.caption;
  $("caption").textContent = view.overlays.caption && caption ? caption : "";
  if (caption && captions[0] !== caption) {
    captions.unshift(caption); captions = captions.slice(0, 10);
    $("feed").innerHTML = "";
    for (const c of captions) { const li = document.createElement("li"); li.textContent = c; $("feed").appendChild(li); }
  }
  const s = m.stats || {};
  const stages = Object.entries(s.timings || {}).map(([k, v]) => `  ${k} ${Number(v).toFixed(1)} ms`).join("\n");
  $("stats").textContent = `${(s.fps || 0).toFixed(1)} FPS  frame age ${m.age_ms} ms  dropped ${s.dropped || 0}\n` +
    `frame ${m.seq}  viewers ${view.viewers}\n${stages}`;
}

function showState(s) {
  view.prompts = s.prompts || []; view.viewers = s.viewers; view.pending = s.pending_prompts; view.paused = !!s.paused;
  $("prompts-panel").style.display = s.detector ? "" : "none";
  $("question-panel").style.display = s.assistant ? "" : "none";
  view.question = s.question;
  $("question").textContent = s.question ? "asking: " + s.question : "";
  const chips = $("chips"); chips.innerHTML = "";
  view.prompts.forEach((p) => {
    const chip = document.createElement("span"); chip.className = "chip"; chip.textContent = p;
    const x = document.createElement("button"); x.textContent = "×"; x.title = "remove";
    x.onclick = () => { const rest = view.prompts.filter((q) => q !== p); if (rest.length) send({ type: "prompts", prompts: rest }); };
    chip.appendChild(x); chips.appendChild(chip);
  });
  $("pending").textContent = s.pending_prompts ? "pending: " + s.pending_prompts.join(", ") :
    (s.last_error ? "not applied: " + s.last_error : "applied");
  $("threshold").value = s.threshold; $("threshold-value").textContent = Number(s.threshold).toFixed(2);
  $("pause").textContent = view.paused ? "Resume" : "Pause";
  setStatus((view.paused ? "paused" : "live") + ` · ${s.viewers} viewer(s)`);
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${scheme}://${location.host}/ws${query}`);
  ws.binaryType = "blob";
  ws.onopen = () => { view.connected = true; };
  ws.onmessage = async (event) => {
    if (typeof event.data === "string") {
      const msg = JSON.parse(event.data);
      if (msg.type === "frame") meta = msg;
      else if (msg.type === "state") showState(msg);
      else if (msg.type === "error") showError(msg.message);
      return;
    }
    const m = meta; meta = null;
    try { draw(await createImageBitmap(event.data), m); } finally { send({ type: "ack", seq: m.seq }); }
  };
  ws.onclose = () => { view.connected = false; setStatus("disconnected, retrying…"); setTimeout(connect, 1000); };
}

$("prompt-input").addEventListener("keydown", (e) => {
  if (e.key !== "Enter") return;
  const added = e.target.value.split(",").map((p) => p.trim()).filter((p) => p);
  if (!added.length) return;
  send({ type: "prompts", prompts: added });  // the typed set replaces the prompts, as --prompts does
  e.target.value = "";
});
$("question-input").addEventListener("keydown", (e) => {
  if (e.key !== "Enter" || !e.target.value.trim()) return;
  send({ type: "question", text: e.target.value.trim() });
  e.target.value = "";
});
$("threshold").addEventListener("change", (e) => send({ type: "threshold", value: Number(e.target.value) }));
$("threshold").addEventListener("input", (e) => { $("threshold-value").textContent = Number(e.target.value).toFixed(2); });
$("pause").addEventListener("click", () => send({ type: "pause", value: !view.paused }));
for (const k of ["boxes", "labels", "caption"]) $("ov-" + k).addEventListener("change", (e) => { view.overlays[k] = e.target.checked; });
connect();
