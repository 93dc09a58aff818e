"""The access policy (REALTIME_POLICY): pure code, no I/O beyond reading the file.

- :func:`load_policy` / :func:`parse_policy` give a :class:`Policy` or raise
  :class:`PolicyError` (``path:line:col: what is wrong``); :meth:`Policy.open` is the policy
  in force when no file is configured.
- :meth:`Policy.subscribe_decision` answers a SUBSCRIBE with a :class:`Decision` holding the
  subscriber's :class:`View`; :class:`Audience` finds the Views an event goes to.
- :meth:`Policy.strip_record` removes hidden fields at ingest; ``sender_allowed`` and
  ``source_allowed`` guard ``POST /webhook``.
"""

from common.policy.audience import Audience
from common.policy.compile import Rule, compile_rule
from common.policy.document import load_policy, parse_policy
from common.policy.errors import PolicyError, RuleError
from common.policy.model import CollectionRules, Decision, Policy, WebhookRules
from common.policy.values import index_key, now_string
from common.policy.view import Filter, View

__all__ = [
    "Audience",
    "CollectionRules",
    "Decision",
    "Filter",
    "Policy",
    "PolicyError",
    "Rule",
    "RuleError",
    "View",
    "WebhookRules",
    "compile_rule",
    "index_key",
    "load_policy",
    "now_string",
    "parse_policy",
]
