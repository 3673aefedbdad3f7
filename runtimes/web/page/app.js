// The runtime's page: pick an image, type a prompt, watch the answer stream, see boxes and masks over the image and
// the time each stage took. The bundle is served at /bundle/ (pgexport serve). ?device=webgpu or ?device=wasm
// picks the backend (browser.js loadBundle); without it, WebGPU where the browser has it and the bundle runs there,
// else WASM.

import { answerToJson, decodeImage, loadBundle } from '/src/browser.js';

const $ = (id) => document.getElementById(id);
const COLOURS = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#42d4f4'];
let pg = null;
let image = null; // {bitmap, rgba}

function status(text, state) {
  $('status').textContent = text;
  $('status').dataset.state = state;
}

async function load() {
  const t0 = performance.now();
  try {
    const device = new URLSearchParams(location.search).get('device') ?? 'auto';
    pg = await loadBundle('/bundle/', { wasmPaths: '/ort/', device });
  } catch (e) {
    status(`Cannot load the bundle: ${e.message}`, 'error');
    return;
  }
  const ms = performance.now() - t0;
  window.pg = pg; // for the console (and the browser test)
  window.pgLoad = { ms, backend: pg.backend, crossOriginIsolated: globalThis.crossOriginIsolated };
  status(`Bundle loaded and verified in ${ms.toFixed(0)} ms on ${pg.backend}. Pick an image.`, 'ready');
  $('run').disabled = false;
}

$('image').addEventListener('change', async () => {
  const file = $('image').files[0];
  image = null; // until this file is decoded: a Run now must not answer about the previous image
  delete $('view').dataset.image;
  if (!file) return;
  try {
    const rgba = await decodeImage(file);
    const bitmap = await createImageBitmap(file);
    image = { bitmap, rgba };
    draw(null);
    $('view').dataset.image = file.name; // the image shown (and answered about) is this file
  } catch (e) {
    status(`Cannot read the image: ${e.message}`, 'error');
  }
});

$('ask').addEventListener('submit', async (event) => {
  event.preventDefault();
  if (!pg || !image) {
    status('Pick an image first.', 'error');
    return;
  }
  $('run').disabled = true;
  $('answer').textContent = '';
  status('Running…', 'running');
  try {
    const answer = await pg.answer(image.rgba, $('prompt').value, {
      maxNewTokens: Number($('max-new-tokens').value) || null,
      onToken: (row, token, text) => { $('answer').textContent += text; },
    });
    window.lastAnswer = { json: answerToJson(answer), timings: pg.timings };
    $('answer').textContent = answer.text;
    draw(answer);
    showTimings(pg.timings);
    status(`Done: ${answer.tokens.length} tokens on ${pg.backend}.`, 'done');
  } catch (e) {
    status(`Error: ${e.message}`, 'error');
  } finally {
    $('run').disabled = false;
  }
});

function draw(answer) {
  const canvas = $('view');
  const { bitmap } = image;
  const scale = Math.min(512 / bitmap.width, 512 / bitmap.height);
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  $('objects').replaceChildren();
  if (!answer) return;
  const objects = [...answer.detections, ...answer.segments];
  objects.forEach((o, i) => {
    const colour = COLOURS[i % COLOURS.length];
    if (o.mask) drawMask(ctx, o.mask, answer.width, answer.height, scale, colour);
    const [x0, y0, x1, y1] = o.box.map((v) => v * scale);
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.fillStyle = colour;
    ctx.font = '14px system-ui';
    ctx.fillText(o.label, x0 + 3, Math.max(y0 - 4, 12));
    const li = document.createElement('li');
    li.textContent = `${o.label}: (${o.box.map((v) => v.toFixed(0)).join(', ')}) px${o.mask ? ', mask' : ''}`;
    li.style.color = colour;
    $('objects').append(li);
  });
}

function drawMask(ctx, mask, width, height, scale, colour) {
  const layer = new OffscreenCanvas(width, height);
  const lctx = layer.getContext('2d');
  const pixels = lctx.createImageData(width, height);
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(colour.slice(i, i + 2), 16));
  mask.forEach((m, i) => { if (m) pixels.data.set([r, g, b, 110], i * 4); });
  lctx.putImageData(pixels, 0, 0);
  ctx.drawImage(layer, 0, 0, width * scale, height * scale);
}

function showTimings(t) {
  const rows = [['preprocess', t.preprocess_ms], ['vision encoder + projector', t.vision_ms],
    ['prefill (time to first token)', t.prefill_ms], ['decode', t.decode_ms]];
  $('timings').replaceChildren(...rows.map(([name, ms]) => {
    const tr = document.createElement('tr');
    tr.innerHTML = `<td>${name}</td><td>${ms.toFixed(1)} ms</td>`;
    return tr;
  }));
  if (t.decode_tokens_per_s) {
    const tr = document.createElement('tr');
    tr.innerHTML = `<td>decode speed</td><td>${t.decode_tokens_per_s.toFixed(1)} tokens/s</td>`;
    $('timings').append(tr);
  }
}

load();
