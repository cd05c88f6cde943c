// Query by example in a published static site: the image's vector computed here
// (query_vector.js) and searched in the compact index mosaic/publish.py writes for the
// `pixels` and `raw` embeddings (data/query/<e>.json, docs/publish.md): a PCA fitted at
// publish time and every item's projection quantised to int8, searched by brute force.
// The answer has the shape of the server's POST …/similar, so similar.js shows both
// the same way.

import { decodeFile, queryVector } from "./query_vector.js";

// Fetched once per page and embedding: {meta, mean, components, scales, codes, norms}.
const loaded = new WeakMap();

// The index of one data/query entry ({embedding, url}), read with `source`'s json() and
// bytes() (StaticSource's, relative to the site's data/).
export function loadIndex(source, entry) {
  let byUrl = loaded.get(source);
  if (!byUrl) loaded.set(source, byUrl = new Map());
  if (!byUrl.has(entry.url)) {
    const promise = readIndex(source, entry);
    promise.catch(() => byUrl.delete(entry.url));
    byUrl.set(entry.url, promise);
  }
  return byUrl.get(entry.url);
}

async function readIndex(source, entry) {
  const meta = await source.json(entry.url);
  const { dim, components: d, n_items: n } = meta.index;
  const [model, codesBuffer] = await Promise.all([
    source.bytes(meta.index.model), source.bytes(meta.index.codes)]);
  const floats = new Float32Array(model);
  const mean = floats.subarray(0, dim);
  const components = floats.subarray(dim, dim + d * dim);
  const scales = floats.subarray(dim + d * dim, dim + d * dim + d);
  const codes = new Int8Array(codesBuffer);
  if (codes.length !== n * d || floats.length !== dim + d * dim + d) {
    throw new Error(`${entry.url}: the index files do not match (republish the site)`);
  }
  // Each item's squared length in the projected space, once.
  const norms = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let sum = 0;
    for (let j = 0; j < d; j++) {
      const value = codes[i * d + j] * scales[j];
      sum += value * value;
    }
    norms[i] = sum;
  }
  for (const id of meta.index.removed) norms[id] = Infinity;
  return { meta, mean, components, scales, codes, norms };
}

// The k items nearest to `vector` (stored units, uint8): [{id, distance}], nearest first.
// The distance is the euclidean one in the projected space, in the embedding's units
// (times its scale, as the server's); every item is scored (d multiply-adds each).
export function searchIndex(index, vector, k) {
  const { meta, mean, components, scales, codes, norms } = index;
  const { dim, components: d, n_items: n } = meta.index;
  const weights = new Float64Array(d);
  let length = 0;
  for (let j = 0; j < d; j++) {
    let projected = 0;
    for (let x = 0; x < dim; x++) projected += (vector[x] - mean[x]) * components[j * dim + x];
    length += projected * projected;
    weights[j] = projected * scales[j];
  }
  // A sorted list of the best k (score = |item|^2 - 2 q.item), kept by insertion.
  const best = [];
  let worst = Infinity;
  for (let i = 0; i < n; i++) {
    let dot = 0;
    const row = i * d;
    for (let j = 0; j < d; j++) dot += weights[j] * codes[row + j];
    const score = norms[i] - 2 * dot;
    if (best.length === k && score >= worst) continue;
    let at = best.length;
    while (at > 0 && best[at - 1].score > score) at--;
    best.splice(at, 0, { id: i, score });
    if (best.length > k) best.pop();
    worst = best[best.length - 1].score;
  }
  const scale = meta.scale ?? 1;
  return best.map(({ id, score }) => ({ id, distance: Math.sqrt(Math.max(0, length + score)) * scale }));
}

// The entry of data/query for `embedding`, or the first there is.
export function queryEntry(entries, embedding) {
  return entries.find((entry) => entry.embedding === embedding) || entries[0] || null;
}

// A published site's answer to a query image, as the server's POST …/similar answers:
// {embedding, metric, method, k, neighbors: [{id, title, thumbnail, distance}]}.
export async function similarInSite(source, entries, file, k, embedding) {
  const entry = queryEntry(entries, embedding);
  if (!entry) throw new Error("this site has no index to find similar images in");
  const index = await loadIndex(source, entry);
  const image = await decodeFile(file, index.meta.decode);
  const vector = queryVector(image, index.meta.kind, index.meta.decode);
  const found = searchIndex(index, vector, k);
  const rows = await source.rows(found.map((item) => item.id));
  return {
    embedding: index.meta.embedding, metric: "euclidean", method: "pca-int8", k,
    neighbors: rows.map((row, i) => ({ ...row, distance: found[i].distance })),
  };
}
