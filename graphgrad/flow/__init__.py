"""graphgrad.flow: exact, decomposed views of how gradients travel through time."""
from .trace import Flow, LayerFlow, from_adjoints, from_tape, readout
from .compiled import check, from_compiled
from .lags import LagTable, lag_table
from .norms import grad_norms
