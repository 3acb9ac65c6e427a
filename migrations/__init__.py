"""medpg's schema: Alembic revisions for tables and data, plain SQL files for every function.

Installed as ``medpg.migrations`` (see ``pyproject.toml``); ``medpg.db.migrate`` runs it.
README, "Architecture", says how a change is made and released.
"""
