#!/usr/bin/env node
// The Node command line, mirroring `pgexport run`:
//   node runtimes/web/cli.js BUNDLE --image PATH --prompt TEXT [--prompt TEXT...] [--json] [--max-new-tokens N]
//     [--backend node|wasm] [--prefill auto|int8|decoder]
// Several --prompt: one image, the prompts answered in order, the image encoded once (the image cache); with --json
// one object per line and prompt, else a `[prompt]` line before each answer (pgexport_runtime/cli.py run_and_print).
// Every bound is checked before the bundle's graphs load; a mistake is one line on stderr and exit status 2.
// What is shown for people (answers, labels, the [prompt] lines, warnings, errors) has the characters a terminal would
// act on escaped (src/escape.js); --json is the exact text.

import { parseArgs } from 'node:util';
import { PREFILL_CHOICES, UserError, answerToJson, decodeImage, loadBundle, sampling } from './src/node.js';
import { commandLine } from './src/argv_node.js';
import { repr, visible } from './src/escape.js';
import { checkRequest } from './src/limits.js';

const USAGE = 'usage: cli.js BUNDLE --image PATH --prompt TEXT [--prompt TEXT...] [--json] [--max-new-tokens N] ' +
  '[--backend node|wasm] [--prefill auto|int8|decoder] [--threads N] [--stop TEXT] ' +
  '[--sample --temperature T --top-k K --top-p P --seed S]';

function integer(value, name) {
  if (value === undefined) return null;
  if (!/^-?\d+$/.test(value)) throw new UserError(`${name}: ${repr(value)} is not an integer`);
  return Number(value);
}

function number(value, name, fallback) {
  if (value === undefined) return fallback;
  const v = Number(value);
  if (value.trim() === '' || Number.isNaN(v)) throw new UserError(`${name}: ${repr(value)} is not a number`);
  return v;
}

function parse(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv, allowPositionals: true, strict: true,
      options: {
        image: { type: 'string' }, prompt: { type: 'string', multiple: true }, json: { type: 'boolean', default: false },
        'max-new-tokens': { type: 'string' }, backend: { type: 'string', default: 'node' },
        prefill: { type: 'string', default: 'auto' },
        threads: { type: 'string' }, stop: { type: 'string', multiple: true, default: [] },
        sample: { type: 'boolean', default: false }, temperature: { type: 'string' }, 'top-k': { type: 'string' },
        'top-p': { type: 'string' }, seed: { type: 'string' }, help: { type: 'boolean', default: false },
      },
    });
  } catch (e) {
    throw new UserError(`${e.message.split('\n')[0]} (${USAGE})`);
  }
  const { values: v, positionals } = parsed;
  if (v.help) return { help: true };
  if (positionals.length !== 1) throw new UserError(`give exactly one bundle directory (${USAGE})`);
  if (v.image === undefined || v.prompt === undefined) throw new UserError(`--image and --prompt are required (${USAGE})`);
  if (!PREFILL_CHOICES.includes(v.prefill)) {
    throw new UserError(`--prefill ${repr(v.prefill)} is not one of ${PREFILL_CHOICES.join(', ')}`);
  }
  const seed = v.seed === undefined ? null : /^\d+$/.test(v.seed) ? BigInt(v.seed) : v.seed;
  return {
    bundle: positionals[0], image: v.image, prompts: v.prompt, json: v.json, backend: v.backend, stop: v.stop,
    prefill: v.prefill,
    maxNewTokens: integer(v['max-new-tokens'], '--max-new-tokens'), threads: integer(v.threads, '--threads') ?? 0,
    sampling: sampling({
      doSample: v.sample, temperature: number(v.temperature, '--temperature', 1.0),
      topK: integer(v['top-k'], '--top-k') ?? 0, topP: number(v['top-p'], '--top-p', 1.0), seed,
    }),
  };
}

async function main(argv) {
  const a = parse(argv);
  if (a.help) {
    console.log(USAGE);
    return 0;
  }
  checkRequest(a.prompts, a.maxNewTokens, a.stop);
  if (a.threads < 0 || a.threads > 256) throw new UserError(`--threads ${a.threads} is out of range (0..256)`);
  const image = await decodeImage(a.image);
  const options = { maxNewTokens: a.maxNewTokens, sampling: a.sampling, stopStrings: a.stop };
  const pg = await loadBundle(a.bundle, { backend: a.backend, threads: a.threads, prefill: a.prefill,
    request: { prompts: a.prompts, ...options } });
  for (const prompt of a.prompts) {
    if (a.prompts.length > 1 && !a.json) console.log(`[${visible(prompt)}]`);
    printAnswer(await pg.answer(image, prompt, options), a.json);
  }
  await pg.release();
  return 0;
}

/** One answer as `pgexport run` prints it (describe.answer_lines): JSON on one line, or text, boxes, warnings. */
function printAnswer(answer, json) {
  if (json) {
    console.log(JSON.stringify(answerToJson(answer)));
    return;
  }
  for (const w of answer.warnings) console.error(`warning: ${visible(w)}`);
  console.log(visible(answer.text));
  for (const o of [...answer.detections, ...answer.segments]) {
    const [x0, y0, x1, y1] = o.box.map((v) => v.toFixed(0));
    const area = o.mask ? `, mask ${o.mask.reduce((n, m) => n + m, 0)} px` : '';
    console.log(`  ${visible(o.label)}: box (${x0}, ${y0}) - (${x1}, ${y1}) px${area}`);
  }
}

main(commandLine()).then((code) => {
  process.exitCode = code;
}, (e) => {
  // a UserError (bad input, bad bundle) is the user's: one line. Anything else is a bug: say so, still one line.
  console.error(e instanceof UserError ? `error: ${e.message}` : `error: internal error: ${visible(String(e?.message ?? e).split('\n')[0])}`);
  process.exitCode = e instanceof UserError ? 2 : 1;
});
