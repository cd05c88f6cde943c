// Layouts: the same items on other grids (similarity, date columns, category
// blocks, a map, the user's own x/y). A switch keeps the selection, the filters
// and the search; the view flies to the selected item in the new layout.
// Block and column labels are OpenSeadragon overlays placed in image
// coordinates, their text sized to the block on screen.

const LABEL_MIN_PX = 9;
const LABEL_MAX_PX = 42;

export function layoutLabel(layout) {
  if (layout.kind === "similarity") return "Similarity";
  const [kind, column] = [layout.kind, layout.name.slice(layout.kind.length + 1)];
  const names = { date: "Date", category: "Category", geo: "Map", xy: "Own x/y" };
  return column ? `${names[kind] || kind}: ${column}` : names[kind] || kind;
}

export function setupLayouts(app) {
  const box = document.getElementById("layout-box");
  const select = document.getElementById("layout-select");
  box.hidden = app.layouts.length < 2;
  select.replaceChildren(...app.layouts.map((layout) => {
    const option = document.createElement("option");
    option.value = layout.name;
    option.textContent = layoutLabel(layout);
    return option;
  }));
  select.value = app.state.layout;
  select.addEventListener("change", () => {
    app.setLayout(select.value, { fly: true }).catch((error) => app.report(error));
  });
  const labels = new LabelOverlays(app.viewer);
  const show = () => {
    select.value = app.state.layout;
    labels.show(app.currentLayout(), app.tiledImage());
  };
  app.events.addEventListener("layout", show);
  show();
}

class LabelOverlays {
  constructor(viewer) {
    this.viewer = viewer;
    this.elements = [];
    const resize = () => this.resize();
    viewer.addHandler("update-viewport", resize); // after OpenSeadragon places the overlays
  }

  show(layout, tiledImage) {
    for (const element of this.elements) this.viewer.removeOverlay(element);
    this.elements = [];
    if (!tiledImage || !layout.labels) return;
    const size = layout.grid.cell_size;
    for (const label of layout.labels) {
      const element = document.createElement("div");
      element.className = "layout-label";
      element.textContent = label.text;
      element.title = `${label.text}: ${label.count} item(s)`;
      element.dataset.count = String(label.count);
      // A category's label sits on its block's top row; a date's under its column,
      // like an axis. Either is as wide as its block.
      const row = layout.kind === "date" ? label.row + label.n_rows : label.row;
      const rect = tiledImage.imageToViewportRectangle(
        label.col * size, row * size, label.n_cols * size, size);
      this.viewer.addOverlay({ element, location: rect });
      this.elements.push(element);
    }
    this.resize();
  }

  // Text as large as fits the block's width on screen, within bounds; a label
  // whose block is too small to read is hidden until the view zooms in.
  resize() {
    for (const element of this.elements) {
      const width = element.clientWidth || 0;
      const px = Math.min(LABEL_MAX_PX, width / (0.75 * Math.max(element.textContent.length, 3)));
      element.style.visibility = px < LABEL_MIN_PX ? "hidden" : "visible";
      element.style.fontSize = `${Math.max(px, LABEL_MIN_PX).toFixed(1)}px`;
    }
  }
}
