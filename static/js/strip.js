// A row of clickable thumbnails. Titles go in as text, never as HTML.

export function renderStrip(container, items, onPick, describe = (item) => item.title) {
  const buttons = items.map((item) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "strip-item";
    button.dataset.id = String(item.id);
    const label = describe(item) || `item ${item.id}`;
    button.title = label;
    const image = document.createElement("img");
    image.src = item.thumbnail;
    image.alt = label;
    image.loading = "lazy";
    button.append(image);
    button.addEventListener("click", () => onPick(item));
    return button;
  });
  container.replaceChildren(...buttons);
}
