"""The mail edge: the IMAP mailbox, the SMTP mailer, parsing incoming mail and its sender,
sender authentication, and the letters sarbot writes, from templates."""
