// The side panel for the selected item: thumbnail, title, link and metadata.
// Metadata is untrusted, so it is only ever set as text.

const SAFE_SCHEMES = new Set(["http:", "https:"]);

export function setupPanel(app) {
  const panel = document.getElementById("panel");
  const thumb = document.getElementById("panel-thumb");
  const title = document.getElementById("panel-title");
  const link = document.getElementById("panel-link");
  const metadata = document.getElementById("panel-metadata");
  let token = 0;

  document.getElementById("panel-close").addEventListener("click", () => app.select(-1));

  app.events.addEventListener("select", async (event) => {
    const id = event.detail.id;
    const mine = ++token;
    if (id < 0) {
      panel.hidden = true;
      return;
    }
    let item;
    try {
      item = await app.source.item(id);
    } catch (error) {
      app.report(error);
      return;
    }
    if (mine !== token) return;
    panel.hidden = false;
    panel.dataset.id = String(id);
    thumb.src = item.thumbnail;
    thumb.alt = item.title || "";
    title.textContent = item.title || `item ${id}`;
    const href = safeUrl(item.url);
    link.hidden = !href;
    if (href) link.href = href; else link.removeAttribute("href");
    // The item's own fields, then the CSV's columns under their own heading: a CSV
    // column called "filename" or "id" never stands in for the item's.
    const own = [["filename", item.filename], ["cell", `row ${item.row}, col ${item.col}`]];
    const csv = Object.entries(item.metadata);
    const pairs = ([key, value]) => {
      const term = document.createElement("dt");
      term.textContent = key;
      const detail = document.createElement("dd");
      detail.textContent = value === null ? "—" : String(value);
      return [term, detail];
    };
    const heading = (text) => {
      const term = document.createElement("dt");
      term.className = "section";
      term.textContent = text;
      return term;
    };
    metadata.replaceChildren(...own.flatMap(pairs),
      ...(csv.length ? [heading("metadata"), ...csv.flatMap(pairs)] : []));
  });
}

function safeUrl(url) {
  if (!url) return null;
  try {
    const parsed = new URL(url, window.location.href);
    return SAFE_SCHEMES.has(parsed.protocol) ? parsed.href : null;
  } catch {
    return null;
  }
}
