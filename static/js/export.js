// "Export CSV": the current matches (or every item) as CSV, the server's export
// columns. The server streams it; a published site builds it in the browser.

export function setupExport(app) {
  const link = document.getElementById("export-link");
  link.download = `${app.collection.id}.csv`;
  let building = false;
  const update = async () => {
    const made = await app.source.exportCsv(app.filters);
    if (made.url) link.href = made.url;
  };
  link.addEventListener("click", async (event) => {
    if (app.source.server) return; // the server's link downloads as it is
    event.preventDefault();
    if (building) return;
    building = true;
    try {
      const { blob } = await app.source.exportCsv(app.filters);
      const url = URL.createObjectURL(blob);
      const anchor = document.createElement("a");
      anchor.href = url;
      anchor.download = link.download;
      anchor.click();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (error) {
      app.report(error);
    } finally {
      building = false;
    }
  });
  if (app.source.server) {
    app.events.addEventListener("filters", () => update().catch((error) => app.report(error)));
    update().catch((error) => app.report(error));
  }
}
