"""The PyTorch reference's teacher-forced scoring (the gate's log-probabilities) on any continuation."""

from __future__ import annotations

import numpy as np
import torch

from pgexport.verify.parity import parity_image
from pgexport.verify.reference import TorchReference, log_softmax


def test_scoring_is_transformers_own_and_takes_a_continuation_holding_the_image_id(tiny):
    """A random-weight model may emit the <image> id; given whole to transformers, a continuation holding it
    counts one placeholder more than the image has features (a gate reference failed on exactly that)."""
    ref = TorchReference(tiny.model, tiny.processor, tiny.geometry)
    inputs = ref.inputs([parity_image(tiny.geometry.image_size, seed=3)], ["caption en"])
    plain = [5, 9, 11, 7]
    ids = torch.cat([inputs["input_ids"], torch.tensor([plain])], dim=1)
    types = torch.cat([torch.zeros_like(inputs["input_ids"]), torch.ones(1, len(plain), dtype=torch.long)], 1)
    with torch.no_grad():
        own = tiny.model(input_ids=ids, pixel_values=inputs["pixel_values"], attention_mask=torch.ones_like(ids),
                         token_type_ids=types).logits[0]
    seq = inputs["input_ids"].shape[1]
    want = log_softmax(own[seq - 1:seq - 1 + len(plain)].float().numpy())
    np.testing.assert_allclose(ref.scored(inputs, plain), want, atol=1e-5)
    image = tiny.geometry.image_token_id
    held = ref.scored(inputs, [5, image, 11, 7])
    assert held.shape == want.shape and np.isfinite(held).all()
    np.testing.assert_allclose(held[:2], want[:2], atol=1e-5)  # causal: what precedes the <image> id is unchanged
    assert not np.allclose(held[2:], want[2:], atol=1e-3)  # and it is read as a token, not as the image
