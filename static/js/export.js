// "Export CSV": the current matches (or every item) as CSV, the server's export
// columns; with a selection on the map, the selected items among them. The server
// streams it (a link; a selection's ids are POSTed); a published site builds it in
// the browser.

// Save a Blob as a download named `name`.
export function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const anchor = document.createElement("a");
  anchor.href = url;
  anchor.download = name;
  anchor.click();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export function setupExport(app) {
  const link = document.getElementById("export-link");
  link.download = `${app.collection.id}.csv`;
  let building = false;
  const selected = () => (app.selectionIds ? app.selectionIds() : null);
  const update = async () => {
    if (selected()) {
      link.href = "#"; // the click POSTs the ids
      return;
    }
    const made = await app.source.exportCsv(app.filters);
    if (made.url && !selected()) link.href = made.url;
  };
  link.addEventListener("click", async (event) => {
    const ids = selected();
    if (app.source.server && !ids) return; // the server's link downloads as it is
    event.preventDefault();
    if (building) return;
    building = true;
    link.dataset.state = "busy";
    try {
      const { blob } = await app.source.exportCsv(app.filters, ids);
      saveBlob(blob, link.download);
      link.dataset.state = "done";
    } catch (error) {
      link.dataset.state = "error";
      app.report(error);
    } finally {
      building = false;
    }
  });
  if (app.source.server) {
    for (const name of ["filters", "selection"]) {
      app.events.addEventListener(name, () => update().catch((error) => app.report(error)));
    }
    update().catch((error) => app.report(error));
  }
}
