// Fetch helpers for the mosaic JSON API. Errors carry the server's message.

export async function getJSON(url) {
  return readJSON(await fetch(url));
}

// POST a FormData (multipart, e.g. a file upload) and read the JSON answer.
export async function postForm(url, form) {
  let response;
  try {
    response = await fetch(url, { method: "POST", body: form });
  } catch (error) {
    // A server may answer a body over its limit early and close the connection.
    throw new Error(`the upload failed (${error.message}): is the file too large?`);
  }
  return readJSON(response);
}

// POST item ids (a selection) with the search filters in the query string, and read the
// file the server answers (a CSV, a poster) as a Blob. The ids go as a file part, so a
// long list is no form field over the server's form memory limit.
export async function postIds(url, ids) {
  const form = new FormData();
  form.append("ids", new Blob([Array.prototype.join.call(ids, ",")], { type: "text/plain" }),
    "ids.txt");
  const response = await fetch(url, { method: "POST", body: form });
  if (!response.ok) await readJSON(response); // throws the server's message
  return response.blob();
}

async function readJSON(response) {
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
