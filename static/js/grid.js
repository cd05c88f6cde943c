// Cell <-> item mapping from grid.i32, so clicks and markers need no round trip.

export class CellGrid {
  constructor(cells, nRows, nCols, cellSize, nItems) {
    if (cells.length !== nRows * nCols) {
      throw new Error(`grid.i32 has ${cells.length} cells, expected ${nRows} x ${nCols}`);
    }
    this.cells = cells;            // Int32Array, row-major: item id or -1
    this.nRows = nRows;
    this.nCols = nCols;
    this.cellSize = cellSize;
    this.cellOfItem = new Int32Array(nItems).fill(-1);
    for (let i = 0; i < cells.length; i++) {
      if (cells[i] >= 0) this.cellOfItem[cells[i]] = i;
    }
  }

  // Item id at image pixel (x, y), or -1.
  itemAtImagePoint(x, y) {
    const col = Math.floor(x / this.cellSize);
    const row = Math.floor(y / this.cellSize);
    if (row < 0 || col < 0 || row >= this.nRows || col >= this.nCols) return -1;
    return this.cells[row * this.nCols + col];
  }

  // {row, col} of an item, or null.
  position(id) {
    const cell = id >= 0 && id < this.cellOfItem.length ? this.cellOfItem[id] : -1;
    return cell < 0 ? null : { row: Math.floor(cell / this.nCols), col: cell % this.nCols };
  }

  // The item's cell in viewport coordinates, grown by `margin` cells on every side.
  viewportRect(tiledImage, id, margin = 0) {
    const pos = this.position(id);
    if (!pos) return null;
    const s = this.cellSize;
    return tiledImage.imageToViewportRectangle(
      (pos.col - margin) * s, (pos.row - margin) * s, (1 + 2 * margin) * s, (1 + 2 * margin) * s);
  }
}
