"""The store: directory (domains, mailboxes, aliases, catch-alls), messages, threads, search, tokens."""
