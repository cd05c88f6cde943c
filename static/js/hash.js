// URL state: layout, viewport, selected item, embedding, the selection on the map and
// filters live in the hash, e.g.
// #layout=date:year&view=0.42,0.37,8.5&item=12&emb=raw&sel=3.2,4,10.5,9.1&q=red&category=a,
// so a copied link reproduces the view. Filter keys are the search API's; `sel` is the
// selection's shape in map cells (shape.js: encodeShape), not a list of ids (or a
// region, r<id>, or a duplicate group, d<group>); `dups=on`: the Duplicates filter.

const VIEWER_KEYS = new Set(["view", "item", "emb", "layout", "sel", "labels", "dups"]);
const WRITE_DELAY_MS = 150;

export function setupHash(app) {
  const viewport = app.viewer.viewport;
  let timer = 0;

  function write() {
    const params = new URLSearchParams();
    if (app.state.layout !== app.layouts[0].name) params.set("layout", app.state.layout);
    const center = viewport.getCenter();
    const zoom = viewport.getZoom();
    params.set("view", [center.x, center.y, zoom].map((v) => Number(v.toPrecision(6))).join(","));
    if (app.state.item >= 0) params.set("item", String(app.state.item));
    if (app.state.embedding !== app.collection.embeddings[0]?.name) {
      params.set("emb", app.state.embedding);
    }
    const selection = app.selectionParam();
    if (selection) params.set("sel", selection);
    if (app.state.labels === false) params.set("labels", "off"); // region labels (regions.js)
    if (app.state.duplicates) params.set("dups", "on"); // the Duplicates filter (duplicates.js)
    for (const [key, value] of app.filters) params.append(key, value);
    const hash = `#${params}`;
    if (hash !== window.location.hash) history.replaceState(null, "", hash);
  }

  function scheduleWrite() {
    clearTimeout(timer);
    timer = setTimeout(write, WRITE_DELAY_MS);
  }

  async function apply() {
    const params = new URLSearchParams(window.location.hash.slice(1));
    const layout = params.get("layout") || app.layouts[0].name;
    if (layout !== app.state.layout && app.layouts.some((l) => l.name === layout)) {
      await app.setLayout(layout, { fly: false });
    }
    const filters = new URLSearchParams();
    for (const [key, value] of params) if (!VIEWER_KEYS.has(key)) filters.append(key, value);
    const embedding = params.get("emb");
    if (embedding && app.collection.embeddings.some((e) => e.name === embedding)) {
      app.state.embedding = embedding;
    }
    const item = Number.parseInt(params.get("item") ?? "", 10);
    app.select(Number.isInteger(item) ? item : -1, { fly: false });
    const view = (params.get("view") || "").split(",").map(Number);
    if (view.length === 3 && view.every(Number.isFinite) && view[2] > 0) {
      viewport.zoomTo(view[2], null, true);
      viewport.panTo(new OpenSeadragon.Point(view[0], view[1]), true);
    }
    app.setLabels?.(params.get("labels") !== "off");
    await app.setDuplicates?.(params.get("dups") === "on");
    await app.setSelectionParam(params.get("sel"));
    return app.setFilters(filters);
  }

  app.viewer.addHandler("animation-finish", scheduleWrite);
  for (const name of ["select", "filters", "embedding", "layout", "selection", "labels",
    "duplicates"]) {
    app.events.addEventListener(name, scheduleWrite);
  }
  window.addEventListener("hashchange", apply);
  return apply();
}
