// Hovering a cell shows the item's title; titles are fetched once and cached.

const DELAY_MS = 120;

export function setupHover(app) {
  const tooltip = document.getElementById("tooltip");
  const element = app.viewer.element;
  const titles = new Map();
  let current = -1;
  let timer = 0;

  function show(id, x, y) {
    tooltip.textContent = titles.get(id);
    tooltip.style.left = `${x + 14}px`;
    tooltip.style.top = `${y + 14}px`;
    tooltip.hidden = false;
  }

  element.addEventListener("pointermove", (event) => {
    const box = element.getBoundingClientRect();
    const id = app.itemAtPixel(event.clientX - box.left, event.clientY - box.top);
    if (id === current) {
      if (id >= 0 && titles.has(id)) show(id, event.clientX, event.clientY);
      return;
    }
    current = id;
    clearTimeout(timer);
    tooltip.hidden = true;
    if (id < 0) return;
    if (titles.has(id)) {
      show(id, event.clientX, event.clientY);
      return;
    }
    timer = setTimeout(async () => {
      try {
        const [title] = await app.source.titles([id]);
        titles.set(id, title || `item ${id}`);
        if (current === id) show(id, event.clientX, event.clientY);
      } catch (error) {
        app.report(error);
      }
    }, DELAY_MS);
  });
  element.addEventListener("pointerleave", () => {
    current = -1;
    clearTimeout(timer);
    tooltip.hidden = true;
  });
}
