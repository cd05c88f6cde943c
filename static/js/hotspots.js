// The bundle's hotspots (dense clusters) as a list; clicking one flies there.

export function setupHotspots(app) {
  const hotspots = app.collection.hotspots || [];
  const section = document.getElementById("hotspots-section");
  const list = document.getElementById("hotspots");
  section.hidden = hotspots.length === 0;
  list.replaceChildren(...hotspots.map((hotspot) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `${hotspot.label} (${hotspot.size})`;
    button.addEventListener("click", () => {
      const margin = Math.max(2, Math.ceil(Math.sqrt(hotspot.size) / 2));
      app.flyTo(hotspot.representative, margin);
      app.select(hotspot.representative);
    });
    item.append(button);
    return item;
  }));
}
