// Where the viewer's data comes from: the server's JSON API (ServerSource) or the
// files of a published static site (StaticSource, written by mosaic/publish.py).
// Both have the same async methods, so every feature module works with either:
//   collection(), grid(url), item(id), titles(ids), neighbours(id, embedding, k),
//   rows(ids) -> [{id, title, thumbnail}],
//   search(filters, limit) -> {total, ids, items}, facets(), random(n, filters, seed),
//   exportCsv(filters, ids) -> {url} or {blob}, posterUrl(filters, format, title),
//   poster(filters, format, title, ids) -> Blob,
//   similar(file, k, embedding) -> {embedding, metric, method, k, neighbors}
//   regions(entry) -> {levels, regions}, regionOrder(entry) -> Int32Array (regions.js)
//   duplicates(entry) -> {threshold, groups: [{ids, largest}]} (duplicates.js)
// `ids` (optional) restricts an export or a poster to those items, AND the filters:
// the selection on the map (selection.js).
// `server` says whether a server stands behind the source: posters and query by
// example (similar) need one, so a StaticSource's posterUrl is null and its poster and
// similar reject.
// A page picks one with <meta name="mosaic-source" content="static"> (the published
// index.html); without it, the collection id is the last segment of the URL path.

import { apiRoot, getGrid, getJSON, postForm, postIds } from "./api.js";

export function pickSource(location = window.location) {
  const meta = document.querySelector('meta[name="mosaic-source"]');
  if (meta && meta.content === "static") return new StaticSource(new URL("data/", document.baseURI));
  return new ServerSource(decodeURIComponent(location.pathname.split("/").pop()));
}

export class ServerSource {
  constructor(cid) {
    this.root = apiRoot(cid);
    this.assets = "/static/";
    this.server = true; // posters, exports and query images are handled by the server
  }

  collection() { return getJSON(this.root); }

  grid(url) { return getGrid(url); }

  item(id) { return getJSON(`${this.root}/items/${id}`); }

  async titles(ids) {
    return Promise.all(ids.map(async (id) => (await this.item(id)).title));
  }

  // {id, title, thumbnail} per id: what a strip shows.
  async rows(ids) {
    return Promise.all(ids.map(async (id) => {
      const { title, thumbnail } = await this.item(id);
      return { id, title, thumbnail };
    }));
  }

  async neighbours(id, embedding, k) {
    const url = `${this.root}/items/${id}/neighbors?embedding=${encodeURIComponent(embedding)}&k=${k}`;
    return (await getJSON(url)).neighbors;
  }

  // The k items nearest to an image file (a File or Blob), which the server embeds as
  // the pipeline does (POST …/similar); an item's own file finds itself first.
  similar(file, k, embedding) {
    const form = new FormData();
    form.append("image", file, file.name || "query");
    form.append("k", String(k));
    if (embedding) form.append("embedding", embedding);
    return postForm(`${this.root}/similar`, form);
  }

  search(filters, limit) {
    return getJSON(`${this.root}/search?${filters}&limit=${limit}&ids=all`);
  }

  facets() { return getJSON(`${this.root}/facets`); }

  random(n, filters) {
    return getJSON(`${this.root}/random?n=${n}&${filters || ""}`);
  }

  // The matches as a link, or (given ids) those of them among `ids`, POSTed.
  async exportCsv(filters, ids = null) {
    const url = `${this.root}/export.csv?${filters}`;
    return ids ? { blob: await postIds(url, ids) } : { url };
  }

  regions(entry) { return getJSON(entry.url); }

  regionOrder(entry) { return getGrid(entry.order_url); }

  duplicates(entry) { return getJSON(entry.url); }

  posterUrl(filters, format, title) {
    const params = new URLSearchParams(filters);
    params.set("paper", "A4");
    params.set("dpi", "150");
    params.set("title", title);
    return `${this.root}/poster.${format}?${params}`;
  }

  poster(filters, format, title, ids) { return postIds(this.posterUrl(filters, format, title), ids); }
}

// The search parameters' rules, as mosaic/query.py reads them.
const RESERVED = new Set(["q", "_searchmode", "limit", "offset"]);
const META = "meta.";
const MAX_FETCHES = 4;

export class StaticSource {
  constructor(base) {
    this.base = base; // URL of the site's data/ folder
    this.assets = new URL("../static/", base).href;
    this.server = false;
    this.cache = new Map();
    this.inFlight = 0;
    this.waiting = [];
    this.info = null;
    this.index = null;
  }

  url(path) { return new URL(path, this.base).href; }

  fetchOnce(path, read) {
    if (!this.cache.has(path)) {
      const promise = this.limited(async () => {
        const response = await fetch(this.url(path));
        if (!response.ok) throw new Error(`${path}: ${response.status} ${response.statusText}`);
        return read(response);
      });
      promise.catch(() => this.cache.delete(path));
      this.cache.set(path, promise);
    }
    return this.cache.get(path);
  }

  // At most MAX_FETCHES requests in flight: `python -m http.server` listens with a
  // backlog of 5, and a connection past it waits for a SYN retry (1 s).
  async limited(task) {
    while (this.inFlight >= MAX_FETCHES) await new Promise((resolve) => this.waiting.push(resolve));
    this.inFlight += 1;
    try {
      return await task();
    } finally {
      this.inFlight -= 1;
      this.waiting.shift()?.();
    }
  }

  json(path) { return this.fetchOnce(path, (response) => response.json()); }

  bytes(path) { return this.fetchOnce(path, (response) => response.arrayBuffer()); }

  async collection() {
    const body = await this.json("collection.json");
    const info = structuredClone(body);
    info.dzi = this.url(body.dzi);
    info.grid_url = this.url(body.grid_url);
    for (const layout of info.layouts || []) {
      layout.dzi = this.url(layout.dzi);
      layout.grid_url = this.url(layout.grid_url);
    }
    if (info.regions) {
      info.regions.url = this.url(info.regions.url);
      info.regions.order_url = this.url(info.regions.order_url);
    }
    if (info.duplicates) info.duplicates.url = this.url(info.duplicates.url);
    this.info = info;
    return info;
  }

  grid(url) { return getGrid(url); }

  regions(entry) { return this.json(entry.url); }

  async regionOrder(entry) { return new Int32Array(await this.bytes(entry.order_url)); }

  duplicates(entry) { return this.json(entry.url); }

  async meta() { return this.info || this.collection(); }

  thumbnail(id) {
    return this.url(`thumbs/${Math.floor(id / this.info.static.thumb_folder)}/${id}.jpg`);
  }

  async item(id) {
    const { item_shard: size } = (await this.meta()).static;
    this.checkItem(id);
    const shard = Math.floor(id / size);
    const items = await this.json(`items/${shard}.json`);
    return { ...items[id - shard * size], thumbnail: this.thumbnail(id) };
  }

  checkItem(id) {
    if (!(Number.isInteger(id) && id >= 0 && id < this.info.n_items)) {
      throw new Error(`item ${id} not in collection ${this.info.id}`);
    }
  }

  async titles(ids) {
    const { title_shard: size } = (await this.meta()).static;
    return Promise.all(ids.map(async (id) => {
      this.checkItem(id);
      const shard = Math.floor(id / size);
      return (await this.json(`titles/${shard}.json`))[id - shard * size];
    }));
  }

  // {id, title, thumbnail} per id: what a strip shows.
  async rows(ids) {
    const titles = await this.titles(ids);
    return ids.map((id, i) => ({ id, title: titles[i], thumbnail: this.thumbnail(id) }));
  }

  async neighbours(id, embedding, k) {
    const info = await this.meta();
    this.checkItem(id);
    const e = info.embeddings.findIndex((entry) => entry.name === embedding);
    if (e < 0) throw new Error(`unknown embedding ${JSON.stringify(embedding)}`);
    const { knn_k: K, knn_shard: size } = info.static;
    const shard = Math.floor(id / size);
    const buffer = await this.bytes(`knn/${e}/${shard}.bin`);
    const n = buffer.byteLength / (8 * K);
    const row = id - shard * size;
    const ids = new Int32Array(buffer, 4 * row * K, K);
    const distances = new Float32Array(buffer, 4 * (n * K + row * K), K);
    const found = [];
    for (let i = 0; i < Math.min(k, K) && ids[i] >= 0; i++) found.push(i);
    const rows = await this.rows(found.map((i) => ids[i]));
    return rows.map((item, j) => ({ ...item, distance: distances[found[j]] }));
  }

  async facets() {
    const body = await this.json("facets.json");
    this.index = body.index;
    return { facets: body.facets, numeric: body.numeric };
  }

  // The parsed filters: {q, facets: Map, tags: Map, ranges: Map} (mosaic/query.py's rules).
  async parse(filters) {
    const body = await this.json("facets.json");
    const kinds = new Map();
    for (const facet of body.index.facets) kinds.set(facet.name, facet.kind);
    for (const column of body.numeric) kinds.set(column.name, "number");
    const query = { q: null, facets: new Map(), tags: new Map(), ranges: new Map() };
    const unknown = [];
    for (const name of new Set(filters.keys())) {
      const prefixed = name.startsWith(META);
      if (RESERVED.has(name) && !prefixed) continue;
      const column = prefixed ? name.slice(META.length) : name;
      const value = filters.get(name);
      if (kinds.get(column) === "facet") {
        if (value !== "") query.facets.set(column, value);
        continue;
      }
      if (kinds.get(column) === "tags") {
        const wanted = query.tags.get(column) || [];
        for (const tag of filters.getAll(name).map((v) => v.trim())) {
          if (tag !== "" && !wanted.includes(tag)) wanted.push(tag);
        }
        if (wanted.length) query.tags.set(column, wanted);
        continue;
      }
      const cut = column.lastIndexOf("_");
      const [base, bound] = [column.slice(0, cut), column.slice(cut + 1)];
      if (cut > 0 && kinds.get(base) === "number" && (bound === "min" || bound === "max")) {
        if (value.trim() !== "") {
          const number = Number(value);
          if (value.trim() === "" || !Number.isFinite(number)) {
            throw new Error(`${name} must be a finite number, not ${JSON.stringify(value)}`);
          }
          const pair = query.ranges.get(base) || [null, null];
          pair[bound === "min" ? 0 : 1] = number;
          query.ranges.set(base, pair);
        }
        continue;
      }
      unknown.push(name);
    }
    if (unknown.length) throw new Error(`unknown search parameter(s): ${unknown.sort().join(", ")}`);
    query.q = (filters.get("q") || "").trim() || null;
    return query;
  }

  // The ids (sorted Uint32Array) matching `filters`, or null when nothing is filtered.
  async matches(filters) {
    const query = await this.parse(filters);
    const { index } = await this.json("facets.json");
    const sets = [];
    for (const [name, value] of query.facets) sets.push(this.facetIds(index, name, value));
    for (const [name, values] of query.tags) {
      for (const value of values) sets.push(this.facetIds(index, name, value));
    }
    for (const [name, [low, high]] of query.ranges) sets.push(this.rangeIds(index, name, low, high));
    if (query.q) {
      for (const word of query.q.match(/\S+/g) || []) sets.push(this.wordIds(index, word));
    }
    if (!sets.length) return null;
    const lists = await Promise.all(sets);
    lists.sort((a, b) => a.length - b.length);
    return lists.reduce(intersect);
  }

  async facetIds(index, name, value) {
    const facet = index.facets.find((entry) => entry.name === name);
    const { facets } = await this.json("facets.json");
    const values = facets.find((entry) => entry.name === name).values;
    const v = values.findIndex((entry) => entry.value === value);
    if (v < 0) return new Uint32Array(0);
    return new Uint32Array(await this.bytes(`search/f${facet.position}/${v}.u32`));
  }

  async rangeIds(index, name, low, high) {
    const column = index.numeric.find((entry) => entry.name === name);
    const lo = low ?? -Infinity;
    const hi = high ?? Infinity;
    const wanted = column.chunks.map((chunk, k) => [chunk, k])
      .filter(([[first, last]]) => last >= lo && first <= hi);
    const parts = await Promise.all(wanted.map(async ([[, , n], k]) => {
      const buffer = await this.bytes(`search/n${column.position}/${k}.bin`);
      const values = new Float64Array(buffer, 0, n);
      const ids = new Uint32Array(buffer, 8 * n, n);
      const out = [];
      for (let i = 0; i < n; i++) if (values[i] >= lo && values[i] <= hi) out.push(ids[i]);
      return out;
    }));
    return Uint32Array.from(parts.flat()).sort();
  }

  // One word of q: FTS5's unicode61 tokens, all present (a trailing * makes the last a prefix).
  async wordIds(index, word) {
    const prefix = word.length > 1 && word.endsWith("*");
    const tokens = tokenize(prefix ? word.replace(/\*+$/, "") : word);
    if (!tokens.length) return new Uint32Array(0);
    const lists = await Promise.all(tokens.map((token, i) => this.termIds(
      index.text, token, prefix && i === tokens.length - 1)));
    lists.sort((a, b) => a.length - b.length);
    return lists.reduce(intersect);
  }

  async termIds(shards, token, prefix) {
    // Shards hold sorted terms; shard k starts at shards[k].
    let first = 0;
    while (first + 1 < shards.length && shards[first + 1] <= token) first++;
    let last = first;
    if (prefix) while (last + 1 < shards.length && shards[last + 1].startsWith(token)) last++;
    const lists = [];
    for (let k = first; k <= last; k++) {
      const buffer = await this.bytes(`search/t/${k}.bin`);
      const view = new DataView(buffer);
      const [count, headerLength] = [view.getUint32(0, true), view.getUint32(4, true)];
      const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, headerLength)));
      let offset = 8 + headerLength;
      for (let i = 0; i < count; i++) {
        const [term, n] = header[i];
        if (prefix ? term.startsWith(token) : term === token) {
          lists.push(new Uint32Array(buffer, offset, n));
        }
        offset += 4 * n;
      }
    }
    if (lists.length === 1) return lists[0];
    return Uint32Array.from(new Set(lists.flatMap((list) => [...list]))).sort();
  }

  async search(filters, limit) {
    const info = await this.meta();
    const ids = await this.matches(filters);
    const all = ids || { length: info.n_items, slice: (a, b) => range(a, Math.min(b, info.n_items)) };
    const page = Array.from(all.slice(0, limit));
    return { total: all.length, ids: ids ? Array.from(ids) : null, items: await this.rows(page) };
  }

  async random(n, filters, seed = Math.floor(Math.random() * 2 ** 31)) {
    const info = await this.meta();
    const ids = await this.matches(filters || new URLSearchParams());
    const total = ids ? ids.length : info.n_items;
    const next = mulberry32(seed);
    const chosen = new Set();
    const want = Math.min(n, total);
    while (chosen.size < want) chosen.add(Math.floor(next() * total));
    const picked = [...chosen].map((i) => (ids ? ids[i] : i));
    return { seed, total, items: await this.rows(picked) };
  }

  async exportCsv(filters, only = null) {
    const info = await this.meta();
    let ids = await this.matches(filters) || range(0, info.n_items);
    if (only) ids = intersect(Uint32Array.from(only).sort(), ids);
    const fields = info.export_fields;
    const lines = [fields.map(csvCell).join(",")];
    for (const id of ids) {
      const item = await this.item(id);
      const own = fields.filter((f) => !f.startsWith(META)).map((f) => item[f]);
      const csv = info.columns.map((c) => item.metadata[c.name]);
      lines.push([...own, ...csv].map(csvCell).join(","));
    }
    return { blob: new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv" }) };
  }

  posterUrl() { return null; }

  async poster() { throw new Error("posters need the mosaic server (`run.py serve`)"); }

  // Embedding a new image takes the pipeline's decoder: a static site has no server.
  async similar() {
    throw new Error("finding similar images needs the mosaic server (`run.py serve`)");
  }
}

// FTS5's unicode61 tokenizer: case folded, diacritics removed, split on anything
// that is not a letter, a number or a private-use character.
export function tokenize(text) {
  return text.normalize("NFD").replace(/\p{M}/gu, "").toLowerCase()
    .split(/[^\p{L}\p{N}\p{Co}]+/u).filter(Boolean);
}

function intersect(a, b) {
  const out = [];
  let j = 0;
  for (let i = 0; i < a.length; i++) {
    while (j < b.length && b[j] < a[i]) j++;
    if (j < b.length && b[j] === a[i]) out.push(a[i]);
  }
  return Uint32Array.from(out);
}

function range(start, stop) {
  return Array.from({ length: Math.max(0, stop - start) }, (_, i) => start + i);
}

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function csvCell(value) {
  if (value === null || value === undefined) return "";
  const text = String(value);
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}
