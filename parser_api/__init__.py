"""parser_api: what a PostgreSQL statement does, from PostgreSQL's own grammar (pglast).

Built for a query-routing pooler's hot path and usable on its own::

    >>> from parser_api import classify, Route
    >>> classify("SELECT * FROM accounts WHERE id = 1").route is Route.READ
    True
    >>> classify("SELECT nextval('s')").route
    <Route.WRITE: 'write'>

See docs/parser_api.md. Nothing here imports the pooler.
"""

from parser_api.builtin_functions import (
    NODE_IDENTITY_FUNCTIONS,
    NODE_IDENTITY_SETTINGS,
    NODE_IDENTITY_VIEWS,
)
from parser_api.catalog import Catalog, Persistence, StaticCatalog, Volatility
from parser_api.classifier import Classifier
from parser_api.classify import classify
from parser_api.errors import ParseError
from parser_api.model import (
    Classification,
    Dependency,
    EffectKind,
    Route,
    SessionEffect,
    Statement,
    TransactionControl,
)
from parser_api.tokens import Span, Token, TokenKind, split, string_value, tokens

__all__ = [
    "NODE_IDENTITY_FUNCTIONS",
    "NODE_IDENTITY_SETTINGS",
    "NODE_IDENTITY_VIEWS",
    "Catalog",
    "Classification",
    "Classifier",
    "Dependency",
    "EffectKind",
    "ParseError",
    "Persistence",
    "Route",
    "SessionEffect",
    "Span",
    "Statement",
    "StaticCatalog",
    "Token",
    "TokenKind",
    "TransactionControl",
    "Volatility",
    "classify",
    "split",
    "string_value",
    "tokens",
]
