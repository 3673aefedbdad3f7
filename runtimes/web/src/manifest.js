// manifest.json: the contract between `pgexport build` and the runtime (pgexport_runtime/manifest.py).
//
// Loading checks, in this order and before any listed file is opened: the manifest's size and JSON; its schema
// and version; each section read, typed and bounded; that every file it names is a plain file name covered by a
// sha256; then per file (through the BundleFiles of files_node.js / files_web.js): a plain file, present, and
// (verify) its sha256. Only the fields of schema version 2 are read (version 2 only removed duplicated fields
// from version 1); fields this runtime does not know are ignored, since fields are only ever appended.

import * as typed_json from './typed_json.js';
import { BundleError } from './errors.js';
import { geometryFromDict } from './geometry.js';
import { preprocessingFromDict } from './preprocess.js';
import { KV_LAYOUTS, LAYOUTS } from './kv_layout.js';
import { repr } from './escape.js';
import contract from './contract.js';

export { KV_LAYOUTS };

const M = contract.manifest;
export const SCHEMA = M.schema;
export const SCHEMA_VERSIONS = M.reads;
export const MANIFEST = M.file;
export const GRAPHS = M.graphs;
export const OPTIONAL_GRAPHS = M.optional_graphs;
export const KV_DTYPES = M.kv_dtypes;
export const MAX_MANIFEST_BYTES = M.max_manifest_bytes;
export const MAX_TOKENIZER_BYTES = M.max_tokenizer_bytes;
export const MAX_FILES = M.max_files;
const SHA256 = /^[0-9a-f]{64}$/;

/**
 * @typedef {{file: string, dataFiles: string[], precision: string, inputs: string[], outputs: string[]}} GraphEntry
 * @typedef {{raw: object, geometry: object, graphs: Object<string, GraphEntry>, kvLayout: import('./kv_layout.js').KvLayout, kvDtype: string,
 *   tokenizer: {file: string, imageToken: string, bosToken: string, eosToken: string, padToken: string},
 *   preprocessing: object, maxNewTokens: number, files: Object<string, string>}} Manifest
 * @typedef {{where: string, size(name: string): Promise<number>, read(name: string): Promise<Uint8Array>,
 *   sha256(name: string): Promise<string>}} BundleFiles
 */

// The optional int8 prefill graph (`pgexport build --int8-prefill`), which onnxruntime-node runs on CPUs with int8
// matrix units (PaliGemma.load's prefill). Where it will not run, its files must be there and are not read: no
// download, no hashing.
export const INT8_PREFILL_GRAPH = 'decoder_int8';

/** The files that only the named graphs of a manifest list (not another graph's, not the tokenizer). */
export function filesOnlyOf(m, names) {
  const listed = (g) => [g.file, ...g.dataFiles];
  const theirs = new Set(Object.entries(m.graphs).filter(([n]) => names.includes(n)).flatMap(([, g]) => listed(g)));
  for (const [n, g] of Object.entries(m.graphs)) if (!names.includes(n)) listed(g).forEach((f) => theirs.delete(f));
  theirs.delete(m.tokenizer.file);
  return theirs;
}

/** Read and check a bundle's manifest; with verify, also the sha256 of every file it lists but those only the
 * optional `unusedGraphs` (graphs the caller will not load) read. @returns {Promise<Manifest>} */
export async function loadManifest(files, { verify = true, unusedGraphs = [] } = {}) {
  const where = `${files.where}/${MANIFEST}`;
  const size = await files.size(MANIFEST).catch((e) => {
    throw e instanceof BundleError ? e : new BundleError(`${files.where}: not a pgexport bundle (no ${MANIFEST})`);
  });
  if (size > MAX_MANIFEST_BYTES) {
    throw new BundleError(`${where}: larger than ${MAX_MANIFEST_BYTES >> 20} MiB; not a manifest this runtime reads`);
  }
  let raw;
  try {
    raw = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(await files.read(MANIFEST)));
  } catch (e) {
    if (e instanceof BundleError) throw e;
    throw new BundleError(`${where}: unreadable manifest (${String(e.message).split(/\s+/).join(' ').slice(0, 200)})`);
  }
  let m;
  try {
    m = parseManifest(raw);
  } catch (e) {
    if (e instanceof BundleError) throw new BundleError(`${where}: ${e.message}`);
    throw e;
  }
  if (unusedGraphs.some((n) => !OPTIONAL_GRAPHS.includes(n))) throw new Error('only optional graphs go unread');
  const unread = filesOnlyOf(m, unusedGraphs);
  for (const [name, digest] of Object.entries(m.files)) {
    const bytes = await files.size(name);
    if (name === m.tokenizer.file && bytes > MAX_TOKENIZER_BYTES) {
      throw new BundleError(`${files.where}: ${name} is larger than ${MAX_TOKENIZER_BYTES >> 20} MiB`);
    }
    if (verify && !unread.has(name) && (await files.sha256(name)) !== digest) {
      throw new BundleError(`${files.where}: ${name} does not match its sha256 in the manifest (modified or corrupt)`);
    }
  }
  return m;
}

/** The typed sections of a manifest's JSON (no file is opened). @returns {Manifest} */
export function parseManifest(raw) {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new BundleError(`not a pgexport manifest (a JSON ${Array.isArray(raw) ? 'list' : typeof raw}, not an object)`);
  }
  if (raw.schema !== SCHEMA) throw new BundleError(`not a pgexport manifest (schema ${short(raw.schema)})`);
  if (!SCHEMA_VERSIONS.includes(raw.schema_version)) {
    throw new BundleError(`schema version ${short(raw.schema_version)} is not supported by this runtime ` +
      `(it reads versions ${SCHEMA_VERSIONS.join(', ')})`);
  }
  const files = readFiles(typed_json.section(raw, 'files', 'manifest'));
  const geometry = geometryFromDict(typed_json.section(raw, 'geometry', 'manifest'));
  const graphsRaw = typed_json.section(raw, 'graphs', 'manifest');
  const graphs = {};
  for (const name of [...GRAPHS, ...OPTIONAL_GRAPHS]) {
    const g = typed_json.section(graphsRaw, name, 'graphs', OPTIONAL_GRAPHS.includes(name));
    if (g !== null) graphs[name] = readGraph(g, `graphs.${name}`, files);
  }
  const kv = typed_json.section(raw, 'kv_cache', 'manifest');
  const layout = typed_json.text(kv, 'layout', 'kv_cache');
  if (!KV_LAYOUTS.includes(layout)) {
    throw new BundleError(`KV-cache layout ${repr(layout)} is not supported by this runtime (${KV_LAYOUTS.join(', ')})`);
  }
  const kvDtype = typed_json.text(kv, 'dtype', 'kv_cache', { optional: true }) ?? 'float32';
  if (!KV_DTYPES.includes(kvDtype)) throw new BundleError(`KV-cache dtype ${repr(kvDtype)} is not supported by this runtime`);
  const t = typed_json.section(raw, 'tokenizer', 'manifest');
  const tokenizer = {
    file: covered(typed_json.text(t, 'file', 'tokenizer'), 'tokenizer.file', files),
    imageToken: typed_json.text(t, 'image_token', 'tokenizer'),
    bosToken: typed_json.text(t, 'bos_token', 'tokenizer'),
    eosToken: typed_json.text(t, 'eos_token', 'tokenizer'),
    padToken: typed_json.text(t, 'pad_token', 'tokenizer'),
  };
  const gen = typed_json.section(raw, 'generation', 'manifest');
  const maxNewTokens = typed_json.integer(gen, 'max_new_tokens', 'generation', 1, geometry.max_position_embeddings);
  const preprocessing = preprocessingFromDict(typed_json.section(raw, 'preprocessing', 'manifest'));
  return { raw, geometry, graphs, kvLayout: LAYOUTS[layout], kvDtype, tokenizer, preprocessing, maxNewTokens, files };
}

function readFiles(files) {
  const names = Object.keys(files);
  if (names.length > MAX_FILES) throw new BundleError(`files lists ${names.length} files, more than ${MAX_FILES}`);
  for (const name of names) {
    typed_json.fileName(name, 'files');
    if (name === MANIFEST) throw new BundleError(`files lists ${MANIFEST} itself`);
    if (typeof files[name] !== 'string' || !SHA256.test(files[name])) {
      throw new BundleError(`files.${name} is not a sha256 (64 lowercase hex digits)`);
    }
  }
  return { ...files };
}

function readGraph(g, where, files) {
  return {
    file: covered(typed_json.text(g, 'file', where), `${where}.file`, files),
    dataFiles: typed_json.texts(g, 'data_files', where, true).map((f) => covered(f, `${where}.data_files`, files)),
    precision: typed_json.text(g, 'precision', where),
    inputs: typed_json.texts(g, 'inputs', where),
    outputs: typed_json.texts(g, 'outputs', where),
  };
}

function covered(name, where, files) {
  typed_json.fileName(name, where);
  if (!Object.hasOwn(files, name)) {
    throw new BundleError(`${where.startsWith('tokenizer') ? 'tokenizer file' : `graph file ${name}`} is not covered by a sha256`);
  }
  return name;
}

function short(value) {
  const text = repr(value);
  return text.length <= 40 ? text : `${text.slice(0, 40)}...`;
}
