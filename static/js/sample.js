// "Random sample": N random items (among the current matches) as a strip.

import { renderStrip } from "./strip.js";

const N = 24;

export function setupSample(app) {
  const strip = document.getElementById("sample");
  const button = document.getElementById("sample-button");
  async function shuffle() {
    try {
      const body = await app.source.random(N, app.filters);
      renderStrip(strip, body.items, (item) => app.select(item.id, { fly: true }));
      strip.dataset.seed = String(body.seed);
    } catch (error) {
      app.report(error);
    }
  }
  button.addEventListener("click", shuffle);
  shuffle();
}
