// Duplicates: the groups of exact and near duplicates the pipeline stored
// (duplicates.json, docs/bundle.md: resized, re-encoded, lightly cropped copies of one
// picture). "N duplicate groups" turns the filter on: the map dims every cell whose item
// is in no group, and the groups are listed, PAGE at a time, each as its members'
// thumbnails side by side, the largest (the copy to keep) marked. A click on a group
// selects its members (selection.js: kind "duplicates", `sel=d<group>` in the URL, ANDed
// with the search and filters, exported or printed like any selection), outlines them on
// the map and fits the view to them. `dups=on` in the URL keeps the filter on (hash.js).
// Items `run.py remove` took out after the pipeline (no cell on the map) leave their
// groups here, and a group left with one member is dropped.

const PAGE = 24;
const FIT_MARGIN = 2; // cells shown around a group's members when the view fits them

const format = (n) => n.toLocaleString("en-US");

export function setupDuplicates(app) {
  const entry = app.collection.duplicates;
  const section = document.getElementById("duplicates-section");
  const toggle = document.getElementById("duplicates-toggle");
  const status = document.getElementById("duplicates-status");
  const list = document.getElementById("duplicate-groups");
  const more = document.getElementById("duplicates-more");
  const element = app.viewer.element;
  app.state.duplicates = false;
  app.setDuplicates = async () => {};
  if (!entry || !entry.groups) {
    section.hidden = true;
    return;
  }
  section.hidden = false;
  let groups = null; // [{ids: Int32Array (ascending), largest: id or null}], numbered by index
  let members = null; // Int32Array: every item in a group
  let loading = null;
  let shown = 0; // groups listed so far
  let epoch = 0; // bumped when the filter turns on or off: late pages are dropped

  function describe(nGroups, nItems) {
    toggle.textContent = `${format(nGroups)} duplicate group${nGroups === 1 ? "" : "s"}`;
    toggle.dataset.groups = String(nGroups);
    toggle.title = `${format(nItems)} items have a copy of the same picture in the collection `
      + "(resized, re-encoded or lightly cropped): show only them, and list the groups";
  }
  describe(entry.groups, entry.items);

  // The stored groups, without items that have no cell on the map (removed since).
  function load() {
    if (!loading) {
      loading = (async () => {
        const [body, grid] = await Promise.all([app.source.duplicates(entry),
          app.gridOf(app.layouts[0])]);
        groups = [];
        for (const group of body.groups) {
          const ids = group.ids.filter((id) => grid.position(id) !== null);
          if (ids.length < 2) continue;
          groups.push({ ids: Int32Array.from(ids),
            largest: ids.includes(group.largest) ? group.largest : null });
        }
        members = Int32Array.from(groups.flatMap((group) => Array.from(group.ids)));
        describe(groups.length, members.length);
        return groups;
      })();
      loading.catch(() => { loading = null; });
    }
    return loading;
  }
  // A bundle that lost items after the pipeline: the stored counts still hold them.
  if (app.collection.counts?.removed) load().catch((error) => app.report(error));

  // {kind: "duplicates", group, label, layout, ids} for a group number (sel=d<group>).
  app.duplicateSelection = async (number) => {
    await load();
    const group = groups[number];
    if (!group) return null;
    return { kind: "duplicates", group: number, label: `duplicate group ${number + 1}`,
      layout: app.state.layout, ids: group.ids.slice() };
  };

  app.setDuplicates = async (on) => {
    on = Boolean(on);
    if (on === app.state.duplicates) return;
    app.state.duplicates = on;
    const mine = ++epoch;
    toggle.setAttribute("aria-pressed", String(on));
    element.dataset.duplicates = on ? "on" : "off";
    app.events.dispatchEvent(new CustomEvent("duplicates"));
    list.replaceChildren();
    list.hidden = true;
    list.dataset.ready = "false";
    more.hidden = true;
    shown = 0;
    delete status.dataset.total;
    if (!on) {
      status.textContent = "";
      app.overlay.setDuplicates(null);
      return;
    }
    status.textContent = "Loading the groups…";
    try {
      await load();
    } catch (error) {
      if (mine === epoch) status.textContent = `Error: ${error.message}`;
      return;
    }
    if (mine !== epoch) return;
    app.overlay.setDuplicates(members);
    status.textContent = `${format(members.length)} items in ${format(groups.length)} groups; `
      + "click one to select it";
    status.dataset.total = String(groups.length);
    list.hidden = false;
    await showMore(mine);
  };

  async function showMore(mine) {
    const page = groups.slice(shown, shown + PAGE);
    const first = shown;
    shown += page.length;
    more.hidden = true;
    list.dataset.ready = "false";
    let rows;
    try {
      rows = await app.source.rows(page.flatMap((group) => Array.from(group.ids)));
    } catch (error) {
      app.report(error);
      return;
    }
    if (mine !== epoch) return;
    const byId = new Map(rows.map((row) => [row.id, row]));
    list.append(...page.map((group, k) => groupItem(first + k, group, byId)));
    more.hidden = shown >= groups.length;
    list.dataset.ready = "true";
  }

  function chosen() {
    return app.selection && app.selection.kind === "duplicates" ? app.selection.group : -1;
  }

  function groupItem(number, group, byId) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "duplicate-group";
    button.dataset.group = String(number);
    button.setAttribute("aria-pressed", String(chosen() === number));
    button.title = `Group ${number + 1}: ${group.ids.length} copies; click to select them`;
    for (const id of group.ids) {
      const row = byId.get(id) || { id, title: "", thumbnail: "" };
      const image = document.createElement("img");
      image.src = row.thumbnail;
      image.alt = row.title || `item ${id}`;
      image.title = image.alt;
      image.loading = "lazy";
      image.dataset.id = String(id);
      if (id === group.largest) {
        image.className = "largest";
        image.dataset.largest = "true";
        image.title += " (the largest copy)";
      }
      button.append(image);
    }
    const size = document.createElement("span");
    size.className = "size";
    size.textContent = `×${group.ids.length}`;
    button.append(size);
    button.addEventListener("click", () => pick(number).catch((error) => app.report(error)));
    item.append(button);
    return item;
  }

  async function pick(number) {
    const selection = await app.duplicateSelection(number);
    if (!selection) return;
    await app.setSelection(selection);
    fit(selection.ids);
  }

  // The view over the members' cells in the current layout, FIT_MARGIN cells around.
  function fit(ids) {
    const tiledImage = app.tiledImage();
    let [r0, c0, r1, c1] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const id of ids) {
      const pos = app.grid.position(id);
      if (!pos) continue;
      [r0, c0] = [Math.min(r0, pos.row), Math.min(c0, pos.col)];
      [r1, c1] = [Math.max(r1, pos.row), Math.max(c1, pos.col)];
    }
    if (!tiledImage || r0 === Infinity) return;
    const size = app.grid.cellSize;
    app.viewer.viewport.fitBounds(tiledImage.imageToViewportRectangle(
      (c0 - FIT_MARGIN) * size, (r0 - FIT_MARGIN) * size,
      (c1 - c0 + 1 + 2 * FIT_MARGIN) * size, (r1 - r0 + 1 + 2 * FIT_MARGIN) * size));
  }

  // The selected group's members outlined (the largest thicker), its button pressed.
  app.events.addEventListener("selection", () => {
    const number = chosen();
    const group = number >= 0 && groups ? groups[number] : null;
    app.overlay.setGroup(group ? group.ids : [], group ? group.largest ?? -1 : -1);
    element.dataset.duplicateGroup = group ? String(number) : "";
    for (const button of list.querySelectorAll(".duplicate-group")) {
      button.setAttribute("aria-pressed", String(Number(button.dataset.group) === number));
    }
  });

  toggle.addEventListener("click", () => {
    app.setDuplicates(!app.state.duplicates).catch((error) => app.report(error));
  });
  more.addEventListener("click", () => showMore(epoch).catch((error) => app.report(error)));
}
