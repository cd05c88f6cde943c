// Selection on the map: a rectangle (Shift+drag, or the Rectangle tool) or a lasso
// (Alt+drag, or the Lasso tool) drawn on the map selects the items whose cells' centres
// are inside it (shape.js), in the layout it was drawn on. The selection combines with
// the filters and the search (AND): its count, a strip of the first items, and "Export
// CSV" / "Download poster" of these items (export.js, poster.js, through
// app.selectionIds()). The shape, not an id list, is kept in the URL (`sel`, hash.js),
// so a link reproduces it; Esc or "Clear" clears it. While drawing, OpenSeadragon's drag
// (pan) is suppressed for that gesture (canvas-drag's preventDefaultAction); the wheel
// still zooms. A layout switch keeps the selected items; the shape shows on its own
// layout only. A click on a region's label (regions.js) selects that region's items
// the same way (kind "region", `sel=r<id>` in the URL), without a shape, and so does a
// click on a duplicate group (duplicates.js: kind "duplicates", `sel=d<group>`).

import { layoutLabel } from "./layouts.js";
import { decodeShape, encodeShape, idsInPolygon, lasso, polygonOf, rectangle } from "./shape.js";
import { renderStrip } from "./strip.js";

const STRIP = 48;
const MIN_STEP_PX = 2; // a lasso takes a point per 2 screen pixels moved
const SIMPLIFY_PX = 0.75; // ... and keeps within 0.75 px of the drawn path
const NAMES = { rect: "rectangle", lasso: "lasso", region: "region" };
const REGION_PARAM = /^r(\d+)$/;
const DUPLICATES_PARAM = /^d(\d+)$/;

const format = (n) => n.toLocaleString("en-US");

export function setupSelection(app) {
  const viewer = app.viewer;
  const element = viewer.element;
  const buttons = {
    rect: document.getElementById("select-rect"),
    lasso: document.getElementById("select-lasso"),
  };
  const count = document.getElementById("selection-count");
  const clear = document.getElementById("selection-clear");
  const strip = document.getElementById("selection-strip");
  const defaultLayout = app.layouts[0].name;
  let tool = null; // "rect", "lasso" or null: plain drags draw while a tool is on
  let drawing = null; // {kind, layout, points: [x, y, ...] in cells, last: pixel point}
  let swallow = false; // the rest of a drag whose drawing Esc cancelled
  let token = 0;
  let stripToken = 0;
  let matchMask = null; // Uint8Array over item ids: 1 where the filters match; null: no filter

  // {kind, coords, layout, ids: in the shape (reading order), combined: ids AND filters}
  app.selection = null;
  app.selectionIds = () => (app.selection ? app.selection.combined : null);
  app.selectionParam = () => {
    if (!app.selection) return null;
    if (app.selection.kind === "region") return `r${app.selection.region}`;
    if (app.selection.kind === "duplicates") return `d${app.selection.group}`;
    return encodeShape(app.selection, app.selection.layout, defaultLayout);
  };

  // The selection from the URL's `sel` (null or invalid: none); the same shape is kept.
  app.setSelectionParam = async (text) => {
    if ((text || null) === app.selectionParam()) return;
    let shape = decodeShape(text, defaultLayout);
    if (shape && !app.layouts.some((layout) => layout.name === shape.layout)) shape = null;
    try {
      const region = REGION_PARAM.exec(text || "");
      if (region && app.regionSelection) shape = await app.regionSelection(Number(region[1]));
      const group = DUPLICATES_PARAM.exec(text || "");
      if (group && app.duplicateSelection) {
        shape = await app.duplicateSelection(Number(group[1]));
      }
      await app.setSelection(shape);
    } catch (error) {
      app.report(error); // e.g. that layout's grid did not load: no selection
    }
  };

  // Select the items inside shape ({kind, coords, layout}), or none (null); a shape
  // with `ids` (a region: {kind, region, label, layout, ids}) selects those.
  app.setSelection = async (shape) => {
    const mine = ++token;
    if (!shape) {
      app.selection = null;
    } else if (shape.ids) {
      app.selection = { ...shape, combined: shape.ids };
    } else {
      const grid = await app.gridOf(app.layouts.find((layout) => layout.name === shape.layout));
      if (mine !== token) return;
      const ids = idsInPolygon(grid.cells, grid.nRows, grid.nCols, polygonOf(shape));
      app.selection = { kind: shape.kind, coords: shape.coords, layout: shape.layout, ids,
        combined: ids };
    }
    combine();
    app.overlay.setArea(app.selection ? app.selection.ids : null);
    showShape();
    render();
    app.events.dispatchEvent(new CustomEvent("selection"));
  };

  function combine() {
    const selection = app.selection;
    if (selection) {
      selection.combined = matchMask ? selection.ids.filter((id) => matchMask[id]) : selection.ids;
    }
    element.dataset.selectionCount = selection ? String(selection.combined.length) : "";
  }

  function showShape() {
    const selection = app.selection;
    app.overlay.setShape(selection && selection.coords && selection.layout === app.state.layout
      ? polygonOf(selection) : null);
  }

  async function render() {
    const selection = app.selection;
    const mine = ++stripToken;
    clear.hidden = !selection;
    const n = selection ? selection.combined.length : 0;
    const what = selection ? `the ${format(n)} selected item${n === 1 ? "" : "s"}` : "these items";
    for (const span of document.querySelectorAll(".these-items")) span.textContent = what;
    if (!selection) {
      count.textContent = "";
      delete count.dataset.total;
      delete count.dataset.inShape;
      strip.replaceChildren();
      strip.dataset.ready = "true";
      return;
    }
    const { combined, ids } = selection;
    count.dataset.total = String(combined.length);
    count.dataset.inShape = String(ids.length);
    let text = `${format(combined.length)} selected`;
    const where = selection.kind === "region" ? `region ${selection.label}`
      : selection.kind === "duplicates" ? selection.label : NAMES[selection.kind];
    if (app.matchIds) text += ` (of ${format(ids.length)} in the ${where})`;
    else if (selection.kind === "region") text += ` (the ${where})`;
    else if (!selection.coords) text += ` (${where})`;
    if (selection.layout !== app.state.layout) {
      const layout = app.layouts.find((entry) => entry.name === selection.layout);
      text += ` on ${layoutLabel(layout)}`;
    }
    count.textContent = text;
    strip.dataset.ready = "false";
    let rows;
    try {
      rows = await app.source.rows(Array.from(combined.subarray(0, STRIP)));
    } catch (error) {
      app.report(error);
      return;
    }
    if (mine !== stripToken) return;
    renderStrip(strip, rows, (item) => app.select(item.id, { fly: true }));
    strip.dataset.ready = "true";
  }

  app.events.addEventListener("matches", () => {
    matchMask = null;
    if (app.matchIds) {
      matchMask = new Uint8Array(app.collection.n_items);
      for (const id of app.matchIds) matchMask[id] = 1;
    }
    if (!app.selection) return;
    combine();
    render();
    app.events.dispatchEvent(new CustomEvent("selection"));
  });
  app.events.addEventListener("layout", () => {
    showShape();
    if (app.selection) render();
  });

  // Drawing. A point on the canvas (pixels) in the current layout's cell units.
  function toCells(position) {
    const point = app.tiledImage().viewportToImageCoordinates(
      viewer.viewport.pointFromPixel(position, true));
    return [point.x / app.grid.cellSize, point.y / app.grid.cellSize];
  }

  function preview(points, kind) {
    if (kind === "lasso") return points;
    const [ax, ay, bx, by] = points.length >= 4 ? points : [...points, ...points];
    return [ax, ay, bx, ay, bx, by, ax, by];
  }

  viewer.addHandler("canvas-press", (event) => {
    const keys = event.originalEvent || {};
    const kind = keys.altKey ? "lasso" : keys.shiftKey ? "rect" : tool;
    swallow = false;
    if (!kind || !app.tiledImage()) return;
    drawing = { kind, layout: app.state.layout, points: toCells(event.position),
      last: event.position };
  });
  viewer.addHandler("canvas-drag", (event) => {
    if (!drawing) {
      if (swallow) event.preventDefaultAction = true;
      return;
    }
    event.preventDefaultAction = true;
    const point = toCells(event.position);
    if (drawing.kind === "rect") {
      drawing.points = [drawing.points[0], drawing.points[1], ...point];
    } else if (Math.hypot(event.position.x - drawing.last.x,
      event.position.y - drawing.last.y) >= MIN_STEP_PX) {
      drawing.points.push(...point);
      drawing.last = event.position;
    }
    app.overlay.setShape(preview(drawing.points, drawing.kind));
  });
  viewer.addHandler("canvas-drag-end", (event) => {
    if (drawing || swallow) event.preventDefaultAction = true; // no flick
  });
  viewer.addHandler("canvas-release", (event) => {
    swallow = false;
    if (!drawing) return;
    const done = drawing;
    drawing = null;
    const [x, y] = toCells(event.position);
    let shape;
    if (done.kind === "rect") {
      shape = rectangle(done.points[0], done.points[1], x, y);
    } else {
      const [x0] = toCells(new OpenSeadragon.Point(0, 0));
      const [x1] = toCells(new OpenSeadragon.Point(1, 0));
      shape = lasso([...done.points, x, y], Math.max(0.05, SIMPLIFY_PX * Math.abs(x1 - x0)));
    }
    if (!shape || done.layout !== app.state.layout) {
      showShape(); // a click, or too thin to hold a cell: the selection stays as it was
      return;
    }
    app.setSelection({ ...shape, layout: done.layout }).catch((error) => app.report(error));
  });

  function setTool(next) {
    tool = next;
    for (const [name, button] of Object.entries(buttons)) {
      button.setAttribute("aria-pressed", String(tool === name));
    }
    element.classList.toggle("selecting", tool !== null);
  }
  for (const [name, button] of Object.entries(buttons)) {
    button.addEventListener("click", () => setTool(tool === name ? null : name));
  }
  clear.addEventListener("click", () => app.setSelection(null));

  // Esc: cancels a drawing; otherwise clears the selection and puts the tool down.
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      if (drawing) {
        drawing = null;
        swallow = true;
        showShape();
        return;
      }
      setTool(null);
      if (app.selection) app.setSelection(null);
      return;
    }
    element.classList.toggle("select-keys", event.shiftKey || event.altKey);
  });
  document.addEventListener("keyup", (event) => {
    element.classList.toggle("select-keys", event.shiftKey || event.altKey);
  });
  window.addEventListener("blur", () => element.classList.remove("select-keys"));
  render();
}
