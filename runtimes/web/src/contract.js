// Written by scripts/contract.mjs from runtimes/python/pgexport_runtime/contract.json; edit that file, not this one.

const contract = {
  "about": "What both runtimes (pgexport_runtime in Python, runtimes/web in JavaScript) and the exporter agree on: graph input/output names and the sizes the manifest fixes, KV-cache layouts, manifest bounds and request limits. contract.py reads it for Python; runtimes/web/scripts/contract.mjs writes it into src/contract.js for JavaScript, and a test compares the two.",
  "names": {
    "PIXEL_VALUES": "pixel_values",
    "VISION_FEATURES": "vision_features",
    "IMAGE_EMBEDS": "image_embeds",
    "INPUT_IDS": "input_ids",
    "DECODER_IMAGE_EMBEDS": "image_embeds",
    "ATTENTION_MASK": "attention_mask",
    "POSITION_IDS": "position_ids",
    "TOKEN_TYPE_IDS": "token_type_ids",
    "LOGITS_INDEX": "logits_index",
    "LOGITS": "logits",
    "SEG_CODES": "seg_codes",
    "MASKS": "masks",
    "PAST_KEY": "past_key_values.{i}.key",
    "PAST_VALUE": "past_key_values.{i}.value",
    "PRESENT_KEY": "present.{i}.key",
    "PRESENT_VALUE": "present.{i}.value"
  },
  "axes": {
    "BATCH": "batch",
    "SEQ": "sequence",
    "PAST": "past_sequence",
    "TOTAL": "total_sequence",
    "IMAGE_TOKENS": "image_tokens",
    "KEEP": "logits_kept"
  },
  "graphs": {
    "vision_encoder": {
      "PIXEL_VALUES": {
        "1": 3,
        "2": "image_height",
        "3": "image_width"
      },
      "VISION_FEATURES": {}
    },
    "projector": {
      "VISION_FEATURES": {},
      "IMAGE_EMBEDS": {
        "2": "text_hidden"
      }
    },
    "mask_decoder": {
      "SEG_CODES": {
        "1": 16
      },
      "MASKS": {}
    },
    "decoder": {
      "INPUT_IDS": {},
      "DECODER_IMAGE_EMBEDS": {
        "2": "text_hidden"
      },
      "ATTENTION_MASK": {},
      "POSITION_IDS": {},
      "TOKEN_TYPE_IDS": {},
      "LOGITS_INDEX": {},
      "LOGITS": {
        "2": "vocab_size"
      }
    },
    "decoder_per_layer": {
      "PAST_KEY": {
        "1": "num_kv_heads",
        "3": "head_dim"
      },
      "PAST_VALUE": {
        "1": "num_kv_heads",
        "3": "head_dim"
      },
      "PRESENT_KEY": {
        "1": "num_kv_heads",
        "3": "head_dim"
      },
      "PRESENT_VALUE": {
        "1": "num_kv_heads",
        "3": "head_dim"
      }
    }
  },
  "kv_layouts": {
    "concat": {
      "in_place": false,
      "fixed_shape": false,
      "javascript": true,
      "words": "present = past + new tokens, a second buffer"
    },
    "shared": {
      "in_place": true,
      "fixed_shape": false,
      "javascript": true,
      "words": "one buffer, written in place"
    },
    "static": {
      "in_place": true,
      "fixed_shape": true,
      "javascript": false,
      "words": "one buffer of {max_len} tokens, written in place; every shape fixed, batch 1, prefixes padded to {lengths} tokens"
    }
  },
  "manifest": {
    "schema": "pgexport.bundle",
    "schema_version": 2,
    "reads": [
      1,
      2
    ],
    "file": "manifest.json",
    "graphs": [
      "vision_encoder",
      "projector",
      "decoder"
    ],
    "optional_graphs": [
      "mask_decoder",
      "decoder_int8"
    ],
    "kv_dtypes": [
      "float32"
    ],
    "max_prefill_graphs": 16,
    "max_manifest_bytes": 8388608,
    "max_tokenizer_bytes": 268435456,
    "max_files": 4096
  },
  "geometry": {
    "families": [
      "paligemma",
      "paligemma2"
    ],
    "int_bounds": {
      "image_size": [
        1,
        8192
      ],
      "patch_size": [
        1,
        8192
      ],
      "num_image_tokens": [
        1,
        65536
      ],
      "vision_hidden": [
        1,
        65536
      ],
      "vision_layers": [
        1,
        1024
      ],
      "vision_heads": [
        1,
        1024
      ],
      "vision_intermediate": [
        1,
        262144
      ],
      "text_hidden": [
        1,
        65536
      ],
      "text_layers": [
        1,
        1024
      ],
      "num_heads": [
        1,
        1024
      ],
      "num_kv_heads": [
        1,
        1024
      ],
      "head_dim": [
        1,
        4096
      ],
      "text_intermediate": [
        1,
        262144
      ],
      "vocab_size": [
        1,
        4194304
      ],
      "max_position_embeddings": [
        1,
        4194304
      ]
    }
  },
  "limits": {
    "max_threads": 256,
    "threads_per_cpu": 4,
    "default_max_image_pixels": 89478485,
    "min_temperature": 0.000001,
    "seed_bits": 64,
    "max_prompt_chars": 1000000
  }
};

function deepFreeze(x) {
  if (x && typeof x === 'object') Object.values(x).forEach(deepFreeze);
  return Object.freeze(x);
}

export default deepFreeze(contract);
