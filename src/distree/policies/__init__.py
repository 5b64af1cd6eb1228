"""Exit policies: one object used by offline evaluation, the simulator and live nodes."""

from . import confidence as _confidence  # noqa: F401  (registers policies)
from . import distree_conf as _distree_conf  # noqa: F401
from . import distree_policy as _distree_policy  # noqa: F401
from . import entropy as _entropy  # noqa: F401
from . import last_exit as _last_exit  # noqa: F401
from . import oracle as _oracle  # noqa: F401
from . import patience as _patience  # noqa: F401
from . import random_policy as _random_policy  # noqa: F401
from . import similarity as _similarity  # noqa: F401
from .base import Decision, ExitInputs, ExitPolicy, State, decode_state, encode_state, softmax
from .registry import (
    DEFAULT_PARAMS,
    DEFAULT_POLICY,
    create_default_policy,
    create_policy,
    list_policies,
    load_policy,
    policy_from_dict,
    register_policy,
)

__all__ = [
    "DEFAULT_PARAMS",
    "DEFAULT_POLICY",
    "create_default_policy",
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
