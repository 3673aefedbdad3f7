// The command line's arguments as the Python runtime reads them. Node decodes argv as UTF-8 with U+FFFD for bytes that
// are not UTF-8, so a prompt that is not text would be answered as another prompt; Python decodes them to lone
// surrogates (surrogateescape), which limits.checkPrompt refuses ("not valid UTF-8 text"). Here the bytes are read
// again from /proc/self/cmdline (Linux) and decoded as Python does. Where /proc is not there, process.argv is used.

import { readFileSync } from 'node:fs';

/** process.argv.slice(2), with every argument that is not UTF-8 decoded as Python decodes it. */
export function commandLine() {
  const args = process.argv.slice(2);
  let raw;
  try {
    raw = readFileSync('/proc/self/cmdline');
  } catch {
    return args;
  }
  const parts = [];
  for (let start = 0, end; start < raw.length; start = end + 1) {
    end = raw.indexOf(0, start);
    if (end < 0) end = raw.length;
    parts.push(raw.subarray(start, end));
  }
  // the last entries are the script's arguments (node's own options come before the script)
  const own = parts.slice(parts.length - args.length);
  if (own.length !== args.length) return args;
  const decoded = own.map(surrogateEscape);
  // the same arguments, or another process title: then nothing is known better than process.argv
  return decoded.every((a, i) => !a.isWellFormed() || a === args[i]) ? decoded : args;
}

/**
 * Bytes -> text as Python's bytes.decode('utf-8', 'surrogateescape'): each byte that does not start a valid UTF-8
 * sequence (overlong forms, surrogates and code points past U+10FFFF are not valid) becomes U+DC80..U+DCFF.
 */
export function surrogateEscape(bytes) {
  let out = '';
  for (let i = 0; i < bytes.length;) {
    const n = sequenceLength(bytes, i);
    if (n) {
      out += new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(i, i + n));
      i += n;
    } else {
      out += String.fromCharCode(0xdc00 + bytes[i]);
      i += 1;
    }
  }
  return out;
}

/** The length of the valid UTF-8 sequence at bytes[i], or 0 (the ranges of the Unicode standard's table 3-7). */
function sequenceLength(bytes, i) {
  const b = bytes[i];
  if (b < 0x80) return 1;
  const cont = (k, lo = 0x80, hi = 0xbf) => i + k < bytes.length && bytes[i + k] >= lo && bytes[i + k] <= hi;
  if (b >= 0xc2 && b <= 0xdf) return cont(1) ? 2 : 0;
  if (b >= 0xe0 && b <= 0xef) {
    const [lo, hi] = b === 0xe0 ? [0xa0, 0xbf] : b === 0xed ? [0x80, 0x9f] : [0x80, 0xbf];
    return cont(1, lo, hi) && cont(2) ? 3 : 0;
  }
  if (b >= 0xf0 && b <= 0xf4) {
    const [lo, hi] = b === 0xf0 ? [0x90, 0xbf] : b === 0xf4 ? [0x80, 0x8f] : [0x80, 0xbf];
    return cont(1, lo, hi) && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}
