"""sarbot's built-in connectors, each registered in the ``sarbot.connectors`` entry-point group."""
