// Image decoding in the browser with the browser's own decoders; hands over straight RGBA.
// - Images that may have transparency (PNG, GIF, WebP): WebCodecs' ImageDecoder with premultiplyAlpha 'none' and
//   colorSpaceConversion 'none', copied out as RGBA: the file's own straight pixels. (A 2D canvas stores
//   premultiplied pixels, so semi-transparent pixels read back from one can be a level off.) ImageDecoder does not
//   apply EXIF orientation, which these formats rarely carry.
// - JPEG (opaque, and often EXIF-rotated) and anything ImageDecoder does not take: createImageBitmap with
//   imageOrientation 'from-image' and the same options, drawn on an OffscreenCanvas (exact for opaque pixels).
// Only the raster formats Pillow also reads are decoded (image_formats.js: no SVG), as in Node.

import { UserError, oneLine } from './errors.js';
import { checkImageFormat } from './image_formats.js';
import * as limits from './limits.js';

/**
 * @param {Blob|ArrayBuffer|Uint8Array} input
 * @returns {Promise<import('./preprocess.js').RgbaImage>}
 */
export async function decodeImage(input, maxPixels = limits.DEFAULT_MAX_IMAGE_PIXELS) {
  limits.checkMaxImagePixels(maxPixels);
  const bytes = new Uint8Array(input instanceof Blob ? await input.arrayBuffer() : input);
  const type = `image/${checkImageFormat(bytes)}`;
  if (type !== 'image/jpeg' && globalThis.ImageDecoder && (await ImageDecoder.isTypeSupported(type))) {
    return viaImageDecoder(bytes, type, maxPixels);
  }
  return viaCanvas(bytes, maxPixels);
}

async function viaImageDecoder(bytes, type, maxPixels) {
  let decoder;
  let frame;
  try {
    decoder = new ImageDecoder({ data: bytes, type, premultiplyAlpha: 'none', colorSpaceConversion: 'none' });
    frame = (await decoder.decode()).image;
  } catch (e) {
    decoder?.close();
    throw new UserError(`cannot read image: ${oneLine(e)}`);
  }
  try {
    const width = frame.displayWidth;
    const height = frame.displayHeight;
    limits.checkImageSize(width, height, maxPixels);
    const data = new Uint8Array(width * height * 4);
    await frame.copyTo(data, { format: 'RGBA' });
    return { width, height, data };
  } finally {
    frame.close();
    decoder.close();
  }
}

async function viaCanvas(bytes, maxPixels) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(new Blob([bytes]), {
      premultiplyAlpha: 'none', colorSpaceConversion: 'none', imageOrientation: 'from-image',
    });
  } catch (e) {
    throw new UserError(`cannot read image: ${oneLine(e)}`);
  }
  try {
    limits.checkImageSize(bitmap.width, bitmap.height, maxPixels);
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    const { data } = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
    return { width: bitmap.width, height: bitmap.height, data };
  } finally {
    bitmap.close();
  }
}
