// api.js - the REST client: bearer token from localStorage (or handed over by the extension),
// JSON in and out, errors as ApiError with the server's {error:{code,message}}.

const TOKEN_KEY = 'sessiond.token';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

let memToken = null; // used when storage is unavailable (e.g. a partitioned iframe)

export function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || memToken;
  } catch {
    return memToken;
  }
}

export function setToken(t) {
  memToken = t || null;
  try {
    if (t) localStorage.setItem(TOKEN_KEY, t);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage refused: keep it in memory */
  }
}

export async function api(method, path, body, opts = {}) {
  const headers = { Accept: 'application/json' };
  const token = opts.token || getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (opts.raw) {
    if (!res.ok) throw new ApiError(res.status, 'http', `HTTP ${res.status}`);
    return res;
  }
  const text = await res.text();
  let json = null;
  if (text) {
    try {
      json = JSON.parse(text);
    } catch {
      json = null;
    }
  }
  if (!res.ok) {
    const e = (json && json.error) || {};
    throw new ApiError(res.status, e.code, e.message || `HTTP ${res.status}`);
  }
  return json;
}

export const me = () => api('GET', '/v1/me');
export const listSessions = (cursor) =>
  api('GET', `/v1/sessions?limit=50${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
export const getSession = (id) => api('GET', `/v1/sessions/${encodeURIComponent(id)}`);
export const createSession = (body) => api('POST', '/v1/sessions', body);
export const postMessage = (id, body) =>
  api('POST', `/v1/sessions/${encodeURIComponent(id)}/messages`, body);
export const cancel = (id) => api('POST', `/v1/sessions/${encodeURIComponent(id)}/cancel`, {});
export const events = (id, after, limit = 500) =>
  api('GET', `/v1/sessions/${encodeURIComponent(id)}/events?after=${after}&limit=${limit}`);

export async function listRepos() {
  try {
    const r = await api('GET', '/v1/repos');
    const list = Array.isArray(r) ? r : (r && r.repos) || [];
    return list.map((x) => (typeof x === 'string' ? { name: x } : x)).filter((x) => x && (x.name || x.id));
  } catch {
    return []; // no repository registry on this server: free text
  }
}

/** A one-use WebSocket ticket; falls back to the token itself (redacted in server logs). */
export async function wsTicket(id) {
  try {
    const r = await api('POST', `/v1/sessions/${encodeURIComponent(id)}/ws-ticket`, {});
    if (r && r.ticket) return { ticket: r.ticket };
  } catch (e) {
    if (e.status === 401 || e.status === 403 || e.status === 404 || e.status === 410) throw e;
  }
  return { token: getToken() };
}

/** An artifact's bytes as an object URL (images are fetched with the bearer token). */
export async function artifactURL(sid, aid) {
  const res = await api(
    'GET',
    `/v1/sessions/${encodeURIComponent(sid)}/artifacts/${encodeURIComponent(aid)}`,
    undefined,
    { raw: true },
  );
  return URL.createObjectURL(await res.blob());
}
