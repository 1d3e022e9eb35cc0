"""ltr.targets: polarization, engagement labels, blends, integer buckets."""
import numpy as np
import pandas as pd
import pytest

from ltr.targets import (
    TargetError,
    blend,
    bucketize,
    content_label,
    engagement_label,
    make_labels,
    polarize,
)
from ltr.train_config import EngagementConfig, TargetConfig


def test_polarize_shape():
    s = np.linspace(0, 1, 11)
    raw = polarize(s, alpha=10, beta=0.4, rescale=False)
    assert raw[4] == pytest.approx(0.5)                                   # sigma(0) at s = beta
    assert raw[0] == pytest.approx(1 / (1 + np.exp(4.0)))
    r = polarize(s, alpha=10, beta=0.4, rescale=True)
    assert r[0] == pytest.approx(0.0, abs=1e-12) and r[-1] == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.diff(r) > 0)
    steep = polarize(s, alpha=40, beta=0.4)
    assert steep[2] < r[2] and steep[6] > r[6]                            # steeper = more polarized


def test_content_label_without_sigmoid_is_raw():
    s = np.array([0.0, 0.3, 1.0])
    assert np.array_equal(content_label(s, None), s)


def test_bad_scores_rejected():
    with pytest.raises(TargetError, match="content score"):
        polarize([0.2, np.nan], 5, 0.5)
    with pytest.raises(TargetError, match=r"\[0,1\]"):
        polarize([0.2, 1.5], 5, 0.5)


def _eng_frame():
    return pd.DataFrame({"query_id": ["q", "q", "r"], "impressions": [10, 100, 0], "clicks": [5, 10, 0],
                         "carts": [1, 5, 0], "purchases": [0, 2, 0]})


def test_engagement_label_hand_computed():
    cfg = EngagementConfig(click_weight=1, cart_weight=2, purchase_weight=0, smoothing=0, normalize="none")
    y = engagement_label(_eng_frame(), cfg)
    assert y[0] == pytest.approx((0.5 + 2 * 0.1) / 3)
    assert y[1] == pytest.approx((0.1 + 2 * 0.05) / 3)
    assert y[2] == 0.0                                                    # never shown, no smoothing


def test_engagement_smoothing_and_query_normalization():
    f = _eng_frame()
    raw = engagement_label(f, EngagementConfig(smoothing=50, normalize="none"))
    unsm = engagement_label(f, EngagementConfig(smoothing=0, normalize="none"))
    # smoothing pulls the 10-impression pair much more toward the prior than the 100-impression pair
    assert abs(raw[0] - unsm[0]) > abs(raw[1] - unsm[1])
    assert raw[2] > 0                                                      # unseen pair gets the prior
    qn = engagement_label(f, EngagementConfig(smoothing=50))
    assert qn[:2].max() == pytest.approx(1.0) and qn[2] == pytest.approx(1.0)
    with pytest.raises(TargetError, match="carts"):
        engagement_label(f.drop(columns="carts"))
    bad = f.assign(clicks=[1, -1, 0])
    with pytest.raises(TargetError, match="clicks"):
        engagement_label(bad)


def test_blends():
    c, e = np.array([0.9, 0.2, 0.6]), np.array([0.1, 1.0, 0.5])
    assert np.allclose(blend(c, e, 0.7), 0.7 * c + 0.3 * e)
    g = blend(c, e, 0.7, "gated", gate=0.5)
    assert np.allclose(g, [0.63 + 0.03, 0.14, 0.42 + 0.15])               # the irrelevant item gets no engagement
    with pytest.raises(TargetError, match="blend kind"):
        blend(c, e, 0.5, "mystery")


def test_bucketize_and_make_labels_modes():
    assert list(bucketize([0, 0.5, 1.0], 32)) == [0, 16, 31]
    with pytest.raises(TargetError, match="n_buckets"):
        bucketize([0.1], 64)
    f = _eng_frame().assign(content_score=[0.9, 0.1, 0.5])
    y, exp_gain = make_labels(f, TargetConfig())
    assert not exp_gain and y.dtype == np.float64 and 0 <= y.min() and y.max() <= 1
    yb, exp_gain = make_labels(f, TargetConfig(label_mode="bucket"))
    assert exp_gain and np.all(yb == np.round(yb)) and yb.max() <= 31
    yc, _ = make_labels(f, TargetConfig(blend_weight=1.0, alpha=None))
    assert np.allclose(yc, [0.9, 0.1, 0.5])
    with pytest.raises(TargetError, match="content score column"):
        make_labels(f.drop(columns="content_score"), TargetConfig())


def test_config_rejects_unknown_keys():
    with pytest.raises(Exception, match="alhpa"):
        TargetConfig.model_validate({"alhpa": 3})
