// Keyword search, facet chips with counts and numeric ranges. Matching cells
// stay bright (the overlay dims the rest); the first matches show as a strip.
// app.matchIds holds every match (null: no filter), announced by a "matches" event,
// for the selection on the map to combine with (AND).
// Filters are kept as URLSearchParams in the API's own names
// (q, <facet>=VALUE, <number>_min, <number>_max). "by meaning" (shown when the server
// holds a clip embedding for the collection) sends mode=meaning&text=... instead: the
// nearest pictures to the text, on its own (the API does not combine it with filters).

import { renderStrip } from "./strip.js";

const RESULTS = 48;
const MAX_CHIPS = 40;

export function setupSearch(app) {
  const form = document.getElementById("search-form");
  const input = document.getElementById("search-q");
  const meaning = document.getElementById("search-meaning");
  document.getElementById("search-meaning-box").hidden =
    !(app.source.server && app.collection.search_by_meaning);
  const facetBox = document.getElementById("facets");
  const rangeBox = document.getElementById("ranges");
  const count = document.getElementById("match-count");
  const clear = document.getElementById("search-clear");
  const results = document.getElementById("results");
  const controls = { facets: new Map(), ranges: new Map() };
  // A CSV column whose name the search API or the URL hash already uses (q, limit,
  // view, item...) is addressed as meta.<name>, which always means the column.
  const RESERVED = new Set(["q", "_searchmode", "limit", "offset", "ids", "n", "seed",
    "view", "item", "emb", "layout", "sel", "labels", "dups", "mode", "text"]);
  const byMeaning = (params) => params.get("mode") === "meaning";
  const param = (name) => (RESERVED.has(name) || name.startsWith("meta.") ? `meta.${name}` : name);
  let token = 0;

  app.filters = new URLSearchParams();
  app.matchIds = null;
  const announce = (ids) => {
    app.matchIds = ids;
    app.overlay.setMatches(ids);
    app.events.dispatchEvent(new CustomEvent("matches"));
  };

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (meaning.checked) {
      app.setFilters(text ? new URLSearchParams({ mode: "meaning", text }) : new URLSearchParams());
      return;
    }
    const next = byMeaning(app.filters) ? new URLSearchParams() : new URLSearchParams(app.filters);
    if (text) next.set("q", text); else next.delete("q");
    app.setFilters(next);
  });
  clear.addEventListener("click", () => app.setFilters(new URLSearchParams()));

  app.setFilters = async (params) => {
    app.filters = new URLSearchParams(params);
    syncControls();
    app.events.dispatchEvent(new CustomEvent("filters"));
    const mine = ++token;
    const active = [...app.filters.keys()].length > 0;
    clear.hidden = !active;
    if (!active) {
      announce(null);
      count.textContent = `${app.collection.n_items} items`;
      count.dataset.total = String(app.collection.n_items);
      results.replaceChildren();
      return;
    }
    count.textContent = "Searching…";
    let body;
    try {
      body = await app.source.search(app.filters, RESULTS);
    } catch (error) {
      if (mine === token) count.textContent = `Error: ${error.message}`;
      return;
    }
    if (mine !== token) return;
    announce(body.ids);
    count.textContent = byMeaning(app.filters)
      ? `${body.total} nearest in meaning to “${app.filters.get("text")}”`
      : `${body.total} of ${app.collection.n_items} match`;
    count.dataset.total = String(body.total);
    renderStrip(results, body.items, (item) => app.select(item.id, { fly: true }));
  };

  function syncControls() {
    meaning.checked = byMeaning(app.filters);
    input.value = (meaning.checked ? app.filters.get("text") : app.filters.get("q")) || "";
    for (const [name, widgets] of controls.facets) {
      const value = app.filters.get(param(name));
      for (const chip of widgets.chips) {
        chip.setAttribute("aria-pressed", String(chip.dataset.value === value));
      }
      if (widgets.select) widgets.select.value = value || "";
    }
    for (const [name, [low, high]] of controls.ranges) {
      low.value = app.filters.get(param(`${name}_min`)) || "";
      high.value = app.filters.get(param(`${name}_max`)) || "";
    }
  }

  function setParam(name, value) {
    const next = byMeaning(app.filters) ? new URLSearchParams() : new URLSearchParams(app.filters);
    if (value === "" || value === null) next.delete(name); else next.set(name, value);
    app.setFilters(next);
  }

  function renderFacet(facet) {
    const group = document.createElement("fieldset");
    group.className = "facet";
    const legend = document.createElement("legend");
    legend.textContent = facet.name;
    group.append(legend);
    const widgets = { chips: [], select: null };
    if (facet.values.length > MAX_CHIPS) {
      const select = document.createElement("select");
      select.name = facet.name;
      const any = new Option(`any ${facet.name}`, "");
      select.append(any, ...facet.values.map((v) => new Option(`${v.value} (${v.count})`, v.value)));
      select.addEventListener("change", () => setParam(param(facet.name), select.value));
      group.append(select);
      widgets.select = select;
    } else {
      for (const { value, count: n } of facet.values) {
        const chip = document.createElement("button");
        chip.type = "button";
        chip.className = "chip";
        chip.dataset.facet = facet.name;
        chip.dataset.value = value;
        chip.setAttribute("aria-pressed", "false");
        chip.textContent = `${value} (${n})`;
        chip.addEventListener("click", () => {
          const key = param(facet.name);
          setParam(key, app.filters.get(key) === value ? "" : value);
        });
        group.append(chip);
        widgets.chips.push(chip);
      }
    }
    controls.facets.set(facet.name, widgets);
    return group;
  }

  function renderRange(column) {
    const group = document.createElement("fieldset");
    group.className = "range";
    const legend = document.createElement("legend");
    legend.textContent = column.name;
    const inputs = ["min", "max"].map((bound) => {
      const field = document.createElement("input");
      field.type = "number";
      field.step = "any";
      field.name = param(`${column.name}_${bound}`);
      field.placeholder = column[bound] === null ? bound : `${bound} ${column[bound]}`;
      field.addEventListener("change", () => setParam(field.name, field.value));
      return field;
    });
    group.append(legend, inputs[0], document.createTextNode(" – "), inputs[1]);
    controls.ranges.set(column.name, inputs);
    return group;
  }

  return app.source.facets().then((body) => {
    facetBox.replaceChildren(...body.facets.map(renderFacet));
    rangeBox.replaceChildren(...body.numeric.map(renderRange));
    syncControls();
  });
}
