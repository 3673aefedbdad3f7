// onnxruntime sessions for a bundle's graphs, and the check that a graph has the inputs and outputs the manifest
// and the runtime expect (pgexport_runtime/session.py check_io).

import { BundleError, oneLine } from './errors.js';

// ORT-format graphs whose bytes onnxruntime uses where they lie: the graph and its initializers are read from the
// buffer handed over, not copied out of it. The buffer must then live as long as the session (IN_PLACE holds it).
const ORT_IN_PLACE = { use_ort_model_bytes_directly: '1', use_ort_model_bytes_for_initializers: '1' };
const IN_PLACE = new WeakMap();
// Node's fs reads at most 2 GiB into one buffer; a larger .ort graph is read by onnxruntime from its path
const MAX_READ_BYTES = 2 ** 31 - 1;

/**
 * One graph's session. With a local path (Node's native backend) onnxruntime reads a .onnx graph and its external
 * data from the bundle directory itself (memory-mapped); a .ort graph is read here and used in place by onnxruntime
 * (ORT_IN_PLACE), where reading it from its path would hold the file and a copy of every weight. Otherwise the
 * bytes are handed over, external data files through the `externalData` session option under the names the graph
 * refers to them by.
 * @param {import('./manifest.js').GraphEntry} entry
 */
export async function createSession(ort, files, entry, options = {}) {
  const opts = { graphOptimizationLevel: 'all', logSeverityLevel: 3, ...options };
  delete opts.byPath;
  const ortFormat = entry.file.endsWith('.ort');
  try {
    if (files.path && options.byPath !== false && (!ortFormat || (await files.size(entry.file)) > MAX_READ_BYTES)) {
      return await ort.InferenceSession.create(files.path(entry.file), opts);
    }
    const externalData = [];
    for (const name of entry.dataFiles) externalData.push({ path: name, data: await files.read(name) });
    const model = await files.read(entry.file);
    if (ortFormat) opts.extra = { ...opts.extra, session: { ...opts.extra?.session, ...ORT_IN_PLACE } };
    const session = await ort.InferenceSession.create(model, { ...opts, externalData });
    if (ortFormat) IN_PLACE.set(session, model);
    for (const name of [entry.file, ...entry.dataFiles]) files.forget?.(name);
    return session;
  } catch (e) {
    if (e instanceof BundleError) throw e;
    throw new BundleError(`${entry.file}: onnxruntime cannot load this graph (${oneLine(e)})`);
  }
}

/**
 * The manifest's input/output lists must be the graph's, and include every name the runtime feeds or fetches
 * (io_names.expected), with the sizes it derives from the manifest where the graph fixes them.
 */
export function checkIO(session, entry, expected) {
  const same = (a, b) => a.length === b.length && a.every((n) => b.includes(n));
  if (!same(entry.inputs, session.inputNames) || !same(entry.outputs, session.outputNames)) {
    throw new BundleError(`${entry.file}: the graph's inputs/outputs are not the manifest's; graph and manifest ` +
      'do not belong together');
  }
  const meta = new Map([...(session.inputMetadata ?? []), ...(session.outputMetadata ?? [])].map((m) => [m.name, m]));
  for (const [name, axes] of Object.entries(expected)) {
    if (!session.inputNames.includes(name) && !session.outputNames.includes(name)) {
      throw new BundleError(`${entry.file}: the graph has no ${name}; graph and manifest do not belong together`);
    }
    const shape = meta.get(name)?.shape ?? [];
    for (const [axis, size] of Object.entries(axes)) {
      const have = shape[Number(axis)];
      if (typeof have === 'number' && have !== size) {
        throw new BundleError(`${entry.file}: ${name} has size ${have} on axis ${axis} where the manifest says ` +
          `${size}; graph and manifest do not belong together`);
      }
    }
  }
}

/** The manifest's KV-cache layout must be the decoder graph's (pgexport_runtime/session.py check_kv_layout): a
 *  "shared" graph returns a present as long as its past, a "concat" graph one longer by this call's tokens. */
export function checkKvLayout(session, entry, layout, past, present) { // layout: a kv_layout.js KvLayout
  const meta = new Map([...(session.inputMetadata ?? []), ...(session.outputMetadata ?? [])].map((m) => [m.name, m]));
  const axis = (name) => meta.get(name)?.shape?.[2];
  if (axis(past) === undefined || axis(present) === undefined) return; // no metadata: onnxruntime will say
  const inPlace = axis(past) === axis(present);
  if (inPlace !== layout.inPlace) {
    const does = inPlace ? 'writes its KV cache in place' : 'returns past + new tokens as its present';
    throw new BundleError(`${entry.file} ${does}, but the manifest says KV-cache layout '${layout.name}'; graph and ` +
      'manifest do not belong together');
  }
}
