// "Download poster": the current filter (or the whole map) as an A4 poster,
// rendered by the server; bigger posters are for `python run.py poster`. A published
// static site has no server to render one: the control is hidden there.

export function setupPoster(app) {
  const link = document.getElementById("poster-link");
  const format = document.getElementById("poster-format");
  if (!app.source.server) {
    link.closest("p").hidden = true;
    return;
  }
  const update = () => {
    link.href = app.source.posterUrl(app.filters, format.value, app.collection.title);
    link.download = `${app.collection.id}-poster.${format.value}`;
  };
  format.addEventListener("change", update);
  app.events.addEventListener("filters", update);
  update();
}
