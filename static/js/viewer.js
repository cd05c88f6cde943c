// The viewer page /c/<cid>: OpenSeadragon over the bundle's Deep Zoom tiles,
// with the features in the sibling modules. Shared state lives on `app`,
// which is handed to each feature; nothing is global.

import { setupDuplicates } from "./duplicates.js";
import { setupExport } from "./export.js";
import { CellGrid } from "./grid.js";
import { setupHash } from "./hash.js";
import { setupHotspots } from "./hotspots.js";
import { setupHover } from "./hover.js";
import { setupLayouts } from "./layouts.js";
import { setupNeighbours } from "./neighbours.js";
import { MapOverlay } from "./overlay.js";
import { setupPanel } from "./panel.js";
import { setupPoster } from "./poster.js";
import { setupRegions } from "./regions.js";
import { setupSample } from "./sample.js";
import { setupSearch } from "./search.js";
import { setupSelection } from "./selection.js";
import { setupSimilar } from "./similar.js";
import { pickSource } from "./source.js";

async function main() {
  const element = document.getElementById("viewer");
  const source = pickSource(); // the server's API, or a published site's files
  const root = source.root;
  const collection = await source.collection();
  document.title = `${collection.title} – mosaic`;
  document.getElementById("collection-title").textContent = collection.title;
  // Every layout of the bundle, similarity first (the server and a published site
  // list them all, an older bundle's one map included).
  const layouts = collection.layouts;
  const grids = new Map(); // layout name -> CellGrid, fetched on first use
  async function gridOf(layout) {
    if (!grids.has(layout.name)) {
      const { n_rows: nRows, n_cols: nCols, cell_size: cellSize } = layout.grid;
      grids.set(layout.name, new CellGrid(await source.grid(layout.grid_url), nRows, nCols,
        cellSize, collection.n_items));
    }
    return grids.get(layout.name);
  }
  const grid = await gridOf(layouts[0]);

  const viewer = OpenSeadragon({
    element,
    tileSources: layouts[0].dzi,
    prefixUrl: `${source.assets}openseadragon/images/`,
    drawer: "canvas", // 2-D canvas works everywhere, GPU or not; the tiles are plain JPEGs
    showNavigator: true,
    navigatorPosition: "BOTTOM_LEFT",
    maxZoomPixelRatio: 4,
    visibilityRatio: 0.2,
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
  });

  const app = {
    viewer, collection, grid, gridOf, root, source, layouts,
    overlay: new MapOverlay(viewer, grid),
    events: new EventTarget(),
    state: { item: -1, embedding: collection.embeddings[0]?.name ?? "", layout: layouts[0].name },
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
      return app.grid.itemAtImagePoint(point.x, point.y);
    },
    flyTo(id, margin = 3) {
      const rect = app.grid.viewportRect(app.tiledImage(), id, margin);
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
    currentLayout() {
      return layouts.find((layout) => layout.name === app.state.layout) || layouts[0];
    },
    // Show another layout: its tiles and grid; the selection, filters and search stay
    // (they are item ids), and the view flies to the selected item, if any.
    async setLayout(name, { fly = true } = {}) {
      const layout = layouts.find((candidate) => candidate.name === name);
      if (!layout || name === app.state.layout) return;
      const nextGrid = await gridOf(layout);
      const opened = new Promise((resolve, reject) => {
        viewer.addOnceHandler("open", resolve);
        viewer.addOnceHandler("open-failed", (event) => reject(new Error(event.message)));
      });
      viewer.open(layout.dzi);
      await opened;
      app.state.layout = name;
      app.grid = nextGrid;
      app.overlay.setGrid(nextGrid);
      watchLoading();
      if (fly && app.state.item >= 0) app.flyTo(app.state.item);
      app.events.dispatchEvent(new CustomEvent("layout"));
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
  function watchLoading() {
    element.dataset.fullyLoaded = "false";
    element.dataset.layout = app.state.layout;
    app.tiledImage().addHandler("fully-loaded-change", (event) => {
      element.dataset.fullyLoaded = String(event.fullyLoaded);
    });
  }
  watchLoading();
  setupPanel(app);
  setupNeighbours(app);
  setupHotspots(app);
  setupHover(app);
  await setupSearch(app);
  setupSelection(app);
  setupPoster(app);
  setupExport(app);
  setupSample(app);
  setupSimilar(app);
  setupLayouts(app);
  setupRegions(app);
  setupDuplicates(app);
  await setupHash(app);
  element.dataset.ready = "true";
}

main().catch((error) => {
  console.error(error); // eslint-disable-line no-console
  document.getElementById("match-count").textContent = `Error: ${error.message}`;
});
