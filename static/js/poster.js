// "Download poster": the current filter (or the whole map) as an A4 poster,
// rendered by the server; bigger posters are for `python run.py poster`.

export function setupPoster(app) {
  const link = document.getElementById("poster-link");
  const format = document.getElementById("poster-format");
  const update = () => {
    const params = new URLSearchParams(app.filters);
    params.set("paper", "A4");
    params.set("dpi", "150");
    params.set("title", app.collection.title);
    link.href = `${app.root}/poster.${format.value}?${params}`;
    link.download = `${app.collection.id}-poster.${format.value}`;
  };
  format.addEventListener("change", update);
  app.events.addEventListener("filters", update);
  update();
}
