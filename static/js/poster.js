// "Download poster": the current filter (or the whole map) as an A4 poster,
// rendered by the server; with a selection on the map, the selected items among the
// matches (their ids are POSTed). Bigger posters are for `python run.py poster`. A
// published static site has no server to render one: the control is hidden there.

import { saveBlob } from "./export.js";

export function setupPoster(app) {
  const link = document.getElementById("poster-link");
  const format = document.getElementById("poster-format");
  if (!app.source.server) {
    link.closest("p").hidden = true;
    return;
  }
  let busy = false;
  const selected = () => (app.selectionIds ? app.selectionIds() : null);
  const update = () => {
    const ids = selected();
    link.download = `${app.collection.id}-poster.${format.value}`;
    if (ids) {
      link.href = "#"; // the click POSTs the ids
      link.setAttribute("aria-disabled", String(ids.length === 0)); // nothing to show
    } else {
      link.href = app.source.posterUrl(app.filters, format.value, app.collection.title);
      link.removeAttribute("aria-disabled");
    }
  };
  link.addEventListener("click", async (event) => {
    const ids = selected();
    if (!ids) return; // the link downloads as it is
    event.preventDefault();
    if (busy || !ids.length) return;
    busy = true;
    link.dataset.state = "busy";
    try {
      const blob = await app.source.poster(app.filters, format.value, app.collection.title, ids);
      saveBlob(blob, link.download);
      link.dataset.state = "done";
    } catch (error) {
      link.dataset.state = "error";
      app.report(error);
    } finally {
      busy = false;
    }
  });
  format.addEventListener("change", update);
  for (const name of ["filters", "selection"]) app.events.addEventListener(name, update);
  update();
}
