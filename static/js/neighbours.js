// Nearest neighbours of the selected item, per embedding: a thumbnail strip
// and outlines on the map. Clicking one flies there.

import { renderStrip } from "./strip.js";

const K = 20;

export function setupNeighbours(app) {
  const select = document.getElementById("neighbour-embedding");
  const strip = document.getElementById("neighbours");
  let token = 0;

  select.replaceChildren(...app.collection.embeddings.map((embedding) => {
    const option = document.createElement("option");
    option.value = embedding.name;
    option.textContent = `${embedding.name} (${embedding.kind})`;
    return option;
  }));
  select.value = app.state.embedding;
  select.addEventListener("change", () => app.setEmbedding(select.value));

  async function load() {
    const id = app.state.item;
    const mine = ++token;
    if (id < 0) {
      strip.replaceChildren();
      app.overlay.setMarkers([]);
      return;
    }
    select.value = app.state.embedding;
    let neighbors;
    try {
      neighbors = await app.source.neighbours(id, app.state.embedding, K);
    } catch (error) {
      app.report(error);
      return;
    }
    if (mine !== token) return;
    renderStrip(strip, neighbors, (item) => app.select(item.id, { fly: true }),
      (item) => `${item.title || "item " + item.id} (distance ${item.distance.toFixed(3)})`);
    app.overlay.setMarkers(neighbors.map((item) => item.id));
  }

  app.events.addEventListener("select", load);
  app.events.addEventListener("embedding", load);
}
