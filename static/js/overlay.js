// A canvas over the OpenSeadragon canvas: dims cells that do not match the
// filters, outlines neighbours, the items most like a query image and the selected
// cell. The dimming mask is one pixel per grid cell, drawn scaled and clipped to
// the visible cells, so a redraw costs the same at 100 items or 1,000,000.

const DIM = [0, 0, 0, 190];
const MARKER = "#ffb000";
const FOUND = "#ff3df2";
const SELECTED = "#00e5ff";

export class MapOverlay {
  constructor(viewer, grid) {
    this.viewer = viewer;
    this.grid = grid;
    this.mask = null;
    this.matches = null;
    this.markers = [];
    this.found = [];
    this.selected = -1;
    this.frame = 0;
    this.canvas = document.createElement("canvas");
    this.canvas.className = "mosaic-overlay";
    viewer.canvas.appendChild(this.canvas);
    const redraw = () => this.requestDraw();
    for (const name of ["open", "update-viewport", "resize", "animation", "viewport-change"]) {
      viewer.addHandler(name, redraw);
    }
  }

  // Another layout's grid: the same matches, markers and selection, in its cells.
  setGrid(grid) {
    this.grid = grid;
    this.setMatches(this.matches);
  }

  // ids: the matching item ids, or null for "no filter".
  setMatches(ids) {
    this.matches = ids;
    if (ids === null) {
      this.mask = null;
    } else {
      const { nRows, nCols } = this.grid;
      const mask = document.createElement("canvas");
      mask.width = nCols;
      mask.height = nRows;
      const context = mask.getContext("2d");
      const pixels = context.createImageData(nCols, nRows);
      const data = pixels.data;
      for (let i = 0; i < nRows * nCols; i++) data.set(DIM, 4 * i);
      for (const id of ids) {
        const cell = this.grid.cellOfItem[id];
        if (cell >= 0) data[4 * cell + 3] = 0;
      }
      context.putImageData(pixels, 0, 0);
      this.mask = mask;
    }
    this.requestDraw();
  }

  setMarkers(ids) {
    this.markers = ids;
    this.requestDraw();
  }

  // The items most like a query image (similar.js), outlined apart from neighbours.
  setFound(ids) {
    this.found = ids;
    this.requestDraw();
  }

  setSelected(id) {
    this.selected = id;
    this.requestDraw();
  }

  requestDraw() {
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        this.draw();
      });
    }
  }

  // Element pixel position of image point (x, y), at the current animation frame.
  toScreen(tiledImage, x, y) {
    const point = tiledImage.imageToViewportCoordinates(x, y, true);
    return this.viewer.viewport.pixelFromPoint(point, true);
  }

  draw() {
    const ratio = window.devicePixelRatio || 1;
    const width = this.canvas.clientWidth;
    const height = this.canvas.clientHeight;
    if (this.canvas.width !== Math.round(width * ratio)) this.canvas.width = Math.round(width * ratio);
    if (this.canvas.height !== Math.round(height * ratio)) this.canvas.height = Math.round(height * ratio);
    const context = this.canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, width, height);
    const tiledImage = this.viewer.world.getItemAt(0);
    if (!tiledImage) return;
    const { nRows, nCols, cellSize } = this.grid;
    const origin = this.toScreen(tiledImage, 0, 0);
    const corner = this.toScreen(tiledImage, cellSize, cellSize);
    const cellW = corner.x - origin.x;
    const cellH = corner.y - origin.y;
    if (this.mask) {
      const clamp = (v, hi) => Math.max(0, Math.min(hi, v));
      const c0 = clamp(Math.floor(-origin.x / cellW), nCols);
      const c1 = clamp(Math.ceil((width - origin.x) / cellW), nCols);
      const r0 = clamp(Math.floor(-origin.y / cellH), nRows);
      const r1 = clamp(Math.ceil((height - origin.y) / cellH), nRows);
      if (c1 > c0 && r1 > r0) {
        context.imageSmoothingEnabled = false;
        context.drawImage(this.mask, c0, r0, c1 - c0, r1 - r0,
          origin.x + c0 * cellW, origin.y + r0 * cellH, (c1 - c0) * cellW, (r1 - r0) * cellH);
      }
    }
    const outline = (id, colour, lineWidth) => {
      const pos = this.grid.position(id);
      if (!pos) return;
      const size = Math.max(cellW, 8);
      const x = origin.x + (pos.col + 0.5) * cellW - size / 2;
      const y = origin.y + (pos.row + 0.5) * cellH - size / 2;
      if (x > width || y > height || x + size < 0 || y + size < 0) return;
      context.strokeStyle = colour;
      context.lineWidth = lineWidth;
      context.strokeRect(x, y, size, size);
    };
    for (const id of this.markers) outline(id, MARKER, 2);
    for (const id of this.found) outline(id, FOUND, 3);
    if (this.selected >= 0) outline(this.selected, SELECTED, 3);
  }
}
