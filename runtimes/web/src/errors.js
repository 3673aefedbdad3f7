// The runtime's two kinds of mistake, each a one-line message (as pgexport_runtime/errors.py).

import { visible } from './escape.js';

/**
 * A mistake in what the caller asked for (a prompt, an image, a limit). Its message is one line whatever it quotes
 * (a file name, a manifest string): what a terminal would act on, newlines included, is escaped (escape.js).
 */
export class UserError extends Error {
  constructor(message) {
    super(visible(message));
    this.name = 'UserError';
  }
}

/** A bundle that is not one this runtime reads: missing, tampered, or of another schema. */
export class BundleError extends UserError {
  constructor(message) {
    super(message);
    this.name = 'BundleError';
  }
}

/** A request over one of the runtime's bounds (limits.js). */
export class LimitError extends UserError {
  constructor(message) {
    super(message);
    this.name = 'LimitError';
  }
}

/** The first line of any error's message, at most `max` characters. */
export function oneLine(err, max = 300) {
  const text = String(err?.message ?? err).split(/\s+/).join(' ').trim();
  return (text || err?.name || 'error').slice(0, max);
}
