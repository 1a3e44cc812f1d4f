"""NumPy reference of AlexNet: the seed's building blocks, forward and backward, and the whole paper
network built from them. NumPy only (it never imports torch); the tests prove it equal to
``alexnet.AlexNet(variant="paper")``. docs/walkthrough.md reads it from the seed's layer list down.
"""

from .layers import (
    DROPOUT_FORMS,
    conv_backward,
    conv_forward,
    dropout_backward,
    dropout_forward,
    fc_backward,
    fc_forward,
    lrn_backward,
    lrn_forward,
    maxpool_backward,
    maxpool_forward,
    relu_backward,
    relu_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from .network import FULLY_CONVOLUTIONAL_LAYERS, LAYERS, LRN_CONVENTIONS, AlexNet, FullyConvolutionalAlexNet

__all__ = [
    "AlexNet", "FullyConvolutionalAlexNet", "LAYERS", "FULLY_CONVOLUTIONAL_LAYERS", "LRN_CONVENTIONS",
    "DROPOUT_FORMS",
    "fc_forward", "fc_backward", "conv_forward", "conv_backward", "relu_forward", "relu_backward",
    "lrn_forward", "lrn_backward", "maxpool_forward", "maxpool_backward", "dropout_forward", "dropout_backward",
    "softmax_cross_entropy_forward", "softmax_cross_entropy_backward",
]
