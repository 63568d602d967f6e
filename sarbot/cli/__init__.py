"""The ``sarbot`` command: running the daemon, the database, the config, the
connectors, the audit trail, and the requests an operator looks at and decides on."""
