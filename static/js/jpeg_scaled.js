// A JPEG decoded at 1/1, 1/2, 1/4 or 1/8 scale in the DCT domain, to the very bytes
// libjpeg-turbo gives with its defaults (the accurate integer IDCT, fancy upsampling):
// what Pillow's draft() + load() hands mosaic/pipeline/thumbnail.py
// (_small_jpeg_pixels). Each part follows the libjpeg-turbo function it names.
// Anything this does not reproduce exactly (arithmetic coding, 12-bit or lossless
// frames, CMYK/YCCK, sampling it does not handle, corrupt or truncated data, a
// progressive file libjpeg would block-smooth) gives null; the caller then falls back.
// No DOM: runs in browsers and in node (tests/js/jpeg_scaled_check.mjs).

// jutils.c jpeg_natural_order, padded with 16 entries of 63 as libjpeg pads it so that
// a corrupt run past the end lands on the last coefficient.
const NATURAL_ORDER = new Uint8Array([
  0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
  12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
  35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
  58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
  63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
]);

class JpegError extends Error {}

function fail(message) {
  throw new JpegError(message);
}

// jdhuff.c jpeg_make_d_derived_tbl: canonical codes -> maxcode / valoffset per length,
// plus a 9-bit lookahead table (length << 8 | symbol, 0 where the code is longer).
const LOOKAHEAD = 9;

function huffmanTable(counts, symbols, isDC) {
  const maxcode = new Int32Array(18);
  const valoffset = new Int32Array(17);
  const lookup = new Uint16Array(1 << LOOKAHEAD);
  let code = 0;
  let p = 0;
  for (let length = 1; length <= 16; length++) {
    valoffset[length] = p - code;
    for (let i = 0; i < counts[length - 1]; i++, p++, code++) {
      if (length <= LOOKAHEAD) {
        const shift = LOOKAHEAD - length;
        for (let fill = 0; fill < (1 << shift); fill++) {
          lookup[(code << shift) | fill] = (length << 8) | symbols[p];
        }
      }
    }
    maxcode[length] = counts[length - 1] ? code - 1 : -1;
    if (code >= (1 << length)) fail("bad Huffman table"); // no all-ones code
    code <<= 1;
  }
  maxcode[17] = 0x7fffffff;
  if (isDC && symbols.some((s) => s > 15)) fail("bad DC Huffman table");
  return { maxcode, valoffset, lookup, symbols };
}

// The entropy-coded bits of one scan (jdhuff.c jpeg_fill_bit_buffer): 0xFF 0x00 is a
// 0xFF byte; a marker ends the data. libjpeg pads with zeros past it and warns; here
// needing one of those bits is an error.
class BitReader {
  constructor(data, pos) {
    this.data = data;
    this.pos = pos;
    this.buffer = 0;
    this.count = 0;
    this.padding = 0; // zero bits in the buffer that are not data
  }

  fill() {
    const data = this.data;
    while (this.count <= 24) {
      let byte = 0;
      if (this.padding === 0 && this.pos < data.length) {
        byte = data[this.pos];
        if (byte === 0xff) {
          const next = this.pos + 1 < data.length ? data[this.pos + 1] : -1;
          if (next === 0) {
            this.pos += 2;
          } else {
            byte = 0;
            this.padding += 8;
          }
        } else {
          this.pos++;
        }
      } else {
        this.padding += 8;
      }
      this.buffer = (this.buffer << 8) | byte;
      this.count += 8;
    }
  }

  bits(n) {
    if (n === 0) return 0;
    if (this.count < n) this.fill();
    this.count -= n;
    if (this.count < this.padding) fail("premature end of data segment");
    return (this.buffer >>> this.count) & ((1 << n) - 1);
  }

  bit() {
    return this.bits(1);
  }

  // jdhuff.h HUFF_DECODE / jpeg_huff_decode
  decode(table) {
    if (this.count < 16) this.fill();
    const peek = (this.buffer >>> (this.count - LOOKAHEAD)) & ((1 << LOOKAHEAD) - 1);
    const entry = table.lookup[peek];
    if (entry) {
      this.count -= entry >> 8;
      if (this.count < this.padding) fail("premature end of data segment");
      return entry & 0xff;
    }
    let code = this.bits(LOOKAHEAD);
    let length = LOOKAHEAD;
    while (code > table.maxcode[length]) {
      if (length >= 16) fail("bad Huffman code");
      code = (code << 1) | this.bit();
      length++;
    }
    return table.symbols[code + table.valoffset[length]];
  }

  // HUFF_EXTEND: s bits of a signed magnitude
  receiveExtend(s) {
    if (s === 0) return 0;
    const value = this.bits(s);
    return value < (1 << (s - 1)) ? value - (1 << s) + 1 : value;
  }

  // jdhuff.c process_restart: drop the partial byte, read the expected RSTn.
  restart(expected) {
    this.buffer = 0;
    this.count = 0;
    this.padding = 0;
    const data = this.data;
    while (this.pos < data.length && data[this.pos] === 0xff &&
           data[this.pos + 1] === 0xff) this.pos++;
    if (data[this.pos] !== 0xff || data[this.pos + 1] !== 0xd0 + expected) {
      fail("missing restart marker");
    }
    this.pos += 2;
  }
}

// jdmaster.c prepare_range_limit_table as the IDCTs index it (x & RANGE_MASK): the low
// 10 bits as a signed value, plus CENTERJSAMPLE, clamped to 0..255.
const IDCT_LIMIT = new Uint8Array(1024);
for (let x = 0; x < 1024; x++) {
  const signed = x >= 512 ? x - 1024 : x;
  IDCT_LIMIT[x] = Math.min(255, Math.max(0, signed + 128));
}

// jdct.h DESCALE: a right shift rounded, on JLONG (64-bit) values (exact in doubles).
function descale(x, n) {
  return Math.floor((x + 2 ** (n - 1)) / 2 ** n);
}

function limit(x, n) {
  return IDCT_LIMIT[descale(x, n) & 1023];
}

const CONST_BITS = 13;
const PASS1_BITS = 2;
const workspace = new Int32Array(64);

// jidctint.c jpeg_idct_islow's 1-D pass, the same for its columns and its rows: eight
// inputs (dequantised coefficients, or the column pass's workspace) to eight outputs
// still scaled by 2^CONST_BITS, in `pass` in order 0..7. Doubles hold libjpeg's JLONG
// sums exactly here (well under 2^53).
const pass = new Float64Array(8);

function islowPass(x0, x1, x2, x3, x4, x5, x6, x7) {
  // Even part: the rotator is sqrt(2)*c(-6).
  const z1 = (x2 + x6) * 4433;
  const even2 = z1 + x6 * -15137;
  const even3 = z1 + x2 * 6270;
  const even0 = (x0 + x4) * 8192;
  const even1 = (x0 - x4) * 8192;
  const tmp10 = even0 + even3;
  const tmp13 = even0 - even3;
  const tmp11 = even1 + even2;
  const tmp12 = even1 - even2;
  // Odd part, per figure 8; the matrix is unitary and hence its transpose is its inverse.
  const z5 = (x7 + x3 + x5 + x1) * 9633;
  const a1 = (x7 + x1) * -7373;
  const a2 = (x5 + x3) * -20995;
  const a3 = (x7 + x3) * -16069 + z5;
  const a4 = (x5 + x1) * -3196 + z5;
  const tmp0 = x7 * 2446 + a1 + a3;
  const tmp1 = x5 * 16819 + a2 + a4;
  const tmp2 = x3 * 25172 + a2 + a3;
  const tmp3 = x1 * 12299 + a1 + a4;
  pass[0] = tmp10 + tmp3;
  pass[7] = tmp10 - tmp3;
  pass[1] = tmp11 + tmp2;
  pass[6] = tmp11 - tmp2;
  pass[2] = tmp12 + tmp1;
  pass[5] = tmp12 - tmp1;
  pass[3] = tmp13 + tmp0;
  pass[4] = tmp13 - tmp0;
}

// jidctint.c jpeg_idct_islow: 8x8 samples from one block.
function idctIslow(coef, q, out, offset, stride) {
  const ws = workspace;
  for (let c = 0; c < 8; c++) {
    if (coef[8 + c] === 0 && coef[16 + c] === 0 && coef[24 + c] === 0 && coef[32 + c] === 0 &&
        coef[40 + c] === 0 && coef[48 + c] === 0 && coef[56 + c] === 0) {
      const dc = (coef[c] * q[c]) * 4;
      for (let r = 0; r < 8; r++) ws[r * 8 + c] = dc;
      continue;
    }
    islowPass(coef[c] * q[c], coef[8 + c] * q[8 + c], coef[16 + c] * q[16 + c],
      coef[24 + c] * q[24 + c], coef[32 + c] * q[32 + c], coef[40 + c] * q[40 + c],
      coef[48 + c] * q[48 + c], coef[56 + c] * q[56 + c]);
    for (let r = 0; r < 8; r++) ws[r * 8 + c] = descale(pass[r], CONST_BITS - PASS1_BITS) | 0;
  }
  const n = CONST_BITS + PASS1_BITS + 3;
  for (let r = 0; r < 8; r++) {
    const w = r * 8;
    const o = offset + r * stride;
    islowPass(ws[w], ws[w + 1], ws[w + 2], ws[w + 3], ws[w + 4], ws[w + 5], ws[w + 6], ws[w + 7]);
    for (let i = 0; i < 8; i++) out[o + i] = limit(pass[i], n);
  }
}

// jidctred.c jpeg_idct_4x4: 4x4 samples from one block.
function idct4x4(coef, q, out, offset, stride) {
  const ws = workspace;
  for (let c = 0; c < 8; c++) {
    if (c === 4) continue; // the second pass does not use column 4
    if (coef[8 + c] === 0 && coef[16 + c] === 0 && coef[24 + c] === 0 &&
        coef[40 + c] === 0 && coef[48 + c] === 0 && coef[56 + c] === 0) {
      const dc = (coef[c] * q[c]) * 4;
      for (let r = 0; r < 4; r++) ws[r * 8 + c] = dc;
      continue;
    }
    let tmp0 = coef[c] * q[c] * 2 ** (CONST_BITS + 1);
    let tmp2 = coef[16 + c] * q[16 + c] * 15137 + coef[48 + c] * q[48 + c] * -6270;
    const tmp10 = tmp0 + tmp2;
    const tmp12 = tmp0 - tmp2;
    const z1 = coef[56 + c] * q[56 + c];
    const z2 = coef[40 + c] * q[40 + c];
    const z3 = coef[24 + c] * q[24 + c];
    const z4 = coef[8 + c] * q[8 + c];
    tmp0 = z1 * -1730 + z2 * 11893 + z3 * -17799 + z4 * 8697;
    tmp2 = z1 * -4176 + z2 * -4926 + z3 * 7373 + z4 * 20995;
    const n = CONST_BITS - PASS1_BITS + 1;
    ws[c] = descale(tmp10 + tmp2, n) | 0;
    ws[24 + c] = descale(tmp10 - tmp2, n) | 0;
    ws[8 + c] = descale(tmp12 + tmp0, n) | 0;
    ws[16 + c] = descale(tmp12 - tmp0, n) | 0;
  }
  const n = CONST_BITS + PASS1_BITS + 3 + 1;
  for (let r = 0; r < 4; r++) {
    const w = r * 8;
    const o = offset + r * stride;
    let tmp0 = ws[w] * 2 ** (CONST_BITS + 1);
    let tmp2 = ws[w + 2] * 15137 + ws[w + 6] * -6270;
    const tmp10 = tmp0 + tmp2;
    const tmp12 = tmp0 - tmp2;
    const z1 = ws[w + 7];
    const z2 = ws[w + 5];
    const z3 = ws[w + 3];
    const z4 = ws[w + 1];
    tmp0 = z1 * -1730 + z2 * 11893 + z3 * -17799 + z4 * 8697;
    tmp2 = z1 * -4176 + z2 * -4926 + z3 * 7373 + z4 * 20995;
    out[o] = limit(tmp10 + tmp2, n);
    out[o + 3] = limit(tmp10 - tmp2, n);
    out[o + 1] = limit(tmp12 + tmp0, n);
    out[o + 2] = limit(tmp12 - tmp0, n);
  }
}

// jidctred.c jpeg_idct_2x2: 2x2 samples from one block.
function idct2x2(coef, q, out, offset, stride) {
  const ws = workspace;
  for (let c = 0; c < 8; c++) {
    if (c === 2 || c === 4 || c === 6) continue;
    if (coef[8 + c] === 0 && coef[24 + c] === 0 && coef[40 + c] === 0 && coef[56 + c] === 0) {
      const dc = (coef[c] * q[c]) * 4;
      ws[c] = dc;
      ws[8 + c] = dc;
      continue;
    }
    const tmp10 = coef[c] * q[c] * 2 ** (CONST_BITS + 2);
    const tmp0 = coef[56 + c] * q[56 + c] * -5906 + coef[40 + c] * q[40 + c] * 6967 +
      coef[24 + c] * q[24 + c] * -10426 + coef[8 + c] * q[8 + c] * 29692;
    const n = CONST_BITS - PASS1_BITS + 2;
    ws[c] = descale(tmp10 + tmp0, n) | 0;
    ws[8 + c] = descale(tmp10 - tmp0, n) | 0;
  }
  const n = CONST_BITS + PASS1_BITS + 3 + 2;
  for (let r = 0; r < 2; r++) {
    const w = r * 8;
    const o = offset + r * stride;
    const tmp10 = ws[w] * 2 ** (CONST_BITS + 2);
    const tmp0 = ws[w + 7] * -5906 + ws[w + 5] * 6967 + ws[w + 3] * -10426 + ws[w + 1] * 29692;
    out[o] = limit(tmp10 + tmp0, n);
    out[o + 1] = limit(tmp10 - tmp0, n);
  }
}

// jidctred.c jpeg_idct_1x1: the DC term alone.
function idct1x1(coef, q, out, offset) {
  out[offset] = limit(coef[0] * q[0], 3);
}

const IDCT = { 1: idct1x1, 2: idct2x2, 4: idct4x4, 8: idctIslow };

// The markers up to the first scan and between scans, the scans themselves, and the
// blocks: {frame, components} with each component's samples at its DCT scale.
function decodeBlocks(data, shrink) {
  if (data.length < 4 || data[0] !== 0xff || data[1] !== 0xd8) fail("not a JPEG");
  const quant = [];
  const dcTables = [];
  const acTables = [];
  let frame = null;
  let restartInterval = 0;
  let jfif = false;
  let adobe = -1;
  let pos = 2;
  for (;;) {
    // jdmarker.c next_marker: skip anything up to 0xFF, then fill bytes
    while (pos < data.length && data[pos] !== 0xff) pos++;
    while (pos < data.length && data[pos] === 0xff) pos++;
    if (pos >= data.length) fail("no EOI");
    const marker = data[pos++];
    if (marker === 0xd9) break; // EOI
    if (marker >= 0xd0 && marker <= 0xd7) continue; // stray RSTn
    if (pos + 2 > data.length) fail("truncated marker");
    const length = (data[pos] << 8) | data[pos + 1];
    const end = pos + length;
    if (length < 2 || end > data.length) fail("truncated segment");
    const body = data.subarray(pos + 2, end);
    pos = end;
    if (marker === 0xdb) { // DQT
      for (let p = 0; p < body.length;) {
        const precision = body[p] >> 4;
        const id = body[p] & 15;
        if (id > 3 || precision > 1) fail("bad DQT");
        const size = precision ? 128 : 64;
        if (p + 1 + size > body.length) fail("bad DQT");
        // jddctmgr.c: ISLOW_MULT_TYPE is a 16-bit short, in natural order
        const table = new Int16Array(64);
        for (let k = 0; k < 64; k++) {
          table[NATURAL_ORDER[k]] = precision
            ? (body[p + 1 + 2 * k] << 8) | body[p + 2 + 2 * k] : body[p + 1 + k];
        }
        quant[id] = table;
        p += 1 + size;
      }
    } else if (marker === 0xc4) { // DHT
      for (let p = 0; p < body.length;) {
        const kind = body[p] >> 4;
        const id = body[p] & 15;
        if (kind > 1 || id > 3 || p + 17 > body.length) fail("bad DHT");
        const counts = body.subarray(p + 1, p + 17);
        let total = 0;
        for (const count of counts) total += count;
        if (total > 256 || p + 17 + total > body.length) fail("bad DHT");
        const symbols = body.slice(p + 17, p + 17 + total);
        (kind ? acTables : dcTables)[id] = huffmanTable(counts, symbols, kind === 0);
        p += 17 + total;
      }
    } else if (marker === 0xdd) { // DRI
      if (body.length < 2) fail("bad DRI");
      restartInterval = (body[0] << 8) | body[1];
    } else if (marker === 0xe0) { // APP0: jdmarker.c examine_app0
      if (body.length >= 14 && body[0] === 0x4a && body[1] === 0x46 && body[2] === 0x49 &&
          body[3] === 0x46 && body[4] === 0) jfif = true;
    } else if (marker === 0xee) { // APP14: jdmarker.c examine_app14
      if (body.length >= 12 && body[0] === 0x41 && body[1] === 0x64 && body[2] === 0x6f &&
          body[3] === 0x62 && body[4] === 0x65) adobe = body[11];
    } else if (marker === 0xc0 || marker === 0xc1 || marker === 0xc2) { // SOF0/1/2
      if (frame) fail("two frames");
      frame = readFrame(body, marker === 0xc2, shrink);
    } else if ((marker >= 0xc3 && marker <= 0xcf) || marker === 0xdc) {
      fail("unsupported frame type"); // lossless, hierarchical, arithmetic, DNL
    } else if (marker === 0xda) { // SOS
      if (!frame) fail("scan before frame");
      pos = decodeScan(data, pos, body, frame, quant, dcTables, acTables, restartInterval);
    } else if (!((marker >= 0xe0 && marker <= 0xef) || marker === 0xfe)) {
      fail("unexpected marker");
    }
  }
  if (!frame || frame.components.some((c) => !c.quant)) fail("a component without data");
  let colourTransform = false;
  if (frame.components.length === 3) {
    // jdapimin.c default_decompress_parms
    if (jfif) colourTransform = true;
    else if (adobe >= 0) colourTransform = adobe !== 0;
    else {
      const [a, b, c] = frame.components.map((component) => component.id);
      colourTransform = !(a === 82 && b === 71 && c === 66);
    }
  }
  if (frame.progressive) finishProgressive(frame);
  return { frame, colourTransform };
}

function readFrame(body, progressive, shrink) {
  if (body.length < 6 || body[0] !== 8) fail("not 8-bit");
  const height = (body[1] << 8) | body[2];
  const width = (body[3] << 8) | body[4];
  const count = body[5];
  // (a size given by DNL is not supported); jdinput.c initial_setup: JPEG_MAX_DIMENSION
  if (!width || !height || width > 65500 || height > 65500) fail("bad size");
  if (count !== 1 && count !== 3) fail("not grey or three components");
  if (body.length < 6 + count * 3) fail("bad SOF");
  const components = [];
  for (let i = 0; i < count; i++) {
    const at = 6 + i * 3;
    const h = body[at + 1] >> 4;
    const v = body[at + 1] & 15;
    if (h < 1 || h > 4 || v < 1 || v > 4) fail("bad sampling factors");
    components.push({ id: body[at], h, v, tq: body[at + 2] & 3, quant: null });
  }
  const maxH = Math.max(...components.map((c) => c.h));
  const maxV = Math.max(...components.map((c) => c.v));
  const mcusX = Math.ceil(width / (8 * maxH));
  const mcusY = Math.ceil(height / (8 * maxV));
  // jdmaster.c jpeg_core_output_dimensions + jpeg_calc_output_dimensions
  const minScale = 8 / shrink;
  for (const c of components) {
    let size = minScale;
    while (size < 8 && (maxH * minScale) % (c.h * size * 2) === 0 &&
           (maxV * minScale) % (c.v * size * 2) === 0) size *= 2;
    c.scale = size;
    c.blocksX = Math.ceil(Math.ceil((width * c.h) / maxH) / 8); // in its own scans
    c.blocksY = Math.ceil(Math.ceil((height * c.v) / maxV) / 8);
    c.stride = mcusX * c.h; // blocks per row, padded to whole MCUs
    c.rows = mcusY * c.v;
    c.sampleWidth = Math.ceil((width * c.h * size) / (maxH * 8)); // downsampled_width
    c.sampleHeight = Math.ceil((height * c.v * size) / (maxV * 8));
    c.samples = new Uint8Array(c.stride * size * c.rows * size);
    if (progressive) {
      c.coefficients = new Int16Array(c.stride * c.rows * 64);
      c.coefBits = new Int8Array(64).fill(-1); // jdinput.c coef_bits
    }
  }
  return { width, height, progressive, components, maxH, maxV, mcusX, mcusY, minScale };
}

// One scan (jdhuff.c decode_mcu for sequential frames, jdphuff.c for progressive ones);
// returns the position after its entropy-coded data.
function decodeScan(data, pos, body, frame, quant, dcTables, acTables, restartInterval) {
  const count = body[0];
  if (count < 1 || count > 4 || body.length < 4 + count * 2) fail("bad SOS");
  const scan = [];
  for (let i = 0; i < count; i++) {
    const component = frame.components.find((c) => c.id === body[1 + i * 2]);
    if (!component || scan.includes(component)) fail("bad SOS component");
    // jdinput.c latch_quant_tables: a component's table as of its first scan
    if (!component.quant) {
      if (!quant[component.tq]) fail("missing quantisation table");
      component.quant = quant[component.tq].slice();
    }
    scan.push({ component, index: i, dc: body[2 + i * 2] >> 4, ac: body[2 + i * 2] & 15 });
  }
  // jdinput.c per_scan_setup: D_MAX_BLOCKS_IN_MCU
  if (count > 1 && scan.reduce((n, { component }) => n + component.h * component.v, 0) > 10) {
    fail("MCU too large");
  }
  let at = 1 + count * 2;
  const ss = body[at];
  const se = body[at + 1];
  const ah = body[at + 2] >> 4;
  const al = body[at + 2] & 15;
  const reader = new BitReader(data, pos);
  const block = new Int16Array(64);
  let decodeBlock;
  if (!frame.progressive) {
    if (ss !== 0 || se !== 63 || ah !== 0 || al !== 0) fail("bad sequential scan");
    decodeBlock = (entry, c, row, col, state) => {
      block.fill(0);
      const dcTable = dcTables[entry.dc];
      const acTable = acTables[entry.ac];
      if (!dcTable || !acTable) fail("missing Huffman table");
      const s = reader.decode(dcTable);
      state.dc[entry.index] = (state.dc[entry.index] + reader.receiveExtend(s)) | 0;
      block[0] = state.dc[entry.index];
      for (let k = 1; k < 64; k++) {
        const rs = reader.decode(acTable);
        const r = rs >> 4;
        const size = rs & 15;
        if (size) {
          k += r;
          block[NATURAL_ORDER[k]] = reader.receiveExtend(size);
        } else {
          if (r !== 15) break;
          k += 15;
        }
      }
      const scale = c.scale;
      const width = c.stride * scale;
      IDCT[scale](block, c.quant, c.samples, row * scale * width + col * scale, width);
    };
  } else {
    decodeBlock = progressiveDecoder(scan, reader, ss, se, ah, al, dcTables, acTables);
  }
  const state = { dc: new Int32Array(count), eobrun: 0 };
  const single = count === 1;
  const mcusX = single ? scan[0].component.blocksX : frame.mcusX;
  const mcusY = single ? scan[0].component.blocksY : frame.mcusY;
  const total = mcusX * mcusY;
  let restarts = 0;
  for (let mcu = 0; mcu < total; mcu++) {
    if (restartInterval && mcu > 0 && mcu % restartInterval === 0) {
      reader.restart(restarts & 7);
      restarts++;
      state.dc.fill(0);
      state.eobrun = 0;
    }
    const mcuRow = Math.floor(mcu / mcusX);
    const mcuCol = mcu % mcusX;
    if (single) {
      decodeBlock(scan[0], scan[0].component, mcuRow, mcuCol, state);
      continue;
    }
    for (const entry of scan) {
      const c = entry.component;
      for (let y = 0; y < c.v; y++) {
        for (let x = 0; x < c.h; x++) {
          decodeBlock(entry, c, mcuRow * c.v + y, mcuCol * c.h + x, state);
        }
      }
    }
  }
  // the scan's data ends at the next marker that is not RSTn
  at = reader.pos;
  while (at + 1 < data.length &&
         !(data[at] === 0xff && data[at + 1] !== 0 && (data[at + 1] & 0xf8) !== 0xd0)) at++;
  return at;
}

// jdphuff.c: start_pass_phuff_decoder's checks, and the four kinds of scans.
function progressiveDecoder(scan, reader, ss, se, ah, al, dcTables, acTables) {
  const dcBand = ss === 0;
  if (dcBand ? se !== 0 : ss > se || se > 63 || scan.length !== 1) fail("bad progression");
  if ((ah !== 0 && al !== ah - 1) || al > 13) fail("bad progression");
  for (const { component } of scan) {
    const bits = component.coefBits;
    if (!dcBand && bits[0] < 0) fail("AC scan before DC"); // JWRN_BOGUS_PROGRESSION
    for (let k = ss; k <= se; k++) {
      if (ah !== Math.max(bits[k], 0)) fail("bogus progression");
      bits[k] = al;
    }
  }
  const p1 = 1 << al;
  const m1 = -1 << al;
  const coefAt = (c, row, col) => (row * c.stride + col) * 64;
  if (dcBand && ah === 0) { // decode_mcu_DC_first
    return (entry, c, row, col, state) => {
      const table = dcTables[entry.dc];
      if (!table) fail("missing Huffman table");
      const s = reader.decode(table);
      state.dc[entry.index] = (state.dc[entry.index] + reader.receiveExtend(s)) | 0;
      c.coefficients[coefAt(c, row, col)] = state.dc[entry.index] * p1;
    };
  }
  if (dcBand) { // decode_mcu_DC_refine
    return (entry, c, row, col) => {
      if (reader.bit()) c.coefficients[coefAt(c, row, col)] |= p1;
    };
  }
  const table = acTables[scan[0].ac];
  if (!table) fail("missing Huffman table");
  if (ah === 0) { // decode_mcu_AC_first
    return (entry, c, row, col, state) => {
      if (state.eobrun > 0) {
        state.eobrun--;
        return;
      }
      const coefficients = c.coefficients;
      const base = coefAt(c, row, col);
      for (let k = ss; k <= se; k++) {
        const rs = reader.decode(table);
        const r = rs >> 4;
        const s = rs & 15;
        if (s) {
          k += r;
          coefficients[base + NATURAL_ORDER[k]] = reader.receiveExtend(s) * p1;
        } else if (r === 15) {
          k += 15;
        } else {
          state.eobrun = (1 << r) + reader.bits(r) - 1;
          break;
        }
      }
    };
  }
  // decode_mcu_AC_refine
  return (entry, c, row, col, state) => {
    const coefficients = c.coefficients;
    const base = coefAt(c, row, col);
    const refine = (at) => {
      const value = coefficients[at];
      if (reader.bit() && (value & p1) === 0) coefficients[at] = value + (value >= 0 ? p1 : m1);
    };
    let k = ss;
    if (state.eobrun === 0) {
      for (; k <= se; k++) {
        const rs = reader.decode(table);
        let r = rs >> 4;
        let s = rs & 15;
        if (s) {
          if (s !== 1) fail("bad Huffman code"); // JWRN_HUFF_BAD_CODE
          s = reader.bit() ? p1 : m1;
        } else if (r !== 15) {
          state.eobrun = (1 << r) + reader.bits(r);
          break;
        }
        do {
          const at = base + NATURAL_ORDER[k];
          if (coefficients[at] !== 0) refine(at);
          else if (--r < 0) break;
          k++;
        } while (k <= se);
        if (s) coefficients[base + NATURAL_ORDER[k]] = s;
      }
    }
    if (state.eobrun > 0) {
      for (; k <= se; k++) {
        const at = base + NATURAL_ORDER[k];
        if (coefficients[at] !== 0) refine(at);
      }
      state.eobrun--;
    }
  };
}

// jdcoefct.c: a progressive frame's blocks to samples once all scans are in. libjpeg
// block-smooths (decompress_smooth_data) while any of the first ten coefficients
// is incomplete: not reproduced here.
function finishProgressive(frame) {
  for (const c of frame.components) {
    for (let k = 0; k < 10; k++) if (c.coefBits[k] !== 0) fail("incomplete progression");
    const idct = IDCT[c.scale];
    const width = c.stride * c.scale;
    for (let row = 0; row < c.rows; row++) {
      for (let col = 0; col < c.stride; col++) {
        const at = (row * c.stride + col) * 64;
        idct(c.coefficients.subarray(at, at + 64), c.quant, c.samples,
          row * c.scale * width + col * c.scale, width);
      }
    }
    c.coefficients = null;
  }
}

// jdsample.c: one component brought to the output size (outWidth x outHeight), by the
// method jinit_upsampler picks.
function upsample(c, frame, outWidth, outHeight) {
  const hIn = (c.h * c.scale) / frame.minScale;
  const vIn = (c.v * c.scale) / frame.minScale;
  const hOut = frame.maxH;
  const vOut = frame.maxV;
  const fancy = frame.minScale > 1; // do_fancy: not at 1/8
  const src = c.samples;
  const stride = c.stride * c.scale;
  const w = c.sampleWidth;
  const h = c.sampleHeight;
  const out = new Uint8Array(outWidth * outHeight);
  if (hIn === hOut && vIn === vOut) { // fullsize_upsample
    for (let y = 0; y < outHeight; y++) {
      out.set(src.subarray(y * stride, y * stride + outWidth), y * outWidth);
    }
  } else if (hIn * 2 === hOut && vIn === vOut && fancy && w > 2) { // h2v1_fancy_upsample
    for (let y = 0; y < outHeight; y++) {
      const row = y * stride;
      for (let x = 0; x < outWidth; x++) {
        const i = x >> 1;
        const near = src[row + i] * 3;
        out[y * outWidth + x] = x & 1
          ? (near + src[row + Math.min(i + 1, w - 1)] + 2) >> 2
          : (near + src[row + Math.max(i - 1, 0)] + 1) >> 2;
      }
    }
  } else if (hIn === hOut && vIn * 2 === vOut && fancy) { // h1v2_fancy_upsample
    for (let y = 0; y < outHeight; y++) {
      const i = y >> 1;
      const row = i * stride;
      const other = (y & 1 ? Math.min(i + 1, h - 1) : Math.max(i - 1, 0)) * stride;
      const bias = y & 1 ? 2 : 1;
      for (let x = 0; x < outWidth; x++) {
        out[y * outWidth + x] = (src[row + x] * 3 + src[other + x] + bias) >> 2;
      }
    }
  } else if (hIn * 2 === hOut && vIn * 2 === vOut && fancy && w > 2) { // h2v2_fancy_upsample
    const sums = new Int32Array(w);
    for (let y = 0; y < outHeight; y++) {
      const i = y >> 1;
      const row = i * stride;
      const other = (y & 1 ? Math.min(i + 1, h - 1) : Math.max(i - 1, 0)) * stride;
      for (let x = 0; x < w; x++) sums[x] = src[row + x] * 3 + src[other + x];
      for (let x = 0; x < outWidth; x++) {
        const j = x >> 1;
        out[y * outWidth + x] = x & 1
          ? (sums[j] * 3 + sums[Math.min(j + 1, w - 1)] + 7) >> 4
          : (sums[j] * 3 + sums[Math.max(j - 1, 0)] + 8) >> 4;
      }
    }
  } else if (hOut % hIn === 0 && vOut % vIn === 0) { // h2v1/h2v2/int_upsample: replicate
    const hExpand = hOut / hIn;
    const vExpand = vOut / vIn;
    for (let y = 0; y < outHeight; y++) {
      const row = Math.floor(y / vExpand) * stride;
      for (let x = 0; x < outWidth; x++) {
        out[y * outWidth + x] = src[row + Math.floor(x / hExpand)];
      }
    }
  } else {
    fail("fractional sampling"); // JERR_FRACT_SAMPLE_NOTIMPL
  }
  return out;
}

// jdcolor.c build_ycc_rgb_table: FIX() at SCALEBITS 16, ONE_HALF rounding.
const SCALEBITS = 16;
const ONE_HALF = 1 << (SCALEBITS - 1);
const fix = (x) => Math.trunc(x * (1 << SCALEBITS) + 0.5);
const CR_R = new Int32Array(256);
const CB_B = new Int32Array(256);
const CR_G = new Int32Array(256);
const CB_G = new Int32Array(256);
for (let i = 0; i < 256; i++) {
  const x = i - 128;
  CR_R[i] = (fix(1.402) * x + ONE_HALF) >> SCALEBITS;
  CB_B[i] = (fix(1.772) * x + ONE_HALF) >> SCALEBITS;
  CR_G[i] = -fix(0.71414) * x;
  CB_G[i] = -fix(0.34414) * x + ONE_HALF;
}

const clamp255 = (v) => (v < 0 ? 0 : v > 255 ? 255 : v);

// A JPEG decoded at 1/shrink scale (shrink 1, 2, 4 or 8) as Pillow's draft() + load()
// decodes it: {pixels (RGB, row-major; grey replicated), width, height} with
// width = ceil(W / shrink), height = ceil(H / shrink), and the stored size W x H as
// sourceWidth, sourceHeight; null where this decoder cannot promise libjpeg-turbo's
// very bytes.
export function decodeJpegScaled(bytes, shrink) {
  if (![1, 2, 4, 8].includes(shrink)) return null;
  let decoded;
  try {
    decoded = decodeBlocks(bytes, shrink);
  } catch (error) {
    // RangeError: buffers for a frame too large to allocate
    if (error instanceof JpegError || error instanceof RangeError) return null;
    throw error;
  }
  const { frame, colourTransform } = decoded;
  const width = Math.ceil(frame.width / shrink);
  const height = Math.ceil(frame.height / shrink);
  let planes;
  try {
    planes = frame.components.map((c) => upsample(c, frame, width, height));
  } catch (error) {
    if (error instanceof JpegError) return null;
    throw error;
  }
  const n = width * height;
  const pixels = new Uint8Array(n * 3);
  if (planes.length === 1) {
    const [grey] = planes;
    for (let i = 0; i < n; i++) pixels[i * 3] = pixels[i * 3 + 1] = pixels[i * 3 + 2] = grey[i];
  } else if (!colourTransform) { // jdcolor.c rgb_rgb_convert
    const [r, g, b] = planes;
    for (let i = 0; i < n; i++) {
      pixels[i * 3] = r[i];
      pixels[i * 3 + 1] = g[i];
      pixels[i * 3 + 2] = b[i];
    }
  } else { // jdcolor.c ycc_rgb_convert
    const [ys, cbs, crs] = planes;
    for (let i = 0; i < n; i++) {
      const y = ys[i];
      const cb = cbs[i];
      const cr = crs[i];
      pixels[i * 3] = clamp255(y + CR_R[cr]);
      pixels[i * 3 + 1] = clamp255(y + ((CB_G[cb] + CR_G[cr]) >> SCALEBITS));
      pixels[i * 3 + 2] = clamp255(y + CB_B[cb]);
    }
  }
  return { pixels, width, height, sourceWidth: frame.width, sourceHeight: frame.height };
}

// The EXIF orientation as Pillow's getexif().get(0x0112, 1) reads it from a JPEG's
// markers before its first scan: the "Exif\0\0" APP1 segments (joined, as Pillow joins
// them), IFD0 of their TIFF structure, a SHORT or LONG tag's first value; without the
// tag, XMP's tiff:Orientation, as Image.getexif reads it; 1 when there is neither.
// 0 where Pillow would fail or read something else (no II/MM header, a BigTIFF, another
// tag type): the caller treats it as it treats any orientation outside 1-8.
export function jpegOrientation(bytes) {
  let exif = null;
  let xmp = null;
  let pos = 2;
  while (pos + 4 <= bytes.length && bytes[pos] === 0xff) {
    const marker = bytes[pos + 1];
    if (marker === 0xff) {
      pos++;
      continue;
    }
    if (marker === 0xda || marker === 0xd9) break;
    const length = (bytes[pos + 2] << 8) | bytes[pos + 3];
    const body = bytes.subarray(pos + 4, Math.min(pos + 2 + length, bytes.length));
    if (marker === 0xe1 && startsWith(body, "Exif\0\0")) {
      exif = exif ? concat(exif, body.subarray(6)) : body;
    } else if (marker === 0xe1 && startsWith(body, "http://ns.adobe.com/xap/1.0/\0")) {
      xmp = body.subarray(29);
    }
    pos += 2 + length;
  }
  if (exif) {
    while (startsWith(exif, "Exif\0\0")) exif = exif.subarray(6);
    if (exif.length) {
      const found = ifd0Orientation(exif);
      if (found !== undefined) return found;
    }
  }
  if (xmp) {
    const match = /tiff:Orientation(="|>)([0-9])/.exec(latin1(xmp));
    if (match) return Number(match[2]);
  }
  return 1;
}

function startsWith(bytes, text) {
  if (bytes.length < text.length) return false;
  for (let i = 0; i < text.length; i++) if (bytes[i] !== text.charCodeAt(i)) return false;
  return true;
}

function concat(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

function latin1(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    text += String.fromCharCode(...bytes.subarray(i, i + 8192));
  }
  return text;
}

// TiffImagePlugin.ImageFileDirectory_v2: the header, then IFD0's entries until the
// data runs out; the orientation tag's value, 0 for one Pillow would not give as a
// number 1-8, undefined when IFD0 has no such tag.
function ifd0Orientation(tiff) {
  const head = latin1(tiff.subarray(0, 4));
  if (tiff.length < 8 || !["MM\0*", "II*\0", "MM*\0", "II\0*"].includes(head)) return 0;
  const little = head[0] === "I";
  const view = new DataView(tiff.buffer, tiff.byteOffset, tiff.byteLength);
  const u16 = (at) => view.getUint16(at, little);
  const u32 = (at) => view.getUint32(at, little);
  const start = u32(4);
  if (start + 2 > tiff.length) return undefined;
  let found;
  for (let i = 0, at = start + 2; i < u16(start) && at + 12 <= tiff.length; i++, at += 12) {
    if (u16(at) !== 0x0112) continue;
    const type = u16(at + 2);
    const count = u32(at + 4);
    if (count === 0) continue; // Pillow skips an empty tag
    if (type === 3) found = count * 2 > 4 ? 0 : u16(at + 8);
    else if (type === 4) found = count > 1 ? 0 : u32(at + 8);
    else found = 0;
  }
  return found;
}

// thumbnail._UPRIGHT: the stored picture made upright by its EXIF orientation, on RGB
// row-major pixels: {pixels, width, height}.
export function uprightRGB(pixels, width, height, orientation) {
  if (orientation === 1) return { pixels, width, height };
  const transposed = orientation >= 5;
  const outWidth = transposed ? height : width;
  const outHeight = transposed ? width : height;
  // where the output's (row, col) comes from, before any transpose: flip rows / columns
  const flipRows = [3, 4, 6, 7].includes(orientation);
  const flipCols = [2, 3, 7, 8].includes(orientation);
  const out = new Uint8Array(pixels.length);
  for (let row = 0; row < outHeight; row++) {
    for (let col = 0; col < outWidth; col++) {
      let y = transposed ? col : row;
      let x = transposed ? row : col;
      if (flipRows) y = height - 1 - y;
      if (flipCols) x = width - 1 - x;
      const from = (y * width + x) * 3;
      const to = (row * outWidth + col) * 3;
      out[to] = pixels[from];
      out[to + 1] = pixels[from + 1];
      out[to + 2] = pixels[from + 2];
    }
  }
  return { pixels: out, width: outWidth, height: outHeight };
}
