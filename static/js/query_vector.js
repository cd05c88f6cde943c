// A query image's vector for the `pixels` and `raw` embeddings, computed in the browser
// as mosaic/pipeline/thumbnail.py computes it (decode.embed_query): the same base
// picture, the same letterbox and the same area filter, rounded the same way. The
// resampler is Pillow's (its Resample.c: separable, horizontal pass first, 22-bit fixed
// point coefficients, each pass rounded to 8 bits), written out here rather than left to
// canvas drawImage, whose scaling is another filter.
//
// `params` is the `decode` part of a published site's data/query/<e>.json
// (mosaic/publish.py): cell_size, fit, background, box, side, direct_decode_pixels,
// max_pixels. Pixels are RGB, row-major, Uint8Array(width * height * 3).
//
// A JPEG that the pipeline decodes at 1/2, 1/4 or 1/8 scale in the DCT domain (Pillow's
// draft(), thumbnail._small_jpeg_pixels) is decoded here at that scale too, by
// jpeg_scaled.js, to the same bytes. Where the browser cannot follow exactly it comes
// close (docs/publish.md): such a JPEG that jpeg_scaled.js does not decode (CMYK,
// arithmetic coding, 12-bit, fractional sampling ratios, a damaged file) or that Python
// leaves to libvips is decoded whole and box-averaged to the same size; an image too
// large for libvips's whole decode (thumbnail() with its lanczos3 kernel) is
// box-averaged to the same thumbnail size.

import { decodeJpegScaled, jpegOrientation, uprightRGB } from "./jpeg_scaled.js";

const PRECISION_BITS = 32 - 8 - 2;
const MAX_FILE_BYTES = 64 * 1024 * 1024;
const MAX_BROWSER_PIXELS = 64 * 1024 * 1024; // RGBA at 4 bytes: 256 MB of canvas at most

// Pillow's filters: [support, weight(x)].
const BOX = [0.5, (x) => (x > -0.5 && x <= 0.5 ? 1 : 0)];
const BILINEAR = [1, (x) => {
  const a = Math.abs(x);
  return a < 1 ? 1 - a : 0;
}];

// Python's round() and numpy's rint: halves to even.
export function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function coefficients(inSize, outSize, [support0, filter]) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = support0 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const weights = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      weights[x] = filter((x + xmin - center + 0.5) / filterscale);
      ww += weights[x];
    }
    for (let x = 0; x < xmax; x++) {
      const k = ww !== 0 ? weights[x] / ww : weights[x];
      kk[xx * ksize + x] = Math.trunc((k < 0 ? -0.5 : 0.5) + k * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(value) {
  if (value >= (1 << PRECISION_BITS << 8)) return 255;
  if (value <= 0) return 0;
  return value >> PRECISION_BITS;
}

// One pass along x (step 3, the row's pixels) or y (step 3 * width): `lines` lines of
// `count` pixels each, from `input` to a new array.
function pass(input, width, height, outSize, horizontal, filter) {
  const inSize = horizontal ? width : height;
  const { ksize, bounds, kk } = coefficients(inSize, outSize, filter);
  const outWidth = horizontal ? outSize : width;
  const outHeight = horizontal ? height : outSize;
  const output = new Uint8Array(outWidth * outHeight * 3);
  const half = 1 << (PRECISION_BITS - 1);
  const step = horizontal ? 3 : 3 * width;
  for (let line = 0; line < (horizontal ? height : width); line++) {
    const inBase = horizontal ? line * width * 3 : line * 3;
    const outBase = horizontal ? line * outWidth * 3 : line * 3;
    const outStep = horizontal ? 3 : 3 * outWidth;
    for (let xx = 0; xx < outSize; xx++) {
      const xmin = bounds[xx * 2];
      const xmax = bounds[xx * 2 + 1];
      const k = xx * ksize;
      let r = half;
      let g = half;
      let b = half;
      for (let x = 0; x < xmax; x++) {
        const at = inBase + (x + xmin) * step;
        const w = kk[k + x];
        r += input[at] * w;
        g += input[at + 1] * w;
        b += input[at + 2] * w;
      }
      const to = outBase + xx * outStep;
      output[to] = clip8(r);
      output[to + 1] = clip8(g);
      output[to + 2] = clip8(b);
    }
  }
  return output;
}

// thumbnail.resample: area average (box filter) down, bilinear up; as Pillow's
// Image.resize, which skips a pass whose size does not change.
export function resample(pixels, width, height, outWidth, outHeight) {
  const down = outHeight <= height && outWidth <= width;
  const filter = down ? BOX : BILINEAR;
  let out = pixels;
  if (outWidth !== width) out = pass(out, width, height, outWidth, true, filter);
  if (outHeight !== height) out = pass(out, outWidth, height, outHeight, false, filter);
  return out === pixels ? pixels.slice() : out;
}

function crop(pixels, width, top, left, cropHeight, cropWidth) {
  const out = new Uint8Array(cropWidth * cropHeight * 3);
  for (let row = 0; row < cropHeight; row++) {
    const from = ((top + row) * width + left) * 3;
    out.set(pixels.subarray(from, from + cropWidth * 3), row * cropWidth * 3);
  }
  return out;
}

// thumbnail.square_array: letterboxed on the background (fit) or centre-cropped (fill).
export function squareArray(pixels, width, height, size, fit, background) {
  if (fit === "fill") {
    const side = Math.min(width, height);
    const square = crop(pixels, width, Math.floor((height - side) / 2),
      Math.floor((width - side) / 2), side, side);
    return resample(square, side, side, size, size);
  }
  const scale = size / Math.max(height, width);
  const newHeight = Math.min(size, Math.max(1, roundHalfEven(height * scale)));
  const newWidth = Math.min(size, Math.max(1, roundHalfEven(width * scale)));
  if (newHeight === size && newWidth === size) return resample(pixels, width, height, size, size);
  const square = new Uint8Array(size * size * 3);
  for (let i = 0; i < size * size; i++) square.set(background, i * 3);
  const small = resample(pixels, width, height, newWidth, newHeight);
  const top = Math.floor((size - newHeight) / 2);
  const left = Math.floor((size - newWidth) / 2);
  for (let row = 0; row < newHeight; row++) {
    square.set(small.subarray(row * newWidth * 3, (row + 1) * newWidth * 3),
      ((top + row) * size + left) * 3);
  }
  return square;
}

// thumbnail.flatten_alpha: RGBA on the background as libvips's flatten rounds 8-bit
// pixels, (value * alpha + background * (255 - alpha)) // 255.
export function flattenAlpha(rgba, background) {
  const n = rgba.length / 4;
  const rgb = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    const alpha = rgba[i * 4 + 3];
    for (let band = 0; band < 3; band++) {
      const value = rgba[i * 4 + band];
      rgb[i * 3 + band] = alpha === 255 ? value
        : Math.floor((value * alpha + background[band] * (255 - alpha)) / 255);
    }
  }
  return rgb;
}

// The largest JPEG load shrink libvips uses (thumbnail._jpeg_shrink): the side the cell
// is cut from stays at least `box`.
export function jpegShrink(width, height, box, fit) {
  const side = fit === "fit" ? Math.max(width, height) : Math.min(width, height);
  let shrink = 1;
  while (shrink < 8 && Math.floor(side / (shrink * 2)) >= box) shrink *= 2;
  return shrink;
}

// thumbnail._small_jpeg_pixels at a DCT scale: the JPEG decoded at 1/shrink, its
// partial last row and column dropped (floor(side / shrink)), made upright by its EXIF
// orientation; null where Python leaves the file to libvips (a side under `shrink`, an
// orientation outside 1-8, not RGB or grey) or jpeg_scaled.js cannot decode it.
function scaledJpeg(bytes, shrink) {
  const orientation = jpegOrientation(bytes);
  if (!(orientation >= 1 && orientation <= 8)) return null;
  const decoded = decodeJpegScaled(bytes, shrink);
  if (!decoded || Math.min(decoded.sourceWidth, decoded.sourceHeight) < shrink) return null;
  const keepW = Math.floor(decoded.sourceWidth / shrink);
  const keepH = Math.floor(decoded.sourceHeight / shrink);
  const kept = crop(decoded.pixels, decoded.width, 0, 0, keepH, keepW);
  return uprightRGB(kept, keepW, keepH, orientation);
}

// The picture libvips hands to the cell code (thumbnail._vips_pixels / the small PNG
// and JPEG paths): {pixels, width, height}.
export function basePicture(image, params) {
  const { pixels, width, height, jpeg } = image;
  const { box, fit } = params;
  const shrink = jpeg ? jpegShrink(width, height, box, fit) : 1;
  if (width * height <= params.direct_decode_pixels * shrink * shrink) {
    if (shrink === 1) return { pixels, width, height };
    const exact = image.bytes ? scaledJpeg(image.bytes, shrink) : null;
    if (exact) return exact;
    // libjpeg's scaled decode is ceil(side / shrink) pixels; libvips keeps the whole ones
    const w = Math.ceil(width / shrink);
    const h = Math.ceil(height / shrink);
    const [keepW, keepH] = [Math.floor(width / shrink), Math.floor(height / shrink)];
    return {
      pixels: crop(resample(pixels, width, height, w, h), w, 0, 0, keepH, keepW),
      width: keepW, height: keepH,
    };
  }
  // thumbnail(box, height=box): fit inside the box, or (fill) cover it and crop the centre
  const scale = fit === "fill" ? Math.max(box / width, box / height)
    : Math.min(box / width, box / height);
  const w = Math.max(1, Math.round(width * scale));
  const h = Math.max(1, Math.round(height * scale));
  const small = resample(pixels, width, height, w, h);
  if (fit !== "fill") return { pixels: small, width: w, height: h };
  const side = Math.min(box, w, h);
  return {
    pixels: crop(small, w, Math.floor((h - side) / 2), Math.floor((w - side) / 2), side, side),
    width: side, height: side,
  };
}

// The vector as the bundle stores it (uint8, side * side * 3): `pixels` is the picture
// squashed to the square (fit) or its centre square (fill); `raw` the cell shrunk.
export function queryVector(image, kind, params) {
  const base = basePicture(image, params);
  const { side, fit, background } = params;
  if (kind === "pixels") {
    return fit === "fit" ? resample(base.pixels, base.width, base.height, side, side)
      : squareArray(base.pixels, base.width, base.height, side, "fill", background);
  }
  if (kind !== "raw") throw new Error(`the ${kind} embedding cannot be computed in a browser`);
  const size = params.cell_size;
  const cell = squareArray(base.pixels, base.width, base.height, size, fit, background);
  if (size % side !== 0) return resample(cell, size, size, side, side); // libvips: lanczos3
  const block = size / side;
  const vector = new Uint8Array(side * side * 3);
  for (let row = 0; row < side; row++) {
    for (let col = 0; col < side; col++) {
      for (let band = 0; band < 3; band++) {
        let sum = 0;
        for (let y = 0; y < block; y++) {
          for (let x = 0; x < block; x++) {
            sum += cell[((row * block + y) * size + col * block + x) * 3 + band];
          }
        }
        vector[(row * side + col) * 3 + band] = Math.min(255, roundHalfEven(sum / (block * block)));
      }
    }
  }
  return vector;
}

// A file decoded upright (EXIF orientation applied), colours as stored (no colour
// management: libvips applies none to RGB), alpha flattened on the background:
// {pixels, width, height, jpeg, bytes}, with a JPEG's bytes for its scaled decode
// (basePicture). Errors say what is wrong with the file.
export async function decodeFile(file, params) {
  if (!file || !file.size) throw new Error("the file is empty");
  if (file.size > MAX_FILE_BYTES) {
    throw new Error(`the file is ${(file.size / 1e6).toFixed(1)} MB, over this page's limit of ` +
      `${MAX_FILE_BYTES / 1e6} MB`);
  }
  const head = new Uint8Array(await file.slice(0, 3).arrayBuffer());
  const jpeg = head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff;
  const bytes = jpeg ? new Uint8Array(await file.arrayBuffer()) : null;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, {
      imageOrientation: "from-image", premultiplyAlpha: "none", colorSpaceConversion: "none",
    });
  } catch {
    throw new Error(`${file.name || "the file"} is not an image this browser can decode`);
  }
  try {
    const { width, height } = bitmap;
    const limit = Math.min(params.max_pixels, MAX_BROWSER_PIXELS);
    if (width * height > limit) {
      throw new Error(`the image is ${width}x${height} = ${width * height} pixels, over the ` +
        `limit of ${limit}`);
    }
    const canvas = new OffscreenCanvas(width, height);
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(bitmap, 0, 0);
    const rgba = context.getImageData(0, 0, width, height, { colorSpace: "srgb" }).data;
    return { pixels: flattenAlpha(rgba, params.background), width, height, jpeg, bytes };
  } finally {
    bitmap.close();
  }
}
