// The viewer page /c/<cid>: OpenSeadragon over the bundle's Deep Zoom tiles,
// with the features in the sibling modules. Shared state lives on `app`,
// which is handed to each feature; nothing is global.

import { apiRoot, getGrid, getJSON } from "./api.js";
import { CellGrid } from "./grid.js";
import { setupHash } from "./hash.js";
import { setupHotspots } from "./hotspots.js";
import { setupHover } from "./hover.js";
import { setupNeighbours } from "./neighbours.js";
import { MapOverlay } from "./overlay.js";
import { setupPanel } from "./panel.js";
import { setupPoster } from "./poster.js";
import { setupSample } from "./sample.js";
import { setupSearch } from "./search.js";

async function main() {
  const element = document.getElementById("viewer");
  const cid = decodeURIComponent(window.location.pathname.split("/").pop());
  const root = apiRoot(cid);
  const collection = await getJSON(root);
  document.title = `${collection.title} – mosaic`;
  document.getElementById("collection-title").textContent = collection.title;
  const { n_rows: nRows, n_cols: nCols, cell_size: cellSize } = collection.grid;
  const grid = new CellGrid(await getGrid(collection.grid_url), nRows, nCols, cellSize,
    collection.n_items);

  const viewer = OpenSeadragon({
    element,
    tileSources: collection.dzi,
    prefixUrl: "/static/openseadragon/images/",
    drawer: "canvas", // 2-D canvas works everywhere, GPU or not; the tiles are plain JPEGs
    showNavigator: true,
    navigatorPosition: "BOTTOM_LEFT",
    maxZoomPixelRatio: 4,
    visibilityRatio: 0.2,
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
  });

  const app = {
    viewer, collection, grid, root,
    overlay: new MapOverlay(viewer, grid),
    events: new EventTarget(),
    state: { item: -1, embedding: collection.embeddings[0]?.name ?? "" },
    filters: new URLSearchParams(),
    report(error) {
      console.warn(error); // eslint-disable-line no-console
    },
    tiledImage() {
      return viewer.world.getItemAt(0);
    },
    itemAtPixel(x, y) {
      const tiledImage = app.tiledImage();
      if (!tiledImage) return -1;
      const point = tiledImage.viewportToImageCoordinates(
        viewer.viewport.pointFromPixel(new OpenSeadragon.Point(x, y), true));
      return grid.itemAtImagePoint(point.x, point.y);
    },
    flyTo(id, margin = 3) {
      const rect = grid.viewportRect(app.tiledImage(), id, margin);
      if (rect) viewer.viewport.fitBounds(rect);
    },
    select(id, { fly = false } = {}) {
      const valid = Number.isInteger(id) && id >= 0 && id < collection.n_items;
      app.state.item = valid ? id : -1;
      element.dataset.selected = String(app.state.item);
      app.overlay.setSelected(app.state.item);
      if (valid && fly) app.flyTo(id);
      app.events.dispatchEvent(new CustomEvent("select", { detail: { id: app.state.item } }));
    },
    setEmbedding(name) {
      app.state.embedding = name;
      app.events.dispatchEvent(new CustomEvent("embedding"));
    },
  };

  viewer.addHandler("canvas-click", (event) => {
    if (!event.quick) return;
    app.select(app.itemAtPixel(event.position.x, event.position.y));
  });
  viewer.addHandler("open-failed", (event) => {
    document.getElementById("match-count").textContent = `Could not open the map: ${event.message}`;
  });

  await new Promise((resolve) => viewer.addOnceHandler("open", resolve));
  app.tiledImage().addHandler("fully-loaded-change", (event) => {
    element.dataset.fullyLoaded = String(event.fullyLoaded);
  });
  setupPanel(app);
  setupNeighbours(app);
  setupHotspots(app);
  setupHover(app);
  await setupSearch(app);
  setupPoster(app);
  setupSample(app);
  await setupHash(app);
  element.dataset.ready = "true";
}

main().catch((error) => {
  console.error(error); // eslint-disable-line no-console
  document.getElementById("match-count").textContent = `Error: ${error.message}`;
});
