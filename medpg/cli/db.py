"""`medpg db upgrade|downgrade|status`."""

from __future__ import annotations

import typer

from medpg import schema
from medpg.cli.common import console, database, handle_errors
from medpg.db import migrate, schema_state

app = typer.Typer(help="Create, migrate and inspect medpg's schema.", no_args_is_help=True)


@app.command()
@handle_errors
def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    db = database()
    schema.upgrade(db, revision)
    console.print(f"database {db.describe()} is at revision {migrate.current_revision(db)}")


@app.command()
@handle_errors
def downgrade(
    revision: str = typer.Argument("base", help="Target revision; 'base' removes medpg's schema."),
    yes: bool = typer.Option(False, "--yes", help="Confirm: downgrading drops tables and their data."),
) -> None:
    """Undo migrations down to REVISION. Dropping tables deletes their data, so --yes is required."""
    if not yes:
        console.print("downgrade drops tables and their data; run again with --yes to confirm")
        raise typer.Exit(1)
    db = database()
    migrate.downgrade(db, revision)
    console.print(f"database {db.describe()} is at revision {migrate.current_revision(db) or 'base'}")


@app.command()
@handle_errors
def status() -> None:
    """Show the schema revision, the vector column and the active embedding model."""
    db = database()
    state = schema_state(db)
    console.print(f"database:   {db.describe()}")
    console.print(f"revision:   {state.revision or 'none (run `medpg db upgrade`)'} (newest: {state.head})")
    if state.column_dimension is not None:
        console.print(f"embedding:  vector({state.column_dimension}), {state.similarity} similarity")
        console.print(f"model:      {state.active_model or 'none yet'}")
