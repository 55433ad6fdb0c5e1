"""graphgrad: exact gradients through time for recurrent networks, eager and compiled."""
from .core import (PRIMITIVES, AVal, OpDef, Tensor, Tracer, backward, detect_anomaly,
                   is_grad_enabled, no_grad, record)
from .ops import (add, astype, broadcast_to, concat, div, equal, exp, getitem, greater,
                  greater_equal, less, less_equal, log, matmul, max, mul, neg, one_hot, positive,
                  power, relu, reshape, sigmoid, stop_gradient, sub, sum, take, tanh, transpose,
                  where)
from .functional import (cross_entropy, embedding, log_softmax, mean, mse, softmax, split, stack)

__version__ = "0.1.0"
from .gradcheck import GradcheckError, GradcheckReport, gradcheck, gradcheck_model
from .nn import GRU, LSTM, RNN, GRUCell, LSTMCell, Recurrent, RNNCell
from . import cells
from .module import Module
from .heads import (LanguageModel, Linear, SequenceClassifier, SequenceRegressor, make_rnn,
                    perplexity)
