"""The state store: the engine, the models and their states and transitions, the
hash-chained audit trail, the outbox, references and deadlines."""
