"""The upload page ``predict_http`` serves at ``GET /``: plain HTML and JavaScript.

No external assets (the function may run where nothing outside is reachable). The
page posts the chosen file to ``predict?gradcam=base64`` and shows the image, the
prediction, the Grad-CAM overlay (of the most suspicious tile, for a tiled upload,
with its heatmap and slide fields) and the research-use disclaimer.
"""

from __future__ import annotations

import html

from histo_common import DISCLAIMER

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>histoscreen: screen one H&amp;E patch</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 56rem; padding: 0 1rem; }
  .disclaimer { background: #fff3cd; border: 1px solid #e0c36a; padding: .6rem .8rem; }
  .row { display: flex; gap: 1.5rem; flex-wrap: wrap; align-items: flex-start; margin-top: 1rem; }
  figure { margin: 0; }
  figure img { image-rendering: pixelated; border: 1px solid #ccc; max-width: 100%; }
  #original { width: 256px; }
  table { border-collapse: collapse; }
  td { padding: .2rem .8rem .2rem 0; }
  .error { color: #a00; }
</style>
</head>
<body>
<h1>histoscreen</h1>
<p class="disclaimer" id="disclaimer">__DISCLAIMER__</p>
<form id="form">
  <input type="file" id="file" name="file" accept="image/*,.svs,.ndpi,.scn,.tif,.tiff" required>
  <button type="submit">Screen</button>
</form>
<p id="status" role="status"></p>
<div class="row">
  <figure hidden id="original-fig"><img id="original" alt="uploaded image">
    <figcaption>uploaded image</figcaption></figure>
  <figure hidden id="overlay-fig"><img id="overlay" alt="Grad-CAM overlay">
    <figcaption id="overlay-caption">Grad-CAM: where the model looked for the malignant class
    </figcaption></figure>
  <figure hidden id="heatmap-fig"><img id="heatmap" alt="tile heatmap">
    <figcaption>Tile probabilities over the slide (a large upload is scored tile by tile)
    </figcaption></figure>
  <table hidden id="prediction"><tbody></tbody></table>
</div>
<script>
const form = document.getElementById("form");
const statusLine = document.getElementById("status");
function show(id, yes) { document.getElementById(id).hidden = !yes; }
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = document.getElementById("file").files[0];
  if (!file) { return; }
  ["original-fig", "overlay-fig", "heatmap-fig", "prediction"].forEach((id) => show(id, false));
  statusLine.className = "";
  statusLine.textContent = "Screening " + file.name + " ...";
  document.getElementById("original").src = URL.createObjectURL(file);
  show("original-fig", true);
  const body = new FormData();
  body.append("file", file);
  try {
    const response = await fetch("predict?gradcam=base64", { method: "POST", body: body });
    const doc = await response.json();
    if (!response.ok) { throw new Error(doc.error || response.statusText); }
    const tiled = doc.tiles_scored !== undefined;
    if (doc.gradcam_png_base64) {
      document.getElementById("overlay").src = "data:image/png;base64," + doc.gradcam_png_base64;
      document.getElementById("overlay-caption").textContent = tiled
        ? "Grad-CAM of the most suspicious tile"
        : "Grad-CAM: where the model looked for the malignant class";
      show("overlay-fig", true);
    }
    if (doc.heatmap_png_base64) {
      document.getElementById("heatmap").src = "data:image/png;base64," + doc.heatmap_png_base64;
      show("heatmap-fig", true);
    }
    const rows = [
      ["label", doc.label],
      ["p(malignant)", Number(doc.probability).toFixed(3)],
      ["threshold", Number(doc.threshold).toFixed(3)],
      ["model", doc.model_name + " v" + doc.model_version],
      ["image", doc.image_width + " x " + doc.image_height + " " + doc.image_format],
    ];
    if (tiled) {
      rows.push(["tiles scored", doc.tiles_scored + " of " + doc.grid_tiles]);
      rows.push(["top-" + doc.top_k + " mean", Number(doc.top_k_mean).toFixed(3)]);
      rows.push(["scale", doc.scale]);
    }
    const tbody = document.querySelector("#prediction tbody");
    tbody.replaceChildren(...rows.map(([k, v]) => {
      const tr = document.createElement("tr");
      for (const text of [k, v]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      return tr;
    }));
    show("prediction", true);
    statusLine.textContent = "Screened " + file.name + ".";
  } catch (err) {
    statusLine.className = "error";
    statusLine.textContent = "Could not screen " + file.name + ": " + err.message;
  }
});
</script>
</body>
</html>
"""


def upload_page() -> str:
    """The HTML of the upload page."""
    return _PAGE.replace("__DISCLAIMER__", html.escape(DISCLAIMER))
