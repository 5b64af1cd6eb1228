"""Exit policies: one object used by offline evaluation, the simulator and live nodes."""

from . import confidence as _confidence  # noqa: F401  (registers policies)
from . import last_exit as _last_exit  # noqa: F401
from .base import Decision, ExitInputs, ExitPolicy, State, decode_state, encode_state, softmax
from .registry import create_policy, list_policies, load_policy, policy_from_dict, register_policy

__all__ = [
    "Decision",
    "ExitInputs",
    "ExitPolicy",
    "State",
    "create_policy",
    "decode_state",
    "encode_state",
    "list_policies",
    "load_policy",
    "policy_from_dict",
    "register_policy",
    "softmax",
]
