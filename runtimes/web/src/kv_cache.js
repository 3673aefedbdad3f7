// The KV cache, owned by the caller (pgexport_runtime/kv_cache.py).
//
// The decoder maps past_key_values.{i}.* [B, kv_heads, P, head_dim] to present.{i}.* [B, kv_heads, P+S, head_dim].
// What onnxruntime's JavaScript API allows, and so the two modes here:
// - 'preallocated' (onnxruntime-node): each tensor gets two Float32Arrays sized for the whole generation, allocated
//   once. A step feeds the past as a tensor over a prefix of one buffer and passes the present as a pre-allocated
//   output (a `fetches` value) over a prefix of the other, which onnxruntime-node writes in place; then the two
//   swap roles. Only small tensor views are created per step.
// - 'handoff' (onnxruntime-web): the present tensors onnxruntime returns are fed back as the next step's past.
//   onnxruntime-web 1.30 ignores pre-allocated CPU outputs (it returns the given tensor unwritten; measured), and
//   runs inside its own WASM heap, so on WASM each step's presents are new JS arrays copied out of the heap. On
//   WebGPU the presents stay on the GPU (session option preferredOutputLocation 'gpu-buffer', see pipeline.js) and
//   only the previous step's buffers are released; their shape grows every step, so they cannot be pre-allocated.
// Layout 'shared' (a bundle built with --kv-cache shared): past and present are one [B, kv_heads, maxLen, head_dim]
// buffer that the decoder's GroupQueryAttention writes in place. 'preallocated': one Float32Array per tensor, fed
// and fetched over its whole length, so onnxruntime-node writes the new rows into it. 'handoff': a zero buffer of
// the whole length to start, then the presents onnxruntime returns (on WASM a copy out of its heap, as for concat).

import * as io from './io_names.js';
import { LAYOUTS } from './kv_layout.js';

export class KVCache {
  /** @param {'preallocated'|'handoff'} mode  @param {import('./kv_layout.js').KvLayout} layout the manifest's */
  constructor(ort, g, batch, maxLen, mode = 'preallocated', layout = LAYOUTS.concat) {
    Object.assign(this, { ort, g, batch, maxLen, mode, layout, shared: layout.inPlace });
    this.length = 0; // tokens currently cached
    this.names = [];
    for (let i = 0; i < g.text_layers; i++) {
      this.names.push([io.pastKey(i), io.presentKey(i)], [io.pastValue(i), io.presentValue(i)]);
    }
    const n = batch * g.num_kv_heads * maxLen * g.head_dim;
    const sides = layout.buffers;
    this.buffers = mode === 'preallocated' ? this.names.map(() => Array.from({ length: sides }, () => new Float32Array(n))) : null;
    this.side = 0; // preallocated: which buffer of each pair holds the past
    this.past = null; // handoff: the previous step's present tensors
  }

  dims(length) {
    return [this.batch, this.g.num_kv_heads, length, this.g.head_dim];
  }

  size(length) {
    return this.batch * this.g.num_kv_heads * length * this.g.head_dim;
  }

  /** Feeds (the cached past) and fetches (where the present goes) for a step of `newTokens` tokens. */
  bind(feeds, fetches, newTokens) {
    if (this.length + newTokens > this.maxLen) throw new Error(`KV cache full: ${this.length} + ${newTokens} > ${this.maxLen}`);
    const { Tensor } = this.ort;
    const [pastLen, presentLen] = this.layout.boundLengths(this.length, newTokens, this.maxLen);
    const view = (buffer, length) => new Tensor('float32', buffer.subarray(0, this.size(length)), this.dims(length));
    this.names.forEach(([past, present], t) => {
      if (this.mode === 'preallocated') {
        const [a, b] = this.shared || this.side === 0 ? this.buffers[t] : [...this.buffers[t]].reverse();
        feeds[past] = view(a, pastLen);
        fetches[present] = view(b ?? a, presentLen);
      } else {
        feeds[past] = this.past?.[t] ?? view(new Float32Array(this.size(pastLen)), pastLen);
        fetches[present] = null;
      }
    });
  }

  /** After a step: the present becomes the past. */
  advance(newTokens, outputs) {
    this.length += newTokens;
    this.side = 1 - this.side;
    if (this.mode === 'handoff') {
      this.release();
      this.past = this.names.map(([, present]) => outputs[present]);
    }
  }

  release() {
    this.past?.forEach((t) => t.location === 'gpu-buffer' && t.dispose());
    this.past = null;
  }
}
