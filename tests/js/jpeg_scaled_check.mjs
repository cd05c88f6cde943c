// tests/test_jpeg_scaled_js.py's node side: static/js/jpeg_scaled.js on the files a job
// (JSON, its path the first argument) names; the results as JSON on stdout.
//   decode: [{jpeg, shrink, expected}]: decodeJpegScaled(jpeg, shrink) against the raw
//     RGB bytes in `expected` (null: none to compare, e.g. for a file that must give null)
//   orientation: [jpeg]: jpegOrientation of each
//   upright: {raw, width, height}: uprightRGB of those RGB bytes for orientations 1-8
import { readFileSync } from "node:fs";
import { decodeJpegScaled, jpegOrientation, uprightRGB } from "../../static/js/jpeg_scaled.js";

const read = (path) => new Uint8Array(readFileSync(path));
const job = JSON.parse(readFileSync(process.argv[2], "utf8"));

const decode = job.decode.map(({ jpeg, shrink, expected }) => {
  const got = decodeJpegScaled(read(jpeg), shrink);
  if (got === null) return { jpeg, shrink, null: true };
  const result = { jpeg, shrink, null: false, width: got.width, height: got.height };
  if (expected) {
    const want = read(expected);
    let maxDifference = 0;
    let different = 0;
    const n = Math.min(want.length, got.pixels.length);
    for (let i = 0; i < n; i++) {
      const d = Math.abs(want[i] - got.pixels[i]);
      if (d) different++;
      if (d > maxDifference) maxDifference = d;
    }
    result.equal = want.length === got.pixels.length && different === 0;
    result.maxDifference = maxDifference;
    result.different = different;
  }
  return result;
});

const orientation = Object.fromEntries(
  job.orientation.map((jpeg) => [jpeg, jpegOrientation(read(jpeg))]));

const upright = {};
const { raw, width, height } = job.upright;
for (let o = 1; o <= 8; o++) {
  const turned = uprightRGB(read(raw), width, height, o);
  upright[o] = { width: turned.width, height: turned.height, pixels: Array.from(turned.pixels) };
}

process.stdout.write(JSON.stringify({ decode, orientation, upright }));
