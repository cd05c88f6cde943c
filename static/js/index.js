// The collection list at /: title, item count and overview image of each bundle.

import { getJSON } from "./api.js";

async function main() {
  const status = document.getElementById("status");
  const list = document.getElementById("collections");
  const body = await getJSON("/api/collections");
  status.textContent = body.collections.length
    ? `${body.collections.length} collection(s)`
    : "No collections yet: build one with `python run.py pipeline`.";
  list.replaceChildren(...body.collections.map((collection) => {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = collection.url;
    if (collection.overview) {
      const image = document.createElement("img");
      image.src = collection.overview;
      image.alt = "";
      image.loading = "lazy";
      link.append(image);
    }
    const title = document.createElement("strong");
    title.textContent = collection.title;
    const count = document.createElement("span");
    count.textContent = `${collection.n_items.toLocaleString()} images`;
    link.append(title, count);
    item.append(link);
    return item;
  }));
}

main().catch((error) => {
  document.getElementById("status").textContent = `Error: ${error.message}`;
});
