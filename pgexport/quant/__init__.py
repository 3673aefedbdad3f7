"""Quantization of bundle graphs: recipes, block-wise packing, graph rewrites, GPTQ, accuracy gate."""
