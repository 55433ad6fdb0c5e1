"""graphgrad.flow: exact, decomposed views of how gradients travel through time."""
from .trace import Flow, LayerFlow, from_adjoints, from_tape, readout
from .compiled import check, from_compiled
from .lags import LagTable, lag_table
from .norms import grad_norms
from .jacobians import Chain, chain, jacobian_chains, step_jacobians
from .routes import RouteSplit, route_split
from .paths import PathCount, count_paths, path_counts, path_growth, unrolled_graph
from .diagnose import Diagnosis, decay_rate, diagnose

__all__ = ["Flow", "LayerFlow", "from_tape", "from_adjoints", "from_compiled", "check", "readout",
           "LagTable", "lag_table", "grad_norms", "Chain", "chain", "jacobian_chains",
           "step_jacobians", "RouteSplit", "route_split", "PathCount", "count_paths",
           "path_counts", "path_growth", "unrolled_graph", "Diagnosis", "decay_rate", "diagnose"]
