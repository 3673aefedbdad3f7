// How a decoder graph takes its KV cache: one small object per layout, from the contract
// (pgexport_runtime/kv_layout.py reads the same file). 'concat': present = past + new tokens, a second buffer;
// 'shared': one buffer the graph writes in place; 'static': every shape fixed (the Python runtime only).

import contract from './contract.js';

export class KvLayout {
  constructor(name, { in_place: inPlace, fixed_shape: fixedShape, javascript, words }) {
    Object.assign(this, { name, inPlace, fixedShape, javascript, words });
    Object.freeze(this);
  }

  /** Buffers per cached tensor: one written in place, or two that swap past and present roles. */
  get buffers() {
    return this.inPlace ? 1 : 2;
  }

  /** The [past, present] lengths bound for a step of `newTokens` after `cached` tokens. */
  boundLengths(cached, newTokens, maxLen) {
    return this.inPlace ? [maxLen, maxLen] : [cached, cached + newTokens];
  }
}

export const LAYOUTS = Object.freeze(Object.fromEntries(
  Object.entries(contract.kv_layouts).map(([name, spec]) => [name, new KvLayout(name, spec)])));
/** The layouts this runtime reads. */
export const KV_LAYOUTS = Object.keys(LAYOUTS).filter((name) => LAYOUTS[name].javascript);
