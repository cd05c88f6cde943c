// Labelled regions on the similarity map (the pipeline's regions.json, docs/bundle.md):
// the level that fits the zoom is shown (the finest whose typical region is at least
// MIN_REGION_PX wide on screen; level 1 when zoomed out), each region's label centred
// on the top edge of its anchor cell (so cell centres stay clickable once cells are
// taller than a label), largest regions first, a label skipped where it would overlap
// one already placed. Regions without a label (no metadata, or no distinctive term) show
// nothing. A click on a label selects the region's items (selection.js: ANDed with the
// search and filters); "Region labels" hides them (`labels=off` in the URL, hash.js).
// Other layouts have no region labels: the regions are areas of the similarity map.

const MIN_REGION_PX = 140;
const MAX_CANDIDATES = 400; // labels measured per frame, largest visible regions first
const GAP_PX = 4;

export function setupRegions(app) {
  const entry = app.collection.regions;
  const box = document.getElementById("regions-box");
  const toggle = document.getElementById("regions-toggle");
  const element = app.viewer.element;
  const labelled = Boolean(entry && entry.labelled);
  let frame = 0;
  app.state.labels = true;
  app.setLabels = (on) => {
    app.state.labels = on;
    toggle.setAttribute("aria-pressed", String(on));
    if (labelled) schedule(); // nothing to draw (and no layer) without labels
    app.events.dispatchEvent(new CustomEvent("labels"));
  };
  if (!labelled) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  const layer = document.createElement("div");
  layer.className = "region-labels";
  element.append(layer);
  const labels = new Map(); // region id -> its label element
  let regions = null; // regions.json's list, by id
  let order = null; // Promise of the Int32Array of item ids, region by region

  app.source.regions(entry).then((body) => {
    regions = body.regions;
    schedule();
  }).catch((error) => app.report(error));

  // {kind: "region", region, label, layout, ids} for a region id (the URL's sel=r<id>).
  app.regionSelection = async (id) => {
    if (!regions) regions = (await app.source.regions(entry)).regions;
    const region = regions[id];
    if (!region) return null;
    order = order || app.source.regionOrder(entry);
    const ids = (await order).slice(region.start, region.end).sort();
    return { kind: "region", region: id, label: region.label ?? `#${id}`,
      layout: app.layouts[0].name, ids };
  };

  function schedule() {
    if (!frame) frame = requestAnimationFrame(() => { frame = 0; draw(); });
  }

  function level(cellPx) {
    let fits = 1;
    entry.levels.forEach((count, index) => {
      if (Math.sqrt(app.collection.n_items / count) * cellPx >= MIN_REGION_PX) fits = index + 1;
    });
    return fits;
  }

  function draw() {
    const tiledImage = app.tiledImage();
    const show = app.state.labels && regions && tiledImage
      && app.state.layout === app.layouts[0].name;
    layer.hidden = !show;
    element.dataset.regionLevel = "";
    if (!show) return;
    const size = app.grid.cellSize;
    const origin = tiledImage.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    const step = tiledImage.imageToViewerElementCoordinates(new OpenSeadragon.Point(size, size));
    const cellPx = step.x - origin.x;
    const at = level(cellPx);
    const width = element.clientWidth;
    const height = element.clientHeight;
    const candidates = regions.filter((region) => region.label !== null
      && region.levels[0] <= at && at <= region.levels[1]).map((region) => ({
      region,
      x: origin.x + (region.col + 0.5) * cellPx,
      y: origin.y + region.row * cellPx, // on the anchor cell's top edge (see above)
    })).filter(({ x, y }) => x >= 0 && y >= 0 && x <= width && y <= height)
      .sort((a, b) => b.region.size - a.region.size || a.region.id - b.region.id)
      .slice(0, MAX_CANDIDATES);
    const placed = [];
    const shown = new Set();
    for (const { region, x, y } of candidates) {
      const label = labelOf(region);
      if (!label.isConnected) layer.append(label);
      const w = label.offsetWidth;
      const h = label.offsetHeight;
      const rect = { left: x - w / 2, top: y - h / 2, right: x + w / 2, bottom: y + h / 2 };
      if (placed.some((other) => rect.left < other.right + GAP_PX
        && other.left < rect.right + GAP_PX && rect.top < other.bottom + GAP_PX
        && other.top < rect.bottom + GAP_PX)) continue;
      placed.push(rect);
      shown.add(region.id);
      label.style.transform = `translate(${Math.round(rect.left)}px, ${Math.round(rect.top)}px)`;
    }
    for (const [id, label] of labels) label.hidden = !shown.has(id);
    element.dataset.regionLevel = String(at);
  }

  function labelOf(region) {
    let label = labels.get(region.id);
    if (!label) {
      label = document.createElement("button");
      label.type = "button";
      label.className = "region-label";
      label.dataset.region = String(region.id);
      label.dataset.level = String(region.level);
      label.textContent = region.label;
      const terms = region.terms.map((term) => term.text).join(", ");
      label.title = `${region.label}: ${region.size.toLocaleString("en-US")} items`
        + `${terms ? ` (${terms})` : ""}; click to select them`;
      label.addEventListener("click", async () => {
        try {
          await app.setSelection(await app.regionSelection(region.id));
        } catch (error) {
          app.report(error);
        }
      });
      labels.set(region.id, label);
    }
    label.hidden = false;
    return label;
  }

  toggle.addEventListener("click", () => app.setLabels(!app.state.labels));
  for (const name of ["update-viewport", "resize", "open"]) app.viewer.addHandler(name, schedule);
  app.events.addEventListener("layout", schedule);
  schedule();
}
