// Bounds on what a caller may ask for, checked before any work (pgexport_runtime/limits.py: the same words, and
// the same numbers, from the contract).

import { LimitError, UserError } from './errors.js';
import contract from './contract.js';

const L = contract.limits;
export const DEFAULT_MAX_IMAGE_PIXELS = L.default_max_image_pixels; // Pillow's default
export const MIN_TEMPERATURE = L.min_temperature;
export const MAX_SEED = 2n ** BigInt(L.seed_bits) - 1n;
export const MAX_PROMPT_CHARS = L.max_prompt_chars;
const PIXELS_HINT = 'raise the limit with --max-image-pixels (CLI) or maxImagePixels (API) if the image is trusted';

export function checkMaxImagePixels(limit) {
  if (!Number.isInteger(limit) || limit < 1) throw new LimitError(`max_image_pixels must be a positive integer, not ${limit}`);
  return limit;
}

export function checkImageSize(width, height, limit, what = 'image') {
  if (width < 1 || height < 1) throw new UserError(`${what} is empty (${width}x${height} pixels)`);
  if (width * height > limit) {
    throw new LimitError(`${what} has ${width}x${height} = ${(width * height).toLocaleString('en-US')} pixels, more than ` +
      `the limit of ${limit.toLocaleString('en-US')}; ${PIXELS_HINT}`);
  }
}

export function checkSampling({ doSample, temperature, topK, topP, seed }) {
  if (typeof doSample !== 'boolean') throw new LimitError(`do_sample must be true or false, not ${doSample}`);
  if (typeof temperature !== 'number' || !(temperature >= MIN_TEMPERATURE) || !Number.isFinite(temperature)) {
    throw new LimitError(`temperature must be a finite number >= ${MIN_TEMPERATURE}, not ${temperature} ` +
      '(for the most likely token, decode greedily)');
  }
  if (typeof topP !== 'number' || !(topP > 0 && topP <= 1)) throw new LimitError(`top_p must be in (0, 1] (1 = off), not ${topP}`);
  if (!Number.isInteger(topK) || topK < 0) throw new LimitError(`top_k must be an integer >= 0 (0 = off), not ${topK}`);
  if (seed !== null && seed !== undefined) {
    const ok = (typeof seed === 'bigint' || Number.isSafeInteger(seed)) && BigInt(seed) >= 0n && BigInt(seed) <= MAX_SEED;
    if (!ok) throw new LimitError(`seed must be an integer in 0..2**64-1, not ${seed}`);
  }
}

export function checkTopK(topK, vocabSize) {
  if (topK > vocabSize) throw new LimitError(`top_k ${topK} is larger than the model's vocabulary of ${vocabSize} tokens`);
}

export function checkPrompt(prompt) {
  if (typeof prompt !== 'string') throw new UserError(`a prompt must be a string, not ${typeof prompt}`);
  if (!prompt.trim()) throw new UserError("empty prompt: give a task prefix such as 'caption en', 'ocr' or 'detect cat'");
  if (prompt.length > MAX_PROMPT_CHARS) {
    throw new LimitError(`the prompt has ${prompt.length} characters, more than the ${MAX_PROMPT_CHARS} this runtime reads`);
  }
  utf8(prompt, 'the prompt');
  return prompt;
}

/** Lone surrogates: what a command-line argument that is not UTF-8 becomes (argv_node.js), as in Python. */
function utf8(text, what) {
  if (!text.isWellFormed()) throw new LimitError(`${what} is not valid UTF-8 text`);
}

/** Everything about a request that needs no model (maxNewTokens null = the bundle's default). */
export function checkRequest(prompts, maxNewTokens, stopStrings) {
  for (const p of prompts) checkPrompt(p);
  if (maxNewTokens !== null && maxNewTokens !== undefined && (!Number.isInteger(maxNewTokens) || maxNewTokens < 1)) {
    throw new LimitError(`max_new_tokens must be an integer >= 1 (null = the bundle's default), not ${maxNewTokens}`);
  }
  if (!Array.isArray(stopStrings)) throw new LimitError('stop strings must be a list of strings, not one string');
  stopStrings.forEach((s, i) => {
    if (typeof s !== 'string' || !s) throw new LimitError(`stop string ${i + 1} is empty: it would stop before the first token`);
    utf8(s, `stop string ${i + 1}`);
  });
}

/** The longest prefix (image tokens + <bos> + prompt + newline) and the new tokens fit the model's positions. */
export function checkPositions(prefixTokens, maxNewTokens, g) {
  const limit = g.max_position_embeddings;
  if (prefixTokens + maxNewTokens > limit) {
    const textTokens = prefixTokens - g.num_image_tokens;
    throw new LimitError(`the prompt takes ${prefixTokens} positions (${g.num_image_tokens} image + ${textTokens} text ` +
      `tokens) and max_new_tokens is ${maxNewTokens}: ${prefixTokens + maxNewTokens} > the model's limit of ${limit} ` +
      'positions; shorten the prompt or lower max_new_tokens');
  }
}
