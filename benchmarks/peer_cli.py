"""The timing options every peer script's `time` command takes (standard library only: the OpenVINO script runs
in an environment without pgexport)."""

from __future__ import annotations

import argparse


def add_timing(parser: argparse.ArgumentParser, prompt_tokens: int = 259) -> argparse.ArgumentParser:
    parser.add_argument("--prompt-tokens", type=int, default=prompt_tokens, help="tokens to prefill")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens after the prefill")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up")
    parser.add_argument("--threads", type=int, default=0, help="0: every core")
    return parser
