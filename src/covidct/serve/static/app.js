// covidct serve: the page talks only to the JSON API of the same server (GET /api/model, POST /api/predict).
// Every value from the server or the upload is inserted as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function fmt(value, digits = 3) {
  return typeof value === "number" && isFinite(value) ? value.toFixed(digits) : "n/a";
}

function row(table, cells, header = false) {
  const tr = document.createElement("tr");
  cells.forEach((cell) => {
    const td = el(header ? "th" : "td");
    if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell;
    tr.appendChild(td);
  });
  table.appendChild(tr);
}

function showModel(info) {
  const box = $("run-info");
  box.textContent = "";
  const lines = [
    ["Run", `${info.run} (${info.model})`],
    ["Trained on", `${info.dataset}: ${info.training_images ?? "?"} training images of ${info.training_groups ?? "?"} patients`],
    ["Classes", info.classes.join(", ")],
    ["Preprocessing", `${info.stage} at ${info.size} px`],
    ["Decision", info.decision.threshold === null ? info.decision.source
      : `${info.decision.positive_class} when its probability >= ${fmt(info.decision.threshold, 2)} (${info.decision.source})`],
    ["Volumes", `patient score: ${info.aggregation.method}${info.aggregation.method === "topk" ? " (k=" + info.aggregation.k + ")" : ""} of the slice probabilities`],
    ["OOD check", info.ood_reference.available ? `against ${info.ood_reference.source}` : `unavailable: ${info.ood_reference.reason}`],
  ];
  const dl = el("dl");
  lines.forEach(([k, v]) => { dl.appendChild(el("dt", k)); dl.appendChild(el("dd", v)); });
  box.appendChild(dl);
  const table = $("scores");
  table.textContent = "";
  if (!info.scores.length) {
    row(table, ["No metrics file in the run folder: the run was not evaluated."]);
    return;
  }
  row(table, ["Score set", "Data", "Images", "Accuracy", "Balanced acc.", "Macro-F1 [95% CI]", "AUC"], true);
  info.scores.forEach((s) => {
    const ci = s.slice.macro_f1_ci ? ` [${fmt(s.slice.macro_f1_ci[0], 2)}, ${fmt(s.slice.macro_f1_ci[1], 2)}]` : "";
    row(table, [s.kind, `${s.dataset} (${s.split})`, s.n_images ?? "?", fmt(s.slice.accuracy), fmt(s.slice.balanced_accuracy),
      fmt(s.slice.macro_f1) + ci, fmt(s.slice.auc_macro_ovr)]);
  });
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function warning(text) {
  $("warnings").appendChild(el("p", text, "warning"));
}

function probabilityTable(table, probabilities) {
  table.textContent = "";
  Object.entries(probabilities).forEach(([name, p]) => {
    const bar = el("span", null, "bar");
    bar.style.width = `${Math.round(160 * p)}px`;
    const cell = el("span");
    cell.appendChild(bar);
    cell.appendChild(document.createTextNode(" " + fmt(p)));
    row(table, [name, cell]);
  });
}

function drawCurve(curve, positive) {
  const svg = $("curve");
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const ns = "http://www.w3.org/2000/svg";
  const xs = curve.slice_index;
  const ys = curve.probabilities[positive] || Object.values(curve.probabilities)[0];
  const lo = Math.min(...xs), hi = Math.max(...xs);
  const x = (v) => 40 + (hi > lo ? (v - lo) / (hi - lo) : 0.5) * 540;
  const y = (p) => 180 - p * 160;
  const axis = document.createElementNS(ns, "path");
  axis.setAttribute("d", `M40 20 V180 H580 M40 ${y(0.5)} H580`);
  axis.setAttribute("stroke", "#8a94a0"); axis.setAttribute("fill", "none"); axis.setAttribute("stroke-dasharray", "2 3");
  svg.appendChild(axis);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", xs.map((v, i) => `${x(v)},${y(ys[i])}`).join(" "));
  line.setAttribute("fill", "none"); line.setAttribute("stroke", "#2f6fd6"); line.setAttribute("stroke-width", "2");
  svg.appendChild(line);
  [[`P(${positive}) = 1`, 24], ["0.5", y(0.5) + 4], ["0", 184]].forEach(([t, yy]) => {
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", "2"); label.setAttribute("y", String(yy)); label.setAttribute("font-size", "10");
    label.textContent = t; svg.appendChild(label);
  });
  const caption = document.createElementNS(ns, "text");
  caption.setAttribute("x", "300"); caption.setAttribute("y", "198"); caption.setAttribute("font-size", "10");
  caption.textContent = `slice index ${lo}..${hi} (inferior to superior)`;
  svg.appendChild(caption);
}

function showResult(result) {
  $("result").hidden = false;
  $("warnings").textContent = "";
  $("predicted").textContent = result.predicted_class;
  const d = result.decision;
  $("decision").textContent = d.threshold === null ? `(${d.source})`
    : `(${d.positive_class} when P >= ${fmt(d.threshold, 2)}, ${d.source})`;
  probabilityTable($("probabilities"), result.probabilities);
  if (result.ood && result.ood.available && result.ood.warning) {
    warning(`Out of distribution: this image's ${result.ood.feature} is ${fmt(result.ood.max_abs_z, 1)} robust SDs from the training images' (limit ${result.ood.limit}). The prediction is not reliable.`);
  }
  $("ood").textContent = !result.ood ? "" : result.ood.available
    ? `Intensity check: largest deviation from the training set ${fmt(result.ood.max_abs_z, 1)} robust SDs (${result.ood.feature}); limit ${result.ood.limit}.`
    : `Intensity check unavailable: ${result.ood.reason}.`;
  if (result.kind === "slice") {
    $("slice-view").hidden = false;
    $("volume-view").hidden = true;
    $("input-image").src = result.images.input;
    $("gradcam").src = result.images.gradcam;
    $("gradcam-caption").textContent = `Grad-CAM of ${result.gradcam.class} (${result.gradcam.layer})`;
    $("lungmask").src = result.images.lung_mask;
    const f = result.lung_focus;
    $("focus").textContent = `Lung focus: ${fmt(f.score, 2)} of the Grad-CAM mass inside the lung mask (threshold ${fmt(f.threshold, 2)}; lung area ${fmt(f.lung_area_fraction, 2)}).`;
    if (f.warning) warning(`Low lung focus: ${f.message}`);
  } else {
    $("slice-view").hidden = true;
    $("volume-view").hidden = false;
    $("focus").textContent = "";
    const p = result.patient;
    $("patient").textContent = `Patient-level (${p.aggregation} of ${result.slices_scored} lung slices): ${Object.entries(p.scores).map(([n, v]) => `${n} ${fmt(v)}`).join(", ")} → ${p.predicted_class}`;
    const positive = result.decision.positive_class || Object.keys(result.probabilities)[0];
    drawCurve(result.slice_curve, positive);
    const box = $("top-slices");
    box.textContent = "";
    result.top_slices.forEach((s) => {
      const fig = el("figure");
      const img = el("img");
      img.src = s.images.gradcam;
      img.alt = `Grad-CAM of slice ${s.slice_index}`;
      fig.appendChild(img);
      fig.appendChild(el("figcaption", `slice ${s.slice_index}: P(${s.gradcam_class}) ${fmt(s.probabilities[s.gradcam_class])}, lung focus ${fmt(s.lung_focus.score, 2)}`));
      box.appendChild(fig);
    });
  }
}

async function upload(file) {
  $("error").hidden = true;
  $("result").hidden = true;
  $("status").textContent = `Analysing ${file.name} (${(file.size / 1048576).toFixed(2)} MB)…`;
  const form = new FormData();
  form.append("file", file);
  try {
    const response = await fetch("/api/predict", { method: "POST", body: form });
    const body = await response.json().catch(() => ({ detail: `HTTP ${response.status}` }));
    if (!response.ok) {
      const retry = response.headers.get("Retry-After");
      $("status").textContent = "";
      showError(`Could not analyse ${file.name}: ${body.detail}${retry ? ` (retry in ${retry} s)` : ""}`);
      return;
    }
    $("status").textContent = `Result for ${file.name}:`;
    showResult(body);
  } catch (error) {
    $("status").textContent = "";
    showError(`The request failed: ${error}`);
  }
}

function setup() {
  fetch("/api/model").then((r) => r.json()).then((info) => {
    showModel(info);
    $("disclaimer").textContent = info.disclaimer;
    $("formats").textContent = `${info.limits.formats}; up to ${info.limits.max_upload_mb} MB`;
  }).catch((error) => showError(`Cannot read the model description: ${error}`));
  const drop = $("drop");
  $("file").addEventListener("change", (event) => { if (event.target.files.length) upload(event.target.files[0]); });
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (event) => {
    event.preventDefault(); drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) upload(event.dataTransfer.files[0]);
  });
}

document.addEventListener("DOMContentLoaded", setup);
