// Which files are images, by their first bytes, as Pillow (the Python runtime's decoder) tells them: the raster
// formats both runtimes can read. Anything else is refused before a decoder sees it, as the Python runtime refuses
// it: SVG above all (sharp and browsers render it, Pillow does not; an SVG is a document that can reference other
// files), and PDF. Node (sharp) and the browser then decode what they can of these; BMP is Pillow's and browsers'.

import { UserError } from './errors.js';

/** How many bytes imageFormat reads. */
export const HEADER_BYTES = 12;

const ascii = (s) => [...s].map((c) => c.charCodeAt(0));
const SIGNATURES = [
  ['png', 0, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]],
  ['jpeg', 0, [0xff, 0xd8, 0xff]],
  ['gif', 0, ascii('GIF87a')], ['gif', 0, ascii('GIF89a')],
  ['webp', 0, ascii('RIFF'), 8, ascii('WEBP')],
  ['bmp', 0, ascii('BM')],
  ...['MM\0*', 'II*\0', 'MM*\0', 'II\0*', 'MM\0+', 'II+\0'].map((p) => ['tiff', 0, ascii(p)]),
  ...['avif', 'avis', 'mif1', 'msf1'].map((brand) => ['avif', 4, ascii(`ftyp${brand}`)]),
];

const at = (bytes, offset, sig) => sig.every((b, i) => bytes[offset + i] === b);

/** 'png', 'jpeg', 'gif', 'webp', 'bmp', 'tiff' or 'avif' from a file's first HEADER_BYTES bytes; null for the rest. */
export function imageFormat(header) {
  for (const [name, ...parts] of SIGNATURES) {
    let ok = true;
    for (let i = 0; i < parts.length; i += 2) ok &&= at(header, parts[i], parts[i + 1]);
    if (ok) return name;
  }
  return null;
}

/** The format, or a UserError naming `what` (the image and its path). */
export function checkImageFormat(header, what = 'image') {
  const format = imageFormat(header);
  if (format === null) {
    throw new UserError(`cannot read ${what}: not a raster image file (its first bytes are not PNG, JPEG, GIF, WebP, ` +
      'BMP, TIFF or AVIF)');
  }
  return format;
}
