#!/usr/bin/env bash
# VBench without its pinned dependencies (see README, "VBench"). Safe to run twice.
set -euo pipefail
python -m pip install -q --no-deps vbench==0.1.5
