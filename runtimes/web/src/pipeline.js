// PaliGemma on a bundle: load, preprocess, tokenize, generate, answer. The runtime's public API, written against
// onnxruntime-common's API: `ort` is onnxruntime-node or onnxruntime-web, `files` a BundleFiles (files_node.js,
// files_web.js). Entry points that pick both: node.js, browser.js.

import * as io from './io_names.js';
import * as limits from './limits.js';
import { BundleError, UserError } from './errors.js';
import { encodeImage, generate } from './generate.js';
import { DEFAULT_MAX_BYTES, ImageCache } from './image_cache.js';
import { INT8_PREFILL_GRAPH, loadManifest } from './manifest.js';
import { MaskDecoder } from './masks.js';
import { preprocess } from './preprocess.js';
import { PromptTokenizer } from './prompt.js';
import { sampling as makeSampling } from './sampling.js';
import { checkIO, checkKvLayout, createSession } from './session.js';
import { toAnswer } from './typed_answers.js';

export const PREFILL_CHOICES = ['auto', 'int8', 'decoder'];

const now = () => globalThis.performance.now();

export class PaliGemma {
  /**
   * @param {object} o
   * @param {object} o.ort onnxruntime-node or onnxruntime-web
   * @param {import('./manifest.js').BundleFiles} o.files
   * @param {object} [o.sessionOptions] onnxruntime session options (executionProviders, threads...)
   * @param {'preallocated'|'handoff'} [o.kvMode] how the KV cache is kept (kv_cache.js): preallocated on
   *   onnxruntime-node, handoff on onnxruntime-web
   * @param {boolean} [o.gpu] keep the KV cache on the GPU (WebGPU; implies handoff)
   * @param {number} [o.imageCacheBytes] bounds the image-feature cache (image_cache.js; 0 turns it off): several
   *   prompts about one image, in one call or in several, pay for the vision encoder once
   * @param {(bytes: Uint8Array) => Promise<string>} [o.sha256] the cache's hash (files_node.js / files_web.js
   *   sha256Hex); needed when the cache is on
   * @param {{prompts: string[], maxNewTokens?: number|null, sampling?: object, stopStrings?: string[]}} [o.request]
   *   a request known before loading (the command line's): held to the model's bounds (vocabulary, positions)
   *   before any graph loads, so that one that cannot fit costs no session
   */
  static async load({ ort, files, sessionOptions = {}, kvMode = 'preallocated', gpu = false, verify = true,
    imageCacheBytes = DEFAULT_MAX_BYTES, sha256 = null, request = null, prefill = 'decoder', int8Units = false }) {
    if (!PREFILL_CHOICES.includes(prefill)) {
      throw new UserError(`unknown prefill ${prefill} (use one of ${PREFILL_CHOICES.join(', ')})`);
    }
    if (!Number.isSafeInteger(imageCacheBytes) || imageCacheBytes < 0) {
      throw new UserError(`imageCacheBytes must be a non-negative integer, not ${imageCacheBytes}`);
    }
    const imageCache = imageCacheBytes ? new ImageCache(sha256, imageCacheBytes) : null;
    // the int8 prefill graph is read (hashed, loaded) only where it will run: forced, or (auto) on int8 matrix units
    const wantInt8 = prefill === 'int8' || (prefill === 'auto' && int8Units && !gpu);
    const manifest = await loadManifest(files, { verify, unusedGraphs: wantInt8 ? [] : [INT8_PREFILL_GRAPH] });
    if (prefill === 'int8' && !manifest.graphs[INT8_PREFILL_GRAPH]) {
      throw new UserError("prefill 'int8' needs a bundle built with --int8-prefill (this one has no decoder_int8 " +
        "graph); use prefill 'auto' or 'decoder'");
    }
    const g = manifest.geometry;
    const t = manifest.tokenizer;
    // before the graphs: a broken tokenizer is found without loading them
    const tokenizer = new PromptTokenizer(await files.read(t.file), g, t.imageToken, t.bosToken, `${files.where}/${t.file}`);
    files.forget?.(t.file);
    if (request) checkFits(manifest, tokenizer, request.prompts, request);
    const session = async (name, extra = {}) => {
      const entry = manifest.graphs[name];
      const s = await createSession(ort, files, entry, { ...sessionOptions, ...extra });
      checkIO(s, entry, io.expected(name, g, manifest.preprocessing.size));
      return s;
    };
    const presentOnGpu = {};
    if (gpu) for (let i = 0; i < g.text_layers; i++) Object.assign(presentOnGpu, { [io.presentKey(i)]: 'gpu-buffer', [io.presentValue(i)]: 'gpu-buffer' });
    if (gpu && manifest.kvLayout.inPlace) { // its GroupQueryAttention is causal=0 (the prefix-LM mask is in its bias)
      throw new BundleError(`KV-cache layout '${manifest.kvLayout.name}' does not run on WebGPU (onnxruntime-web's ` +
        "GroupQueryAttention there has no causal=0): use device 'wasm' or a bundle built with --kv-cache concat");
    }
    // the largest decoder first: its load's transient comes with nothing else loaded
    const int8Prefill = wantInt8 && manifest.graphs[INT8_PREFILL_GRAPH] ? await session(INT8_PREFILL_GRAPH) : null;
    const graphs = {
      int8Prefill, // runs the prefills where chosen; `decoder` the decode steps, on the same cache
      vision: await session('vision_encoder'),
      projector: await session('projector'),
      decoder: await session('decoder', gpu ? { preferredOutputLocation: presentOnGpu } : {}),
      kvMode: gpu ? 'handoff' : kvMode,
      kvLayout: manifest.kvLayout,
    };
    checkKvLayout(graphs.decoder, manifest.graphs.decoder, manifest.kvLayout, io.pastKey(0), io.presentKey(0));
    if (int8Prefill) {
      checkKvLayout(int8Prefill, manifest.graphs[INT8_PREFILL_GRAPH], manifest.kvLayout, io.pastKey(0), io.presentKey(0));
    }
    const maskDecoder = manifest.graphs.mask_decoder ? new MaskDecoder(ort, await session('mask_decoder')) : null;
    return new PaliGemma(ort, manifest, tokenizer, graphs, maskDecoder, imageCache);
  }

  constructor(ort, manifest, tokenizer, graphs, maskDecoder, imageCache = null) {
    Object.assign(this, { ort, manifest, tokenizer, graphs, maskDecoder, imageCache, geometry: manifest.geometry });
    this.timings = {}; // the last generation's stages, in ms
  }

  /** The graph that runs prefills: 'decoder_int8' where PaliGemma.load's prefill chose it, else 'decoder'. */
  get prefillGraph() {
    return this.graphs.int8Prefill ? INT8_PREFILL_GRAPH : 'decoder';
  }

  /** Decoded images -> pixel_values {data, dims}. */
  pixelValues(images) {
    return preprocess(images, this.manifest.preprocessing);
  }

  /** Decoded images -> image embeddings [B, N, D] (flat); with the image cache on, each distinct image is encoded once. */
  async imageEmbeddings(images) {
    return this.embeddingsOf(this.pixelValues(images));
  }

  /** pixel_values -> image embeddings, through the image cache when it is on. */
  embeddingsOf(pixels) {
    if (this.imageCache === null) return encodeImage(this.ort, this.graphs, pixels);
    return this.imageCache.embeddings(pixels, (p) => encodeImage(this.ort, this.graphs, p));
  }

  /**
   * Answer one prompt per image. onToken(row, tokenId, newText) streams as tokens arrive.
   * @param {import('./preprocess.js').RgbaImage[]} images decoded (images_node.js / images_web.js)
   * @param {string[]} prompts
   * @returns {Promise<{prompt: string, text: string, tokens: number[]}[]>}
   */
  async generate(images, prompts, { maxNewTokens = null, sampling = makeSampling(), stopStrings = [], onToken = null } = {}) {
    if (!Array.isArray(images) || !Array.isArray(prompts)) {
      throw new UserError('generate takes lists: generate([image], [prompt])');
    }
    const prefix = checkFits(this.manifest, this.tokenizer, prompts, { maxNewTokens, sampling, stopStrings });
    if (images.length !== prompts.length) {
      throw new UserError(`${images.length} images for ${prompts.length} prompts: give one image per prompt`);
    }
    if (!prompts.length) return [];
    const n = maxNewTokens ?? this.manifest.maxNewTokens;
    const t = { start: now() };
    const pixels = this.pixelValues(images);
    t.preprocessed = now();
    const embeds = await this.embeddingsOf(pixels);
    t.encoded = now();
    const texts = prompts.map(() => '');
    const streamed = prompts.map(() => []);
    const stream = (row, token) => {
      t.firstToken ??= now();
      if (!onToken) return;
      streamed[row].push(token);
      const text = this.tokenizer.decode(streamed[row]);
      onToken(row, token, text.slice(texts[row].length));
      texts[row] = text;
    };
    const shouldStop = stopStrings.length
      ? (row, tokens) => stopStrings.some((s) => this.tokenizer.decode(tokens).includes(s)) : null;
    const rows = await generate(this.ort, this.graphs, this.geometry, embeds, prefix, n, sampling,
      this.geometry.eos_token_id, shouldStop, stream);
    t.end = now();
    const tokens = rows.reduce((a, r) => a + r.length, 0);
    this.timings = {
      preprocess_ms: t.preprocessed - t.start, vision_ms: t.encoded - t.preprocessed,
      prefill_ms: t.firstToken - t.encoded, decode_ms: t.end - t.firstToken, tokens,
      decode_tokens_per_s: tokens > prompts.length ? ((tokens - prompts.length) * 1000) / (t.end - t.firstToken) : null,
    };
    return rows.map((tokensRow, i) => {
      let text = this.tokenizer.decode(tokensRow);
      for (const s of stopStrings) if (text.includes(s)) text = text.slice(0, text.indexOf(s));
      return { prompt: prompts[i], text, tokens: tokensRow };
    });
  }

  /** generate, then each text parsed into detections / segments in pixels of the original image. */
  async answers(images, prompts, options = {}) {
    const results = await this.generate(images, prompts, options);
    const out = [];
    for (let i = 0; i < results.length; i++) {
      out.push(await toAnswer(results[i], images[i].width, images[i].height, this.maskDecoder));
    }
    return out;
  }

  async answer(image, prompt, options = {}) {
    return (await this.answers([image], [prompt], options))[0];
  }

  async release() {
    for (const s of [this.graphs.vision, this.graphs.projector, this.graphs.decoder, this.maskDecoder?.session]) {
      await s?.release();
    }
  }
}

/**
 * A request held to every bound, those that need the bundle's tokenizer and geometry included (its vocabulary and
 * positions), but not its graphs. @returns the prompts' left-padded token ids (PromptTokenizer.batch)
 */
function checkFits(manifest, tokenizer, prompts, { maxNewTokens = null, sampling = makeSampling(), stopStrings = [] }) {
  limits.checkRequest(prompts, maxNewTokens, stopStrings);
  limits.checkTopK(sampling.topK, manifest.geometry.vocab_size);
  const prefix = tokenizer.batch(prompts);
  if (prompts.length) limits.checkPositions(prefix.width, maxNewTokens ?? manifest.maxNewTokens, manifest.geometry);
  return prefix;
}
