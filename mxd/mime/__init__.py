"""MIME: parse raw messages, compose outgoing ones, and thread them."""
