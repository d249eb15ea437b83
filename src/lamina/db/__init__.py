"""The server's database: SQLAlchemy tables, engines, migrations, and the store catalog on SQL."""
