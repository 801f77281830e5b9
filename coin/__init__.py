"""Coding over networks: COIN and its baselines, decoding, normalized decoding accuracy (NDA).

Generic: takes same-architecture ``nn.Module`` experts, coding weights β and a tensor of P inputs; knows
no data set. Methods are chosen by name through one registry::

    res = coin.encode("coin", experts, [0.5, 0.5], x, y=y, owner=owner)
    rows = coin.evaluate(res.model, experts, beta, test_sets)
"""

from coin.decode import NDARow, decode, evaluate, nda_from_outputs, outputs
from coin.errors import CodingError
from coin.jacobian import categorical_fisher, jacobian_sq_diag, loop_output_fisher, output_fisher
from coin.params import build_coded, check_beta, check_experts, merge_buffers, params_of, weighted_average
from coin.registry import available, encode, get_method, register
from coin.samples import coding_samples, draw_coding_samples
from coin.task import CodingTask, EncodeResult, score_outputs

__all__ = [
    "CodingError", "CodingTask", "EncodeResult", "NDARow", "available", "build_coded", "categorical_fisher",
    "check_beta", "check_experts", "coding_samples", "decode", "draw_coding_samples", "encode", "evaluate",
    "get_method",
    "jacobian_sq_diag", "loop_output_fisher", "merge_buffers", "nda_from_outputs", "output_fisher", "outputs",
    "params_of", "register", "score_outputs", "weighted_average",
]
