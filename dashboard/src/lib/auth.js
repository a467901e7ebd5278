// Signing in with an API key.
//
// The key lives in sessionStorage (gone when the tab closes) and goes out as
// `Authorization: Bearer <key>`. Whether the server wants a key at all is found out by asking
// without one: an answer means auth is off and there is no sign-in. The key's role comes from
// `GET /v1/whoami` when the server offers it, else `GET /v1/keys` (ids and roles, never
// secrets): a token is
// `wpk_<id>_<secret>`, so its id finds its entry. That list is admin-only, so for other keys
// the role is unknown at first: the UI lets them try and a 403 teaches it (the message says
// which key is needed, and the button is then disabled with the reason).

import { ApiError, Kind } from './api.js';

export const STORAGE_KEY = 'warmpool.apiKey';

export function loadKey(storage = globalThis.sessionStorage) {
  try {
    return storage?.getItem(STORAGE_KEY) || null;
  } catch {
    return null;
  }
}

export function saveKey(key, storage = globalThis.sessionStorage) {
  try {
    if (key) storage?.setItem(STORAGE_KEY, key);
    else storage?.removeItem(STORAGE_KEY);
  } catch {
    /* storage disabled: the key lives only in memory */
  }
}

/** The public id of a `wpk_<id>_<secret>` token, or null. Pure. */
export function keyId(token) {
  const m = /^wpk_([0-9a-fA-F]{12})_[0-9a-fA-F]{64}$/.exec(String(token ?? '').trim());
  return m ? m[1].toLowerCase() : null;
}

/** Checks a key's shape before sending it: null when fine, else a sentence. Pure. */
export function keyProblem(token) {
  const t = String(token ?? '').trim();
  if (!t) return 'Enter an API key.';
  if (!t.startsWith('wpk_')) return 'A Warmpool API key starts with wpk_.';
  if (!keyId(t)) return 'That does not look like a whole key (wpk_ + 12 + _ + 64 hex digits). Check for a missing part.';
  return null;
}

/**
 * Finds out whether the server needs a key: `{mode: 'off'}` when a request without one is
 * answered, `{mode: 'on'}` on 401. Other failures throw (the caller shows "cannot reach").
 */
export async function detectAuth(client) {
  try {
    await client.get('/v1/cluster', { key: null });
    return { mode: 'off' };
  } catch (e) {
    if (e instanceof ApiError && e.kind === Kind.unauthorized) return { mode: 'on' };
    throw e;
  }
}

/** The role of `token` in a `GET /v1/keys` answer, or null. Pure. */
export function roleOf(keys, token) {
  const id = keyId(token);
  if (!id || !Array.isArray(keys)) return null;
  return keys.find((k) => k.id === id && !k.revoked_at)?.role ?? null;
}

/**
 * What the UI lets a role do. `role` is 'admin' | 'user' | 'viewer' | null (unknown) and
 * `authMode` 'off' | 'on'. Unknown roles may try (the server answers 403 if not).
 */
export function permissions(authMode, role, learned = {}) {
  if (authMode === 'off') return { allocate: true, nodes: true };
  const allocate = role ? role === 'user' || role === 'admin' : !learned.allocateDenied;
  const nodes = role ? role === 'admin' : !learned.nodesDenied;
  return { allocate, nodes };
}

/** The sentence shown next to a disabled write button. Pure. */
export function deniedReason(role, what) {
  const who = role ? `a ${role} key` : 'this key';
  if (what === 'allocate') {
    return `Signed in with ${who}: it can read everything but not allocate, renew or release; that needs a user or admin key.`;
  }
  return `Signed in with ${who}: it cannot cordon, uncordon or drain nodes; that needs an admin key.`;
}
