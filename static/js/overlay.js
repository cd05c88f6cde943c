// A canvas over the OpenSeadragon canvas: dims cells that do not match the
// filters, lie outside the selection on the map or (with the Duplicates filter on) hold
// no duplicate, outlines neighbours, the items most like a query image, a duplicate
// group's members and the selected cell, and draws the selection's shape. The
// dimming mask is one pixel per grid cell, drawn scaled and clipped to the visible
// cells, so a redraw costs the same at 100 items or 1,000,000.

const DIM = 190; // the mask's alpha over a dimmed cell
const MARKER = "#ffb000";
const FOUND = "#ff3df2";
const SELECTED = "#00e5ff";
const SHAPE = "#ffffff";
const GROUP = "#76ff03";

// The mask's RGBA pixels, one per cell: clear where the cell's item is in every one of
// `sets` (arrays of item ids, each without repeats), DIM elsewhere. O(cells + ids).
export function maskPixels(grid, sets) {
  const { nRows, nCols, cellOfItem } = grid;
  const n = nRows * nCols;
  const hits = new Uint8Array(n);
  for (const ids of sets) {
    for (let i = 0; i < ids.length; i++) {
      const cell = cellOfItem[ids[i]];
      if (cell >= 0) hits[cell]++;
    }
  }
  const data = new Uint8ClampedArray(4 * n);
  const all = sets.length;
  for (let cell = 0; cell < n; cell++) if (hits[cell] !== all) data[4 * cell + 3] = DIM;
  return data;
}

export class MapOverlay {
  constructor(viewer, grid) {
    this.viewer = viewer;
    this.grid = grid;
    this.mask = null;
    this.matches = null;
    this.area = null;
    this.duplicates = null;
    this.shape = null;
    this.markers = [];
    this.found = [];
    this.group = [];
    this.largest = -1;
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

  // Another layout's grid: the same matches, selection, markers and item, in its cells.
  setGrid(grid) {
    this.grid = grid;
    this.updateMask();
  }

  // ids: the items matching the filters, or null for "no filter".
  setMatches(ids) {
    this.matches = ids;
    this.updateMask();
  }

  // ids: the items inside the selection on the map, or null for "no selection".
  setArea(ids) {
    this.area = ids;
    this.updateMask();
  }

  // ids: the items in a duplicate group (duplicates.js), or null for "filter off".
  setDuplicates(ids) {
    this.duplicates = ids;
    this.updateMask();
  }

  // A duplicate group's members, outlined (its largest copy thicker); [] for none.
  setGroup(ids, largest = -1) {
    this.group = ids;
    this.largest = largest;
    this.requestDraw();
  }

  // The selection's outline in this layout's cell units ([x1, y1, ...], closed), or null.
  setShape(polygon) {
    this.shape = polygon;
    this.requestDraw();
  }

  updateMask() {
    const sets = [this.matches, this.area, this.duplicates].filter((ids) => ids !== null);
    if (!sets.length) {
      this.mask = null;
    } else {
      const { nRows, nCols } = this.grid;
      const mask = document.createElement("canvas");
      mask.width = nCols;
      mask.height = nRows;
      const context = mask.getContext("2d");
      context.putImageData(new ImageData(maskPixels(this.grid, sets), nCols, nRows), 0, 0);
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
    if (this.shape && this.shape.length >= 4) {
      context.beginPath();
      for (let i = 0; i < this.shape.length; i += 2) {
        const x = origin.x + this.shape[i] * cellW;
        const y = origin.y + this.shape[i + 1] * cellH;
        if (i === 0) context.moveTo(x, y); else context.lineTo(x, y);
      }
      context.closePath();
      context.setLineDash([]);
      context.strokeStyle = "rgba(0, 0, 0, 0.8)";
      context.lineWidth = 4;
      context.stroke();
      context.setLineDash([6, 4]);
      context.strokeStyle = SHAPE;
      context.lineWidth = 2;
      context.stroke();
      context.setLineDash([]);
    }
    for (const id of this.markers) outline(id, MARKER, 2);
    for (const id of this.found) outline(id, FOUND, 3);
    for (const id of this.group) outline(id, GROUP, id === this.largest ? 5 : 3);
    if (this.selected >= 0) outline(this.selected, SELECTED, 3);
  }
}
