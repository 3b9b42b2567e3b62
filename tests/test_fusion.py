"""Fusion: noisy-OR over meaningful evidence, labels by thresholds, synthetic vs manipulated."""
import pytest

from medforensics.core import Evidence
from medforensics.fusion import FusionConfig, fuse


def ev(score, indicates="manipulation"):
    return Evidence(detector="d", score=score, explanation="x", indicates=indicates)


def test_clean_image_stays_authentic_despite_many_small_scores():
    score, label = fuse([ev(0.1)] * 10)
    assert label == "authentic" and score == pytest.approx(0.1)


def test_two_moderate_pieces_add_up():
    score, label = fuse([ev(0.45), ev(0.45)])
    assert score == pytest.approx(1 - 0.55 * 0.55) and label == "suspicious"


def test_one_strong_piece_decides_and_kind_follows_strongest():
    assert fuse([ev(0.95), ev(0.3, "synthesis")])[1] == "manipulated"
    assert fuse([ev(0.3), ev(0.97, "synthesis")])[1] == "synthetic"


def test_empty_and_thresholds():
    assert fuse([]) == (0.0, "authentic")
    cfg = FusionConfig(suspicious=0.2, manipulated=0.4)
    assert fuse([ev(0.3)], cfg)[1] == "suspicious"
    with pytest.raises(ValueError):
        FusionConfig(suspicious=0.9, manipulated=0.5)


def test_config_from_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[fusion]\nsuspicious = 0.4\nmanipulated = 0.9\n")
    assert FusionConfig.from_toml(p) == FusionConfig(suspicious=0.4, manipulated=0.9)
    p.write_text("[fusion]\nbogus = 1\n")
    with pytest.raises(Exception, match="unknown"):
        FusionConfig.from_toml(p)
