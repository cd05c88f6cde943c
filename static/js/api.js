// Fetch helpers for the mosaic JSON API. Errors carry the server's message.

export async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json().catch(() => null);
  if (!response.ok || !body || body.ok === false) {
    const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return body;
}

export async function getGrid(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`grid: ${response.status} ${response.statusText}`);
  return new Int32Array(await response.arrayBuffer());
}

// A collection's API root, e.g. /api/collections/digits
export function apiRoot(cid) {
  return `/api/collections/${encodeURIComponent(cid)}`;
}
