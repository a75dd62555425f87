#!/usr/bin/env bash
# VBench without its pinned dependencies (it pins transformers 4.33, numpy<2, timm ...; see docs/vbench.md).
# Only what `import vbench` and its temporal_flickering dimension import is added: decord (vbench.utils
# imports it at module level) and OpenCV (temporal_flickering decodes with cv2). torch, torchvision,
# numpy, pillow and tqdm come from our own requirements. Safe to run twice.
set -euo pipefail
python -m pip install -q --no-deps vbench==0.1.5
python -m pip install -q --no-deps decord==0.6.0 opencv-python-headless
python -c "import vbench, vbench.temporal_flickering" 
