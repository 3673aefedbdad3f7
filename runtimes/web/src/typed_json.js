// Typed reads of manifest JSON (pgexport_runtime/typed_json.py): each returns the value or throws a BundleError
// naming the field, so an odd manifest is one error at load, not a TypeError in the middle of a generation.

import { BundleError } from './errors.js';
import { repr } from './escape.js';

export const MAX_LIST = 4096;
export const MAX_TEXT = 4096;
const PLAIN_NAME = /^[A-Za-z0-9_][A-Za-z0-9._+-]{0,254}$/;

const kind = (v) => (v === null || v === undefined ? 'null' : Array.isArray(v) ? 'list' : typeof v);
const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

function get(d, key, where, optional) {
  if (!isObject(d)) throw new BundleError(`${where} must be an object, not ${kind(d)}`);
  if (!(key in d) && !optional) throw new BundleError(`${where}.${key} is missing`);
  return d[key] ?? null;
}

export function section(d, key, where, optional = false) {
  const v = get(d, key, where, optional);
  if (v === null && optional) return null;
  if (!isObject(v)) throw new BundleError(`${where}.${key} must be an object, not ${kind(v)}`);
  return v;
}

export function text(d, key, where, { optional = false, choices = [] } = {}) {
  const v = get(d, key, where, optional);
  if (v === null && optional) return null;
  if (typeof v !== 'string' || !v || v.length > MAX_TEXT) {
    throw new BundleError(`${where}.${key} must be a non-empty string, not ${kind(v)}`);
  }
  if (choices.length && !choices.includes(v)) {
    throw new BundleError(`${where}.${key} is ${repr(v)}; this runtime knows ${choices.join(', ')}`);
  }
  return v;
}

function int(v, name, lo, hi) {
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new BundleError(`${name} must be an integer, not ${kind(v)}`);
  if (v < lo || v > hi) throw new BundleError(`${name} is ${v}, outside ${lo}..${hi}`);
  return v;
}

export function integer(d, key, where, lo, hi, optional = false) {
  const v = get(d, key, where, optional);
  if (v === null && optional) return null;
  return int(v, `${where}.${key}`, lo, hi);
}

function num(v, name, lo, hi) {
  if (typeof v !== 'number') throw new BundleError(`${name} must be a number, not ${kind(v)}`);
  if (!Number.isFinite(v) || !(lo < v) || !(v <= hi)) throw new BundleError(`${name} is ${v}, outside (${lo}, ${hi}]`);
  return v;
}

/** A finite number in (lo, hi]. */
export function number(d, key, where, lo, hi, optional = false) {
  const v = get(d, key, where, optional);
  if (v === null && optional) return null;
  return num(v, `${where}.${key}`, lo, hi);
}

export function flag(d, key, where) {
  const v = get(d, key, where, false);
  if (typeof v !== 'boolean') throw new BundleError(`${where}.${key} must be true or false, not ${kind(v)}`);
  return v;
}

function items(d, key, where, optional, maxLen) {
  const v = get(d, key, where, optional);
  if (v === null && optional) return null;
  if (!Array.isArray(v) || v.length > maxLen) {
    throw new BundleError(`${where}.${key} must be a list of at most ${maxLen} items, not ${kind(v)}`);
  }
  return v;
}

export function texts(d, key, where, optional = false) {
  const list = items(d, key, where, optional, MAX_LIST) ?? [];
  for (const v of list) {
    if (typeof v !== 'string' || !v || v.length > MAX_TEXT) {
      throw new BundleError(`${where}.${key} must hold non-empty strings, not ${kind(v)}`);
    }
  }
  return list.slice();
}

export function integers(d, key, where, lo, hi, optional = false, maxLen = MAX_LIST) {
  return (items(d, key, where, optional, maxLen) ?? []).map((v) => int(v, `${where}.${key}[]`, lo, hi));
}

export function numbers(d, key, where, lo, hi, length) {
  const list = items(d, key, where, false, length);
  if (list.length !== length) throw new BundleError(`${where}.${key} must hold ${length} numbers, not ${list.length}`);
  return list.map((v) => num(v, `${where}.${key}[]`, lo, hi));
}

export function flags(d, key, where, length) {
  const list = items(d, key, where, false, length);
  if (list.length !== length || !list.every((v) => typeof v === 'boolean')) {
    throw new BundleError(`${where}.${key} must hold ${length} true/false values`);
  }
  return list.slice();
}

/** A plain file name inside the bundle: no directory part, no '..', not absolute, no odd characters. */
export function fileName(value, where) {
  if (typeof value !== 'string' || !PLAIN_NAME.test(value)) {
    throw new BundleError(`${where}: ${repr(String(value).slice(0, 80))} is not a plain file name inside the bundle`);
  }
  return value;
}
