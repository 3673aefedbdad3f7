// A bundle directory on disk, for Node (the BundleFiles of manifest.js). Every name has passed typed_json.fileName
// (a plain name), and the file itself must not be a symbolic link, so nothing outside the bundle is read or hashed.

import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { BundleError } from './errors.js';
import { fileName } from './typed_json.js';

/** The hex sha256 of some bytes (the image cache's key, image_cache.js). */
export async function sha256Hex(bytes) {
  return createHash('sha256').update(bytes).digest('hex');
}

/** @returns {import('./manifest.js').BundleFiles & {path(name: string): string}} */
export async function nodeFiles(dir) {
  const root = path.resolve(String(dir));
  const s = await stat(root).catch(() => null);
  if (!s?.isDirectory()) throw new BundleError(`${dir}: no such bundle directory`);

  async function checked(name) {
    fileName(name, 'bundle file');
    const p = path.join(root, name);
    const st = await lstat(p).catch(() => null);
    if (st === null) throw new BundleError(`${dir}: missing bundle file ${name}`);
    if (st.isSymbolicLink()) throw new BundleError(`${dir}: ${name} is a symbolic link; a bundle holds plain files only`);
    if (!st.isFile()) throw new BundleError(`${dir}: ${name} is not a regular file`);
    return { p, st };
  }

  return {
    where: String(dir),
    path: (name) => path.join(root, fileName(name, 'bundle file')),
    size: async (name) => (await checked(name)).st.size,
    read: async (name) => { // the Buffer's own memory, not a copy (a .ort graph is used in place: session.js)
      const b = await readFile((await checked(name)).p);
      return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
    },
    sha256: async (name) => {
      const { p } = await checked(name);
      const h = createHash('sha256');
      for await (const chunk of createReadStream(p, { highWaterMark: 1 << 22 })) h.update(chunk);
      return h.digest('hex');
    },
  };
}
