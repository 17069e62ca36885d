"""The paper's diagnostics for any ResNet: O-KNN and disturbed O-KNN (Sec. 5.3), coupling rate
(Sec. 3.1) and positional MCS (Sec. 3.2), with plots and tables (Fig. 3b/4b, Tab. 4/7)."""
from d3ssl_zoo.evaluation.coupling import coupling_rate, run_coupling
from d3ssl_zoo.evaluation.mcs import positional_mcs, run_mcs
from d3ssl_zoo.evaluation.oknn import run_oknn

__all__ = ["run_oknn", "coupling_rate", "run_coupling", "positional_mcs", "run_mcs"]
