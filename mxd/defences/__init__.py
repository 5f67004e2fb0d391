"""Inbound defences of the MX: what is checked about a client and a message before the 250.

DNS block- and allow-lists at connect, per-client limits, authentication (SPF, DKIM, DMARC, ARC) and
the spam engine's verdict at DATA. What they find travels with the message (`Inbound.checks`) to the
pipeline, which computes the trust signals and quarantines what is doubtful.
"""
