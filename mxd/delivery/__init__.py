"""Delivery owns getting queued mail to the recipients' MX hosts: routing (mx), per-domain scheduling with backoff, and delivery status notifications (dsn)."""
