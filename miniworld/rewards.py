"""The mini world's reward models, registered as ``miniworld-image`` and ``miniworld-video``.

Both are the project's generic reward classes with the mini world's small trained weights
(shipped in ``miniworld/assets/``, trained by ``t2v-turbo miniworld build``):

- ``miniworld-image``: ``OpenCLIPReward`` on a small custom open_clip CLIP, fed the caption
  without its motion phrase (it was trained on single frames, so it cannot see motion);
- ``miniworld-video``: ``ViCLIPReward`` on our tiny ViCLIP, all 8 frames (stride 1) of a clip.
"""

from __future__ import annotations

import os

from rewards.base import register_reward


@register_reward("miniworld-image")
def miniworld_image(checkpoint: str | os.PathLike | None = None, num_frames: int = 5, dtype: str = "float32"):
    """Image-text reward of the mini world; ``checkpoint`` = a folder with the open_clip config + weights."""
    from miniworld.assets import IMAGE_REWARD, asset_path
    from miniworld.tokenizer import MiniWorldTokenizer
    from miniworld.train_rewards import IMAGE_CONFIG_FILE, IMAGE_PREPROCESS, IMAGE_WEIGHTS_FILE
    from rewards.image_text import OpenCLIPReward

    folder = asset_path(checkpoint, IMAGE_REWARD)
    config = folder / IMAGE_CONFIG_FILE
    if not config.is_file():
        raise FileNotFoundError(f"miniworld-image reward: no {IMAGE_CONFIG_FILE} in {folder.resolve()} (run `t2v-turbo miniworld build`)")
    return OpenCLIPReward(str(config), folder, checkpoint_file=IMAGE_WEIGHTS_FILE,
                          checkpoint_source="`t2v-turbo miniworld build`", tokenizer=MiniWorldTokenizer(strip_motion=True),
                          preprocess=dict(IMAGE_PREPROCESS), frame_selection={"mode": "random", "num_frames": num_frames},
                          dtype=dtype)


@register_reward("miniworld-video")
def miniworld_video(checkpoint: str | os.PathLike | None = None, dtype: str = "float32"):
    """Video-text reward of the mini world; ``checkpoint`` = a folder with the ViCLIP config + weights."""
    import json

    from miniworld.assets import VIDEO_REWARD, asset_path
    from miniworld.tokenizer import MiniWorldTokenizer
    from miniworld.train_rewards import VIDEO_CONFIG_FILE, VIDEO_WEIGHTS_FILE
    from rewards.video_text import ViCLIPReward

    folder = asset_path(checkpoint, VIDEO_REWARD)
    config = folder / VIDEO_CONFIG_FILE
    if not config.is_file():
        raise FileNotFoundError(f"miniworld-video reward: no {VIDEO_CONFIG_FILE} in {folder.resolve()} (run `t2v-turbo miniworld build`)")
    return ViCLIPReward(str(folder / VIDEO_WEIGHTS_FILE), json.loads(config.read_text()), tokenizer=MiniWorldTokenizer(),
                        num_frames=8, stride=1, image_size=32, dtype=dtype)
