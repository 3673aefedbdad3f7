// The image-feature cache: the vision encoder and projector run once per distinct image
// (pgexport_runtime/image_cache.py).
//
// Keyed by the sha256 of the preprocessed pixel values of one image (its dims, then its float32 bytes), so two
// decodings that preprocess identically share an entry; it holds the projector's output for that image,
// [num_image_tokens, text_hidden] float32. Bounded by bytes, least recently used out first: one entry is 2 MB for a
// 3B model at 224 and 32 MB at 896. Environment-neutral: the sha256 is the caller's (node:crypto in Node,
// SubtleCrypto in browsers: files_node.js / files_web.js `sha256Hex`).

export const DEFAULT_MAX_BYTES = 64 * 1024 * 1024;

export class ImageCache {
  /**
   * @param {(bytes: Uint8Array) => Promise<string>} sha256 hex digest of some bytes
   * @param {number} [maxBytes] the most bytes of embeddings kept
   */
  constructor(sha256, maxBytes = DEFAULT_MAX_BYTES) {
    if (typeof sha256 !== 'function') throw new TypeError('ImageCache needs a sha256 function');
    this.sha256 = sha256;
    this.maxBytes = maxBytes;
    this.entries = new Map(); // key -> Float32Array row; Map order is recency order, oldest first
    this.bytes = 0;
    this.hits = 0; // images served from the cache
    this.misses = 0; // images encoded
  }

  /**
   * pixel_values {data, dims: [B, 3, H, W]} -> image embeddings, a flat Float32Array [B, N, D] of its own: cached rows
   * reused, the distinct others encoded in one call of `encode` (none when every row is cached).
   * @param {{data: Float32Array, dims: number[]}} pixelValues
   * @param {(pixelValues: {data: Float32Array, dims: number[]}) => Promise<Float32Array>} encode [b, N, D] flat
   */
  async embeddings(pixelValues, encode) {
    const [batch, ...rowDims] = pixelValues.dims;
    const rowLength = pixelValues.data.length / batch;
    const rowOf = (b) => pixelValues.data.subarray(b * rowLength, (b + 1) * rowLength);
    const keys = [];
    for (let b = 0; b < batch; b++) keys.push(await key(this.sha256, rowOf(b), rowDims));
    const found = new Map(); // distinct keys, first appearance first
    for (const k of keys) if (!found.has(k)) found.set(k, this.get(k));
    const missing = [...found.keys()].filter((k) => found.get(k) === undefined);
    if (missing.length) {
      const data = new Float32Array(missing.length * rowLength);
      missing.forEach((k, i) => data.set(rowOf(keys.indexOf(k)), i * rowLength));
      const fresh = await encode({ data, dims: [missing.length, ...rowDims] });
      const size = fresh.length / missing.length;
      missing.forEach((k, i) => found.set(k, this.put(k, fresh.subarray(i * size, (i + 1) * size))));
    }
    this.misses += missing.length;
    this.hits += keys.length - missing.length;
    const size = found.get(keys[0])?.length ?? 0;
    const out = new Float32Array(keys.length * size);
    keys.forEach((k, b) => out.set(found.get(k), b * size));
    return out;
  }

  clear() {
    this.entries.clear();
    this.bytes = 0;
  }

  /** The row for `k`, now the most recently used; undefined when absent. */
  get(k) {
    const row = this.entries.get(k);
    if (row !== undefined) {
      this.entries.delete(k);
      this.entries.set(k, row);
    }
    return row;
  }

  /** Keep a copy of `row` (the caller's buffer is not kept alive), dropping the oldest rows beyond maxBytes. */
  put(k, row) {
    const copy = row.slice();
    if (copy.byteLength > this.maxBytes) return copy;
    if (!this.entries.has(k)) {
      this.entries.set(k, copy);
      this.bytes += copy.byteLength;
    }
    while (this.bytes > this.maxBytes) {
      const [oldest, old] = this.entries.entries().next().value;
      this.entries.delete(oldest);
      this.bytes -= old.byteLength;
    }
    return copy;
  }
}

/** sha256 of one image's dims (as Python's str(shape), e.g. "(3, 224, 224)") and its float32 bytes. */
function key(sha256, row, dims) {
  const shape = new TextEncoder().encode(`(${dims.join(', ')})`);
  const bytes = new Uint8Array(shape.length + row.byteLength);
  bytes.set(shape);
  bytes.set(new Uint8Array(row.buffer, row.byteOffset, row.byteLength), shape.length);
  return sha256(bytes);
}
