"""The relational store: conversations, messages, statuses and turns in PostgreSQL or SQLite.

`repository.ConversationStore` writes and reads, `engine.create_engine` connects, `migrate`
applies the schema (`zapflow db upgrade`). README.md beside this file explains the design.
"""
