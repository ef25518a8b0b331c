"""The relational store: models, migrations, engine, and the repositories over them."""
