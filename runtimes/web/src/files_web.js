// A bundle served over HTTP, for browsers (the BundleFiles of manifest.js): each file is fetched once, hashed
// with SubtleCrypto, and its bytes kept until the session that needs them has been created (`forget`).

import { BundleError } from './errors.js';
import { fileName } from './typed_json.js';

/** The hex sha256 of some bytes, with SubtleCrypto (a secure context: https or localhost). */
export async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** @returns {import('./manifest.js').BundleFiles & {forget(name: string): void}} */
export function webFiles(baseUrl, { fetchFn = globalThis.fetch } = {}) {
  const base = new URL(baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`, globalThis.location?.href);
  const cache = new Map();

  function read(name) {
    fileName(name, 'bundle file');
    if (!cache.has(name)) {
      const url = new URL(name, base);
      cache.set(name, fetchFn(url).then(async (r) => {
        if (!r.ok) throw new BundleError(`${base.href}: missing bundle file ${name} (HTTP ${r.status})`);
        return new Uint8Array(await r.arrayBuffer());
      }, (e) => {
        throw new BundleError(`${base.href}: cannot fetch ${name} (${e.message})`);
      }));
      cache.get(name).catch(() => cache.delete(name));
    }
    return cache.get(name);
  }

  return {
    where: base.href.replace(/\/$/, ''),
    read,
    size: async (name) => (await read(name)).byteLength,
    sha256: async (name) => sha256Hex(await read(name)),
    forget: (name) => cache.delete(name),
  };
}
