"""VADER's task rewards (rewards/task.py) on tiny YOLOS / VideoMAE checkpoints saved in the released
layout and loaded through the real path, against transformers' own post-processing and loss."""

import pytest
import torch

from rewards import build_reward
from rewards.preprocessing import normalize, resize_short_side, to_unit_range
from rewards.task import action_label_ids, target_detection_score
from rewards.testing import TINY_TASK_LABELS, save_tiny_videomae, save_tiny_yolos


def test_detection_score_is_the_mean_of_the_targets_thresholded_detections():
    # 1 image, 3 queries, 2 classes + "no object"
    probs = torch.tensor([[[0.7, 0.2, 0.1], [0.15, 0.1, 0.75], [0.3, 0.6, 0.1]]])
    logits = probs.log()
    # query 0: label 0 (0.7), query 1: label 0 at 0.15 (below 0.2), query 2: label 1
    assert target_detection_score(logits, 0, 0.2).item() == pytest.approx(0.7)
    assert target_detection_score(logits, 0, 0.1).item() == pytest.approx((0.7 + 0.15) / 2)
    assert target_detection_score(logits, 1, 0.2).item() == pytest.approx(0.6)
    none = target_detection_score(logits, 1, 0.9)
    assert none.item() == 0.0


@pytest.fixture(scope="module")
def yolos(tmp_path_factory):
    return save_tiny_yolos(tmp_path_factory.mktemp("yolos") / "yolos-base")


@pytest.fixture(scope="module")
def videomae(tmp_path_factory):
    return save_tiny_videomae(tmp_path_factory.mktemp("videomae") / "videomae")


def test_object_removal_equals_one_minus_transformers_postprocessed_scores(yolos):
    from transformers import YolosForObjectDetection, YolosImageProcessor

    reward = build_reward("object-removal", model=str(yolos), target_object="book", threshold=0.2,
                          frame_selection={"mode": "all"})
    frames = torch.rand(2, 3, 3, 24, 40, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scores = reward(frames, ["ignored", "ignored"])
    # oracle: the same pixels through an independently loaded model and transformers' post-processing
    model, processor = YolosForObjectDetection.from_pretrained(str(yolos)), YolosImageProcessor.from_pretrained(str(yolos))
    images = to_unit_range(frames.transpose(1, 2).flatten(0, 1))
    pixels = normalize(resize_short_side(images, 32), processor.image_mean, processor.image_std)
    with torch.no_grad():
        outputs = model(pixel_values=pixels)
    results = processor.post_process_object_detection(outputs, threshold=0.2)
    book = TINY_TASK_LABELS.index("book")
    per_frame = torch.tensor([r["scores"][r["labels"] == book].mean().item() if (r["labels"] == book).any() else 0.0
                              for r in results]).view(2, 3)
    torch.testing.assert_close(scores, (1 - per_frame).mean(dim=1), atol=1e-5, rtol=1e-5)
    assert (per_frame > 0).all()  # the tiny detector sees the target, so the reward has a gradient
    with pytest.raises(ValueError, match="'chair' is not a class of the detector"):
        build_reward("object-removal", model=str(yolos), target_object="chair")


def test_action_reward_is_minus_videomae_cross_entropy(videomae):
    from transformers import VideoMAEForVideoClassification

    reward = build_reward("action-classification", model=str(videomae))
    start = reward.frame_indices(10, torch.Generator().manual_seed(0))[0]
    assert reward.granularity == "clip" and reward.frame_indices(10, torch.Generator().manual_seed(0)) == list(
        range(start, start + 4))  # the model's 4 frames at stride 1
    clips = torch.rand(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    prompts = ["A person riding a horse", "a dog chasing a ball"]
    scores = reward(clips, prompts)
    model = VideoMAEForVideoClassification.from_pretrained(str(videomae))
    with torch.no_grad():
        video = reward.preprocess_clip(clips)
        for i, label in enumerate(["horse", "ball"]):  # the longest class name in each prompt
            target = torch.tensor([TINY_TASK_LABELS.index(label)])
            loss = model(pixel_values=video[i : i + 1], labels=target).loss
            assert scores[i].item() == pytest.approx(-loss.item(), rel=1e-5)
    fixed = build_reward("action-classification", model=str(videomae), label="cat", num_frames=2)
    assert len(fixed.frame_indices(10)) == 2
    with pytest.raises(ValueError, match="tubelet size 2"):
        build_reward("action-classification", model=str(videomae), num_frames=3)


def test_action_labels_from_prompts_match_whole_words():
    label2id = {"playing piano": 0, "piano": 1, "car": 2, "drinking beer": 3}
    assert action_label_ids(["A person playing piano", "a red car", "DRINKING BEER at night"], label2id) == [0, 2, 3]
    with pytest.raises(ValueError, match="'a cartoon' names no action class"):
        action_label_ids(["a cartoon"], label2id)
    assert action_label_ids(["anything", "else"], label2id, label="car") == [2, 2]
