// "Find similar": an image file, picked with the button or dropped on the map, goes
// to the server, which embeds it as the pipeline embedded the collection (in the
// neighbour strip's embedding). Its nearest items show as a strip and as outlines on
// the map, and the view flies to the best match; Esc or "Clear" clears them. A
// published static site has no server to embed the image: for the `pixels` and `raw`
// embeddings the browser embeds it and searches the site's compact index
// (query_index.js, its answer shaped as the server's); without one the control is hidden.

import { similarInSite } from "./query_index.js";
import { renderStrip } from "./strip.js";

const K = 20;

export function setupSimilar(app) {
  const section = document.getElementById("similar-section");
  const input = document.getElementById("similar-file");
  const status = document.getElementById("similar-status");
  const clear = document.getElementById("similar-clear");
  const strip = document.getElementById("similar");
  const map = app.viewer.element;
  let token = 0;

  const inSite = app.collection.static?.query || []; // a published site's indexes
  section.hidden = !app.source.server && !inSite.length;
  if (section.hidden) return;
  const ask = (file) => (app.source.server ? app.source.similar(file, K, app.state.embedding)
    : similarInSite(app.source, inSite, file, K, app.state.embedding));

  function show(text, state) {
    status.textContent = text;
    status.dataset.state = state;
  }

  function reset() {
    ++token;
    show("", "");
    clear.hidden = true;
    strip.replaceChildren();
    delete strip.dataset.embedding;
    app.overlay.setFound([]);
  }

  async function find(file) {
    reset();
    const mine = token;
    clear.hidden = false;
    show(`Looking for images like ${file.name || "the image"}…`, "busy");
    let body;
    try {
      body = await ask(file);
    } catch (error) {
      if (mine === token) show(`Error: ${error.message}`, "error");
      return;
    }
    if (mine !== token) return;
    const found = body.neighbors;
    show(`${found.length} nearest to ${file.name || "the image"} by ${body.embedding}`, "done");
    strip.dataset.embedding = body.embedding;
    renderStrip(strip, found, (item) => app.select(item.id, { fly: true }),
      (item) => `${item.title || "item " + item.id} (distance ${item.distance.toFixed(3)})`);
    app.overlay.setFound(found.map((item) => item.id));
    if (found.length) app.flyTo(found[0].id);
  }

  input.addEventListener("change", () => {
    const [file] = input.files;
    input.value = ""; // the same file picked again is asked again
    if (file) find(file);
  });
  clear.addEventListener("click", reset);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !clear.hidden) reset();
  });

  // Dropping a file on the map: only drags that carry files are taken, so the
  // browser never opens the file in place of the viewer.
  const carriesFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
  map.addEventListener("dragover", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
    map.classList.add("drop-target");
  });
  map.addEventListener("dragleave", (event) => {
    if (!map.contains(event.relatedTarget)) map.classList.remove("drop-target");
  });
  map.addEventListener("drop", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    map.classList.remove("drop-target");
    const [file] = event.dataTransfer.files;
    if (file) find(file);
  });
}
