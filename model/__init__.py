"""guardian's model package: taxonomy, prompt format, policies and backends. No Kafka here."""

from model.engine import Query
from model.policy import Policy, PolicyError, PolicyStore
from model.settings import GuardianSettings, get_settings
from model.taxonomy import CATEGORIES, CATEGORY_IDS, Category
from model.verdict import Verdict

__all__ = [
    "CATEGORIES",
    "CATEGORY_IDS",
    "Category",
    "GuardianSettings",
    "Policy",
    "PolicyError",
    "PolicyStore",
    "Query",
    "Verdict",
    "get_settings",
]
