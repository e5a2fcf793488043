"""Network modules built from the theory: beta-VQ activations and beta-softmax pooling."""

from softmaso.nn.activations import BetaVQActivation, swish
from softmaso.nn.beta import BetaParameter
from softmaso.nn.pooling import BetaSoftmaxPool2d

__all__ = ["BetaParameter", "BetaSoftmaxPool2d", "BetaVQActivation", "swish"]
