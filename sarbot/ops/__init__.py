"""Operations: the command line, operators' decisions on requests, notifications,
metrics and health, and retention."""
