"""Transports: how a batch gets to a server and its answer back (see ``base.Transport``)."""
