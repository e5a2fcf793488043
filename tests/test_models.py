"""largeCNN of Appendix D."""

import torch

from softmaso.config import ModelConfig
from softmaso.models import build_model, count_parameters
from softmaso.nn import BetaVQActivation


def test_largecnn_has_the_papers_shape_and_size():
    model = build_model(ModelConfig(), num_classes=10)
    assert 1_360_000 < count_parameters(model) < 1_380_000  # "about 1.37 M"
    x = torch.randn(2, 3, 32, 32)
    sizes = []
    h = x
    for block in model.features:
        h = block(h)
        sizes.append((h.shape[1], h.shape[2]))
    assert sizes == [
        (96, 32),
        (96, 32),
        (96, 16),
        (192, 16),
        (192, 16),
        (192, 8),
        (192, 6),
        (192, 6),
    ]
    assert model(x).shape == (2, 10)
    assert len(model.ortho_convs()) == 8 and model.classifier not in model.ortho_convs()


def test_width_classes_and_activations():
    m = build_model(ModelConfig(width=0.25, activation="swish"), num_classes=100)
    assert m.features[0][0].out_channels == 24 and m(torch.randn(1, 3, 32, 32)).shape == (1, 100)
    act = m.features[0][2]
    assert isinstance(act, BetaVQActivation) and act.beta.p.shape == (24,)
    b = build_model(ModelConfig(width=0.1, activation="beta", spec="abs", beta=0.3), num_classes=10)
    assert torch.allclose(b.features[0][2].beta.beta(), torch.tensor(0.3), atol=1e-6)
    plain = build_model(ModelConfig(width=0.1, batch_norm=False), num_classes=10)
    assert plain.features[0][0].bias is not None and isinstance(
        plain.features[0][1], torch.nn.Identity
    )


def test_pieces_spec_needs_its_pieces():
    import pytest

    from softmaso.errors import UserError

    cfg = ModelConfig(width=0.1, activation="beta", spec="pieces")
    with pytest.raises(UserError, match="model.pieces: model.spec is pieces, so give the pieces"):
        build_model(cfg, num_classes=10)
    ok = build_model(cfg.model_copy(update={"pieces": "-0.5:-0.5,1:0"}), num_classes=10)
    assert ok(torch.randn(1, 3, 32, 32)).shape == (1, 10)
